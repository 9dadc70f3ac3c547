"""The machine a benchmark runs on: its CPU, and how busy it is before a measurement."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import time


def cpu_model() -> str:
    """The processor's model name, family and model numbers and vector-unit flags, from /proc/cpuinfo."""
    try:
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    pairs = [line.split(":", 1) for line in lines if ":" in line]
    field = lambda key: next((value.strip() for name, value in pairs if name.strip() == key), "?")
    vector = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if flag in field("flags").split()]
    return f"{field('model name')}, family {field('cpu family')} model {field('model')} ({' '.join(vector)})"


def machine_line() -> str:
    """CPU model and vector flags, usable cores, date and load average."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, {now}, load average {load}"


def busy_cores(seconds: float = 2.0) -> float:
    """Cores' worth of CPU time spent (by anyone, steal included) over the next `seconds`, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


class QuietGate:
    """Waits before each measurement until under `threshold` cores are busy, from a budget of
    `max_wait` seconds for the whole run, and says what load it found.

    The 1-minute load average still carries the previous contender's own work for a minute
    after it ends, so the gate is what all processes use now (`busy_cores`); both are reported.
    """

    def __init__(self, threshold: float, max_wait: float):
        self.threshold, self.budget = threshold, max_wait

    def wait(self) -> dict[str, float]:
        """Blocks until the machine is quiet or the budget is spent; busy cores, load, seconds waited."""
        start = time.monotonic()
        while True:
            busy = busy_cores()
            waited = time.monotonic() - start
            if busy < self.threshold or waited >= self.budget:
                self.budget = max(0.0, self.budget - waited)
                return {"busy_cores": busy, "load1": os.getloadavg()[0], "waited_s": waited}
            time.sleep(10)
