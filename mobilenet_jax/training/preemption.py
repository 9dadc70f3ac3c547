"""SIGTERM, how Cloud TPU and batch schedulers preempt a job, as a request to stop cleanly."""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Records SIGTERM; `should_stop` tells the loop, agreed by every process."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._previous = signal.signal(signal.SIGTERM, lambda *_: self._requested.set())

    def should_stop(self, at_sync_point: bool) -> bool:
        """Whether to checkpoint and stop now; every process must agree, so with several
        processes the flags are combined only at `at_sync_point` steps."""
        if jax.process_count() == 1:
            return self._requested.is_set()
        if not at_sync_point:
            return False
        flags = multihost_utils.process_allgather(np.array(self._requested.is_set()))
        return bool(np.any(flags))

    def close(self) -> None:
        """Restore the previous SIGTERM handler."""
        signal.signal(signal.SIGTERM, self._previous)
