"""Training metrics: JSON lines and TensorBoard event files in the workdir, a console progress bar.

Only process 0 writes; the other processes get a writer that does nothing. TensorBoard events
are written with TensorFlow's own summary writer (TensorFlow is already the input pipeline's
framework), which also writes to gs:// workdirs.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Mapping

import numpy as np

from mobilenet_jax.paths import to_path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _plain(value: Any) -> Any:
    """A JSON-ready Python scalar from a numpy / JAX scalar."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
    """Appends one JSON object per call to `workdir/metrics.jsonl` and the same scalars to TensorBoard."""

    def __init__(self, workdir: str, *, enabled: bool = True, total_steps: int | None = None, initial_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        import tensorflow as tf  # imported here: only process 0 needs it
        from tqdm import tqdm

        from mobilenet_jax.data.preprocess import keep_tensorflow_off_accelerators

        keep_tensorflow_off_accelerators()
        workdir = to_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        # epath opens gs:// files as context managers only: the stack holds the file open.
        self._files = contextlib.ExitStack()
        self._jsonl = self._files.enter_context((workdir / METRICS_FILE).open("a"))
        self._tensorboard = tf.summary.create_file_writer(str(workdir / TENSORBOARD_DIR))
        self._scalar = tf.summary.scalar
        self._progress = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Record `scalars` at `step` everywhere."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        with self._tensorboard.as_default():
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._scalar(key, value, step=step)
        shown = {k: f"{v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, float)}
        self._progress.set_postfix(shown, refresh=False)

    def advance(self, steps: int) -> None:
        """Move the progress bar by `steps`."""
        if self.enabled:
            self._progress.update(steps)

    def close(self) -> None:
        """Flush and close every output."""
        if self.enabled:
            self._progress.close()
            self._tensorboard.close()
            self._files.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of `workdir/metrics.jsonl`, in order."""
    text = (to_path(workdir) / METRICS_FILE).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
