"""Orbax checkpoints of the train state in `workdir/checkpoints`, each with the record of its run.

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

import logging
import sys
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies
from tqdm import tqdm

from mobilenet_jax.paths import to_path
from mobilenet_jax.training import hosts
from mobilenet_jax.training.checkpoint_errors import (
    full_disk_named,
    not_a_full_disk_report,
    silence_abandoned_tasks,
    without_log_lines,
)
from mobilenet_jax.training.state import TrainState

CHECKPOINT_DIR = "checkpoints"
ITEM = "default"  # the folder of the state in each step folder, as CheckpointManager names a single item


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
        logging.getLogger("absl").addFilter(not_a_full_disk_report)
        with without_log_lines("Given directory is read only"):  # what read_only asked for, not news
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
        with full_disk_named(self.directory):
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
                silence_abandoned_tasks()
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
        with full_disk_named(self.directory):
            self._manager.wait_until_finished()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Finish pending saves and release the manager (also on leaving a `with` block)."""
        try:
            with full_disk_named(self.directory):
                self._manager.close()
        finally:
            self._reader.close()
            logging.getLogger("absl").removeFilter(not_a_full_disk_report)


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a complete checkpoint (a step folder; Orbax renames it into place last)."""
    return bool(steps_on_disk(workdir))


def steps_on_disk(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in `workdir`, sorted, as this process sees them."""
    directory = to_path(workdir) / CHECKPOINT_DIR
    return sorted(int(path.name) for path in directory.iterdir() if path.name.isdigit()) if directory.is_dir() else []
