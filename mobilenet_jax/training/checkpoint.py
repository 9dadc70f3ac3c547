"""Orbax checkpoints of the train state in `workdir/checkpoints`, and the config they were made with.

Saves are asynchronous and atomic (Orbax writes into a temporary folder and renames it when
complete), so a crash mid-write leaves the previous checkpoint as the latest. Each checkpoint
carries its run's record (`run_record`) in its step metadata, written before the rename: a
resume is checked against the checkpoint it restores, whatever became of `config.json`, the
human-readable copy. The last `keep` checkpoints are kept, and optionally the best one by
evaluation accuracy. With several processes, which steps exist is process 0's answer and
whether a step restored is every process's (`hosts`): all processes resume at one step or none
does.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import sys
from typing import Any, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies
from tqdm import tqdm

from mobilenet_jax.paths import to_path
from mobilenet_jax.training import hosts
from mobilenet_jax.training.state import TrainState
from mobilenet_jax.weights import CONFIG_FILE

CHECKPOINT_DIR = "checkpoints"
ITEM = "default"  # the folder of the state in each step folder, as CheckpointManager names a single item
# The only fields a resumed run may change: when and how much to log, evaluate, checkpoint and
# export, how long to train (num_epochs / num_train_steps extend a run), where the data lies, and
# how the same computation is laid out. Every other field changes what the checkpoint means.
RESUMABLE_FIELDS = frozenset({
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints", "keep_best_checkpoint",
    "eval_only", "export_path", "num_epochs", "num_train_steps", "skip_nonfinite_updates", "data_dir",
    "prefetch", "cache", "eval_batch_size", "eval_split", "parallelism",
    "model.depthwise_impl", "model.batch_norm_impl", "model.stem_impl",
})
# Recorded beside the config: the class count comes from the data, not from a field.
NUM_CLASSES = "num_classes"
# How TensorStore names the OS error behind a failed write (it raises them as ValueErrors).
_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class RestoreDisagreement(RuntimeError):
    """Some processes restored a checkpoint that others could not read."""


def _state_tree(state: TrainState) -> dict[str, Any]:
    """The arrays of `state` that a checkpoint stores (its static fields come from the config)."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "ema": state.ema,
    }


class Checkpoints:
    """Save and restore TrainStates held as replicated global arrays (`Parallel.to_global`)."""

    def __init__(
        self,
        workdir: str,
        *,
        keep: int = 3,
        keep_best: bool = False,
        read_only: bool = False,
        record: Mapping[str, Any] | None = None,
    ):
        """`read_only` opens the checkpoints for restoring only: nothing in the folder is written.
        `record` (`run_record`) is saved with every checkpoint.

        A save that meets a full disk raises one OSError with its errno (ENOSPC, or EDQUOT for a
        quota) from `save`, `wait` or `close`, whichever first meets it; Orbax's logged reports
        of it, each with a traceback, are dropped: they only repeat it.
        """
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        preserve = [policies.LatestN(keep)]
        if keep_best:
            preserve.append(
                policies.BestN(get_metric_fn=lambda m: m["eval_accuracy"], n=1, keep_checkpoints_without_metrics=False)
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(preserve),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
        )
        self.directory = to_path(workdir) / CHECKPOINT_DIR
        self._record = dict(record) if record is not None else None
        self._damaged: set[int] = set()
        self._reader = ocp.StandardCheckpointHandler()
        logging.getLogger("absl").addFilter(_not_a_full_disk_report)
        with _without_log_lines("Given directory is read only"):  # what read_only asked for, not news
            self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None (as `all_steps`)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint kept, oldest first, as process 0 sees them (a
        collective with several processes)."""
        return hosts.from_process_zero(sorted(self._manager.all_steps()))

    def save(self, state: TrainState, metrics: Mapping[str, float] | None = None) -> None:
        """Start an asynchronous save of `state` at its step; `metrics` feed the best-checkpoint choice."""
        step = int(state.step.addressable_data(0))  # this process's copy of a replicated scalar
        if step in self._damaged:  # the same set on every process: see `restore`
            if jax.process_index() == 0:
                tqdm.write(  # on a line of its own, above a progress bar if one is drawn
                    f"checkpoint {step} in {self.directory} is damaged and left as it is: the state of step "
                    f"{step} is not saved; move that folder away to let the run save it",
                    file=sys.stderr,
                )
            return
        if hosts.any_process(step in self._manager.all_steps()):
            return
        with self._write_errors_named():
            self._manager.save(
                step,
                args=ocp.args.StandardSave(_state_tree(state)),
                metrics=dict(metrics) if metrics else None,
                custom_metadata=self._record,
            )

    def restore(self, template: TrainState, step: int | None = None) -> TrainState:
        """The checkpoint at `step`, or by default the newest one that restores, in the shape and
        shardings of `template`.

        A checkpoint that no process can read (a truncated or missing file) is damaged: it is
        skipped with a line on stderr that names it and the error, and left on disk as it is;
        ValueError when none restores. A checkpoint that some processes read and others cannot
        raises RestoreDisagreement on every process, naming the ones that failed.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(template))
        skipped = []
        for candidate in reversed(self.all_steps()) if step is None else [step]:
            try:
                restored, reason = self._read(candidate, abstract), ""
            except Exception as error:  # Orbax and TensorStore raise many types for a damaged file
                _silence_abandoned_tasks()
                restored, reason = None, f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:160]}"
            failed = hosts.gathered_flags(bool(reason))
            if not failed.any():
                return template.replace(**restored)
            if not failed.all():
                raise RestoreDisagreement(self._disagreement(candidate, reason, np.flatnonzero(failed).tolist()))
            skipped.append(f"{candidate} ({reason})")
            self._damaged.add(candidate)
            if jax.process_index() == 0:
                print(
                    f"checkpoint {candidate} in {self.directory} does not restore ({reason}); skipped and left "
                    "on disk, trying an older one",
                    file=sys.stderr,
                )
        raise ValueError(
            f"no checkpoint in {self.directory} restores: {'; '.join(skipped)}. Move the damaged step "
            "folders away, or use a new --workdir"
        )

    def _read(self, step: int, abstract: dict[str, Any]) -> dict[str, Any]:
        """The state tree of checkpoint `step`, read by this process alone.

        CheckpointManager.restore ends in a barrier across processes; one that failed to read
        would never reach it, and the barrier's collective would pair with the next one it
        joins. Reading without the barrier lets every process report its outcome to `restore`.
        """
        return self._reader.restore(self.directory / str(step) / ITEM, args=ocp.args.StandardRestore(abstract))

    def _disagreement(self, step: int, reason: str, failed: list[int]) -> str:
        """What this process says when processes `failed` could not restore `step` and the others could."""
        index, count = jax.process_index(), jax.process_count()
        stops = "the run stops on every process, so that none trains from another step"
        if reason:
            return (
                f"process {index} of {count} cannot restore checkpoint {step} in {self.directory} ({reason}), "
                f"which other processes restored: {stops}. Check that this host reads {self.directory}, then rerun"
            )
        return f"processes {failed} of {count} cannot restore checkpoint {step} in {self.directory}: {stops}"

    def wait(self) -> None:
        """Block until every started save is on disk."""
        with self._write_errors_named():
            self._manager.wait_until_finished()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Finish pending saves and release the manager (also on leaving a `with` block)."""
        try:
            with self._write_errors_named():
                self._manager.close()
        finally:
            self._reader.close()
            logging.getLogger("absl").removeFilter(_not_a_full_disk_report)

    @contextlib.contextmanager
    def _write_errors_named(self) -> Iterator[None]:
        """A full disk met by a save (an OSError, or TensorStore's ValueError naming the errno)
        re-raised as one OSError with that errno, naming the folder and what to do."""
        try:
            yield
        except (OSError, ValueError) as error:
            code = _full_disk_errno(error)
            if code is None:
                raise
            raised = OSError(
                f"cannot write checkpoints in {self.directory}: {os.strerror(code).lower()}; free space there, "
                "then rerun the same command: it resumes from the last complete checkpoint"
            )
            raised.errno = code
            raise raised from None


@contextlib.contextmanager
def _without_log_lines(prefix: str) -> Iterator[None]:
    """Orbax's log records starting with `prefix` dropped while the block runs."""
    logger = logging.getLogger("absl")
    drop = lambda record: not record.getMessage().startswith(prefix)  # noqa: E731
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _full_disk_errno(error: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when `error` is a full disk (an OSError, or TensorStore's ValueError
    that names the errno), else None."""
    if isinstance(error, OSError):
        code = error.errno
    else:
        match = _OS_ERROR_CODE.search(str(error))
        code = int(match[1]) if match else None
    return code if code in FULL_DISK_ERRNOS else None


def _not_a_full_disk_report(record: logging.LogRecord) -> bool:
    """False for Orbax's logged reports of a full disk, which `Checkpoints` raises as one OSError:
    its background threads log the error several times, each with a traceback. The first such
    report, logged as the save fails, also silences the echoes of the save's abandoned tasks."""
    full = _full_disk_errno(record.exc_info[1] if record.exc_info else None) is not None or any(
        os.strerror(code) in record.getMessage() for code in FULL_DISK_ERRNOS
    )
    if full:
        _silence_abandoned_tasks()
    return not full


def _silence_abandoned_tasks() -> None:
    """Drop the echoes of a failed restore or save, once one has failed; nothing else is filtered.

    When one array of a checkpoint cannot be read or written, Orbax closes its event loop while
    TensorStore still finishes the checkpoint's other arrays: each of those reports "Event loop is
    closed" as an unraisable exception, and asyncio logs every failed read, and every write a full
    disk failed, again as an exception never retrieved. They only repeat the one-line report
    `restore` prints or the error a save raises, and may arrive after it (the writes' as the
    process exits), so they stay filtered for the rest of the process.
    """
    if getattr(sys.unraisablehook, "drops_abandoned_tasks", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_abandoned_tasks = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_not_an_abandoned_task)


def _not_an_abandoned_task(record: logging.LogRecord) -> bool:
    """False for asyncio's reports of a checkpoint read or full-disk write that nobody awaited."""
    message = record.getMessage()
    full_disk = _full_disk_errno(record.exc_info[1] if record.exc_info else None) is not None
    return not ("exception was never retrieved" in message and ("async_deserialize" in message or full_disk))


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """{"model.alpha": 1.0, ...} from a nested config dict."""
    return traverse_util.flatten_dict(json.loads(json.dumps(dict(config), default=_json_default)), sep=".")


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a complete checkpoint (a step folder; Orbax renames it into place last)."""
    return bool(_steps_on_disk(workdir))


def _steps_on_disk(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in `workdir`, sorted."""
    directory = to_path(workdir) / CHECKPOINT_DIR
    return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit()) if directory.is_dir() else []


def run_record(config: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """What a run records of itself, in each checkpoint and in `config.json`: the flat config
    and the data's class count."""
    return {**flatten_config(config), NUM_CLASSES: num_classes}


def saved_record(workdir: str) -> dict[str, Any] | None:
    """The run record of the latest checkpoint in `workdir`, the one a resume restores; None
    when the workdir holds no checkpoint.

    Checkpoints written before they carried their record fall back to the workdir's config.json;
    with neither, a ValueError says what to do. The latest step is process 0's (a collective with
    several processes); every process then reads that step's record.
    """
    steps = hosts.from_process_zero(_steps_on_disk(workdir))
    if not steps:
        return None
    directory = to_path(workdir) / CHECKPOINT_DIR
    try:
        with _without_log_lines("Metadata file does not exist"):  # a step of older code, or damaged
            record = ocp.metadata.get_step_metadata(directory / str(steps[-1])).custom_metadata
    except (OSError, ValueError):  # no step metadata, or unreadable: the config.json fallback
        record = None
    if record:
        return dict(record)
    config_path = to_path(workdir) / CONFIG_FILE
    if config_path.exists():
        return json.loads(config_path.read_text())
    raise ValueError(
        f"the checkpoints in {directory} record no config (written before checkpoints carried it) and "
        f"{config_path} is missing: put back the config.json of the run that wrote them, or use a new --workdir"
    )


def check_resumable(workdir: str, record: Mapping[str, Any]) -> None:
    """Refuse a run (`run_record`) that the workdir's checkpoints cannot serve.

    Compares with `saved_record`, the record of the checkpoint a resume restores. Raises
    ValueError naming every differing field outside RESUMABLE_FIELDS; reads only.
    """
    saved = saved_record(workdir)
    if saved is None:
        return
    differing = [
        f"{name}: checkpoint has {saved.get(name)!r}, config has {record.get(name)!r}"
        for name in sorted(set(saved) | set(record))
        if name not in RESUMABLE_FIELDS and saved.get(name) != record.get(name)
    ]
    if differing:
        raise ValueError(
            f"workdir {workdir} holds a run whose checkpoints do not fit this config; differing fields: "
            + "; ".join(differing)
            + ". Use a new --workdir, or restore those values (a resumed run may change only "
            + ", ".join(sorted(RESUMABLE_FIELDS))
            + ")."
        )


def save_record(workdir: str, record: Mapping[str, Any]) -> None:
    """Write `record` as the workdir's config.json, its human-readable copy (process 0 only),
    replacing it atomically."""
    if jax.process_index() != 0:
        return
    path = to_path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole, then renamed: other processes may be reading the previous one.
    staged = path.parent / (CONFIG_FILE + ".tmp")
    staged.write_text(json.dumps(dict(record), indent=1, sort_keys=True))
    staged.replace(path)


def _json_default(value: Any) -> Any:
    """ConfigDicts and other mappings as dicts; anything else as its string."""
    return dict(value) if isinstance(value, Mapping) else str(value)
