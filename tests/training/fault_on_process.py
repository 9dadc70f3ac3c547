"""python fault_on_process.py PROCESS FAULT TRAIN_FLAGS...: train.py, with a fault on process PROCESS alone.

FAULT "restore": every checkpoint restore raises OSError, as a storage error on one host makes it.
FAULT "input": the training input raises OSError after 3 batches, as an unreadable shard does.
The other processes run the real code, so a test sees how the run as a whole reacts.
"""

from __future__ import annotations

import itertools
import runpy
import sys

import jax
import orbax.checkpoint as ocp

from tiny_runs import ROOT

sys.path.insert(0, str(ROOT))
from mobilenet_jax.data import pipeline  # noqa: E402 - from the checkout, as train.py imports it

INPUT_BATCHES = 3


def fail_restore(process: int) -> None:
    """Reading a checkpoint raises on `process`."""
    restore = ocp.StandardCheckpointHandler.restore

    def failing(self, *args, **kwargs):
        if jax.process_index() == process:
            raise OSError(f"storage unreachable from process {process} (injected)")
        return restore(self, *args, **kwargs)

    ocp.StandardCheckpointHandler.restore = failing


def fail_input(process: int) -> None:
    """The training batches of `process` end in an OSError after INPUT_BATCHES."""
    train_batches = pipeline.train_batches

    def failing(*args, **kwargs):
        batches = train_batches(*args, **kwargs)
        if jax.process_index() != process:
            return batches

        def broken():
            yield from itertools.islice(batches, INPUT_BATCHES)
            raise OSError(f"a shard is unreadable from process {process} (injected)")

        return broken()

    pipeline.train_batches = failing


if __name__ == "__main__":
    process, fault, *flags = sys.argv[1:]
    {"restore": fail_restore, "input": fail_input}[fault](int(process))
    sys.argv = ["train.py", *flags]
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
