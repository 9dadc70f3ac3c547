"""What the processes of a multi-host run decide together, and how one process's failure ends all.

Every decision that changes what a process does next (which checkpoint to restore, whether to
save, when to stop) is taken from values that all processes see alike: gathered or broadcast
here, never read from one host's disk or clock alone. With one process these are plain values.

A failure is published through the distributed runtime's key-value store: every process polls
it, so one host's error ends the others within a second, with its message, where they would
otherwise wait in a collective until the runtime's heartbeat timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import jax
import numpy as np
from jax._src import distributed  # the runtime client: its key-value store has no public name
from jax.experimental import multihost_utils

FAILURE_KEY = "mobilenet_jax/failure"
FAILURE_POLL_SECONDS = 0.5


def gathered_flags(flag: bool) -> np.ndarray:
    """Every process's `flag`, by process index (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return np.array([flag])
    return np.asarray(multihost_utils.process_allgather(np.array(flag))).reshape(-1)


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (a collective)."""
    return bool(gathered_flags(flag).any())


def from_process_zero(values: list[int]) -> list[int]:
    """Process 0's `values`, on every process (a collective)."""
    if jax.process_count() == 1:
        return list(values)
    count = int(multihost_utils.broadcast_one_to_all(np.array(len(values), np.int64)))
    padded = np.zeros(count, np.int64)
    padded[: min(count, len(values))] = values[:count]
    return [int(v) for v in multihost_utils.broadcast_one_to_all(padded)] if count else []


def _client() -> object | None:
    """The distributed runtime's client, or None in a single-process run."""
    return distributed.global_state.client


def report_failure(message: str) -> None:
    """Publish that this process fails with `message`; the first report of a run is kept."""
    client = _client()
    if client is None:
        return
    try:
        client.key_value_set(FAILURE_KEY, f"process {jax.process_index()}: {message}")
    except Exception:  # noqa: BLE001 - the key exists: another process failed first; or the runtime is gone
        pass


def failure_of_another(wait_seconds: float = 4 * FAILURE_POLL_SECONDS) -> str | None:
    """Another process's failure report, waited for up to `wait_seconds`, or None."""
    client = _client()
    if client is None:
        return None
    try:
        report = client.blocking_key_value_get(FAILURE_KEY, int(wait_seconds * 1000))
    except Exception:  # noqa: BLE001 - none within the wait (DEADLINE_EXCEEDED), or the runtime is gone
        return None
    return None if report.startswith(f"process {jax.process_index()}:") else report


def watch_for_failures(on_failure: Callable[[str], None]) -> None:
    """Call `on_failure(report)` from a daemon thread when another process reports a failure.

    Polls for the life of the process; does nothing in a single-process run. `on_failure` is
    expected to end the process.
    """
    client = _client()
    if client is None:
        return

    def poll() -> None:
        while True:
            try:
                report = client.key_value_try_get(FAILURE_KEY)
            except Exception:  # noqa: BLE001 - not set yet (NOT_FOUND), or the runtime shut down
                if distributed.global_state.client is None:
                    return
                threading.Event().wait(FAILURE_POLL_SECONDS)
                continue
            if not report.startswith(f"process {jax.process_index()}:"):
                on_failure(report)
            return

    threading.Thread(target=poll, daemon=True, name="failure-watch").start()
