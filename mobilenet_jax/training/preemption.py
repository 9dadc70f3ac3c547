"""SIGTERM, how Cloud TPU and batch schedulers preempt a job, as a request to stop cleanly.

In a run started with `jax.distributed.initialize`, JAX's own preemption notifier receives the
signal and its sync protocol picks one step, the next after the furthest any process has
reached, at which every process stops: a signal that reaches a single host stops all of them
at the same step, a step or two later. Orbax's `reached_preemption` sees the same notice.
Without the distributed runtime a signal handler records it and the run stops after the
current step.
"""

from __future__ import annotations

import signal
import threading

from jax._src import distributed  # whether the runtime (and its preemption notifier) is up
from jax.experimental import multihost_utils


class PreemptionWatch:
    """`should_stop(step)`, asked after every step, says when to checkpoint and stop."""

    def __init__(self) -> None:
        self._shared = distributed.global_state.preemption_sync_manager is not None
        self._requested = threading.Event()
        if not self._shared:
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._requested.set())

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop after `step`; every process gets the same answer when
        each asks at every step."""
        if self._shared:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested.is_set()

    def close(self) -> None:
        """Restore the previous SIGTERM handler."""
        if not self._shared:
            signal.signal(signal.SIGTERM, self._previous)
