"""Training metrics: JSON lines and TensorBoard event files in the workdir, a console progress bar.

Only process 0 writes; the other processes get a writer that does nothing. TensorBoard events
are written with TensorFlow's own summary writer (TensorFlow is already the input pipeline's
framework), which also writes to gs:// workdirs.

metrics.jsonl holds one row per line, each a JSON object with its "step". Nothing in it is
dropped: a line a crash cut short goes to metrics.jsonl.torn, and the rows of steps a resumed
run trains again go to metrics.jsonl.replayed, itself JSON lines.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Iterator, Mapping

import numpy as np
from etils import epath

from mobilenet_jax.paths import to_path

METRICS_FILE = "metrics.jsonl"
TORN_FILE = METRICS_FILE + ".torn"
REPLAYED_FILE = METRICS_FILE + ".replayed"
TENSORBOARD_DIR = "tensorboard"


def _plain(value: Any) -> Any:
    """A JSON-ready Python scalar from a numpy / JAX scalar."""
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
    """Appends one JSON object per call to `workdir/metrics.jsonl` and the same scalars to TensorBoard.

    Opening an existing metrics.jsonl keeps it to whole rows: a torn last line (a crash while
    writing it) moves to metrics.jsonl.torn. A training run passes `initial_step`, the step it
    starts or resumes from: the rows of later steps, written by a run that ended before its next
    checkpoint, move to metrics.jsonl.replayed, as those steps are trained and logged again. Each
    move is told in one line on stderr. Without `initial_step` (an evaluation of the latest
    checkpoint) every whole row stays. TensorBoard's event files get the replayed steps a second
    time; TensorBoard shows the newest value of a step.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, total_steps: int | None = None,
                 initial_step: int | None = None):
        self.enabled = enabled
        if not enabled:
            return
        import tensorflow as tf  # imported here: only process 0 needs it
        from tqdm import tqdm

        from mobilenet_jax.data.preprocess import keep_tensorflow_off_accelerators

        keep_tensorflow_off_accelerators()
        workdir = to_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._path = workdir / METRICS_FILE
        with _naming(self._path):
            _keep_whole_rows(self._path, initial_step)
            # epath opens gs:// files as context managers only: the stack holds the file open.
            self._files = contextlib.ExitStack()
            self._jsonl = self._files.enter_context(self._path.open("a"))
        self._tensorboard = tf.summary.create_file_writer(str(workdir / TENSORBOARD_DIR))
        self._scalar = tf.summary.scalar
        self._progress = tqdm(total=total_steps, initial=initial_step or 0, unit="step", dynamic_ncols=True)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Record `scalars` at `step` everywhere; an OSError (a full disk) names metrics.jsonl."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        with _naming(self._path):
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
            with _naming(self._path):  # a row a full disk refused is flushed once more
                self._files.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of `workdir/metrics.jsonl`, in order, without a torn last line (a crash while
    writing it); any other line that is not a row raises a ValueError naming it."""
    path = to_path(workdir) / METRICS_FILE
    return [record for _, record in _rows(path, path.read_bytes())[0]]


@contextlib.contextmanager
def _naming(path: epath.Path) -> Iterator[None]:
    """Re-raise an OSError inside as one naming its file (else `path`) and what to do."""
    try:
        yield
    except OSError as error:
        raise OSError(
            f"cannot write {error.filename or path}: {error.strerror or error}; free space there (or fix "
            "its permissions) and rerun the same command: it resumes from the last checkpoint"
        ) from error


def _record(line: bytes) -> dict[str, Any]:
    """The row a line of metrics.jsonl holds; a ValueError says why it holds none."""
    record = json.loads(line)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not a JSON object with an integer step")
    return record


def _rows(path: epath.Path, data: bytes) -> tuple[list[tuple[bytes, dict[str, Any]]], bytes]:
    """The rows of `data`, the bytes of metrics.jsonl at `path`, as (line, record) pairs, and its
    torn last line (b"" when there is none).

    The last non-blank line is torn when it is not a row: a crash cut it short. Any earlier line
    that is not a row raises a ValueError naming the file and the line.
    """
    lines = [(number, line) for number, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    rows = []
    for index, (number, line) in enumerate(lines):
        try:
            rows.append((line, _record(line)))
        except ValueError as error:
            if index == len(lines) - 1:
                return rows, line
            raise ValueError(
                f"line {number} of {path} is not a metrics row ({error}); move that line to "
                f"{path.parent / TORN_FILE} (or delete it) and rerun"
            ) from None
    return rows, b""


def _keep_whole_rows(path: epath.Path, initial_step: int | None) -> None:
    """Leave metrics.jsonl at `path` with whole rows only, of steps up to `initial_step` (all when
    None), moving its torn last line and the later rows beside it (see MetricWriter)."""
    if not path.exists() or path.stat().length == 0:
        return
    data = path.read_bytes()
    rows, torn = _rows(path, data)
    replays = [initial_step is not None and record["step"] > initial_step for _, record in rows]
    replayed = [row for row, replay in zip(rows, replays) if replay]
    kept = [line for (line, _), replay in zip(rows, replays) if not replay]
    # Set aside before the rewrite: a crash in between leaves the lines in both files, not in none.
    if torn:
        _append(path.parent / TORN_FILE, torn + b"\n")
        print(f"The last line of {path} was cut short by a crash while writing it; "
              f"moved to {path.parent / TORN_FILE}", file=sys.stderr)
    if replayed:
        _append(path.parent / REPLAYED_FILE, b"".join(line + b"\n" for line, _ in replayed))
        steps = [record["step"] for _, record in replayed]
        print(f"The rows of steps {min(steps)}..{max(steps)} in {path} come after step {initial_step}, where "
              f"this run starts, and are logged again; moved to {path.parent / REPLAYED_FILE}", file=sys.stderr)
    whole = b"".join(line + b"\n" for line in kept)
    if whole != data:
        _replace(path, whole)


def _append(path: epath.Path, data: bytes) -> None:
    """Add `data` to the end of `path` (created if absent)."""
    _replace(path, (path.read_bytes() if path.exists() else b"") + data)


def _replace(path: epath.Path, data: bytes) -> None:
    """Make `data` the content of `path`: written whole beside it, then renamed over it (gs://
    files cannot be truncated), so that a crash leaves the old content or the new one."""
    staged = path.parent / (path.name + ".tmp")
    staged.write_bytes(data)
    staged.replace(path)
