"""Peak resident memory of a contender's call, each contender in a fresh process (Linux only).

The parent benchmark starts `python -m benchmarks.speed ... --probe-memory KIND:NAME` once per
contender. The child starts JAX's CPU client, does what is not the contender's own (exporting a
model for a runtime), and reads its settled resident set. It then builds only that contender
(JAX's variables and train state are initialised under `jit`: an eager `init` would fill the
caches op by op), makes the first call (compilation, warm-up) and one more, resets the kernel's
peak-RSS mark (`/proc/self/clear_refs`) and makes one last call. The figure is the peak during that call
minus the settled resident set: what the contender holds at its busiest in steady state
(weights, inputs, compiled code, a runtime's arena, the call's working memory), without the
one-off peak of compiling, whose freed memory is handed back first (`malloc_trim`).
"""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
from typing import Callable

PROBE_PREFIX = "PEAK_MB "


def _status_kb(field: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/self/status, in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def resident_mb() -> float:
    """This process's resident set now."""
    return _status_kb("VmRSS") / 1024


def settled_resident_mb() -> float:
    """The resident set once JAX's client is up and freed memory is handed back to the system."""
    import jax

    jax.jit(lambda x: x + 1)(1).block_until_ready()
    _hand_back_freed_memory()
    return resident_mb()


def _hand_back_freed_memory() -> None:
    """Free unreachable objects and return the C heap's free pages (a compiler's leftovers) to the system."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_of_call_mb(call: Callable[[], object], baseline_mb: float) -> float:
    """Peak resident set during `call()` (after warming it twice), above `baseline_mb`."""
    call()
    call()
    _hand_back_freed_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    call()
    return _status_kb("VmHWM") / 1024 - baseline_mb


def report(peak_mb: float) -> None:
    """The child's one line for the parent."""
    print(PROBE_PREFIX + json.dumps(peak_mb), flush=True)


def probe(argv: list[str], kind: str, name: str, timeout: float = 1200) -> float | None:
    """Run the benchmark's probe for one contender in a child process; its peak in MB, or None."""
    command = [sys.executable, "-m", "benchmarks.speed", *argv, "--probe-memory", f"{kind}:{name}"]
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return None
    lines = [line for line in output.splitlines() if line.startswith(PROBE_PREFIX)]
    return json.loads(lines[-1][len(PROBE_PREFIX):]) if lines else None
