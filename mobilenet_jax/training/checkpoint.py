"""Orbax checkpoints of the train state in `workdir/checkpoints`, and the config they were made with.

Saves are asynchronous and atomic (Orbax writes into a temporary folder and renames it when
complete), so a crash mid-write leaves the previous checkpoint as the latest. The last `keep`
checkpoints are kept, and optionally the best one by evaluation accuracy.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from flax import traverse_util
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from mobilenet_jax.paths import to_path
from mobilenet_jax.training.state import TrainState

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
# Fields that change the state's structure or meaning: a checkpoint cannot continue under others.
STATE_DEFINING_FIELDS = (
    "dataset", "model.alpha", "model.min_depth", "optimizer", "ema_decay", "weight_decay_depthwise",
    "nesterov", "grad_clip_norm", "half_precision", "trainable", "freeze_backbone_steps", "backbone_lr_multiplier",
)


def _state_tree(state: TrainState) -> dict[str, Any]:
    """The arrays of `state` that a checkpoint stores (its static fields come from the config)."""
    return {
        "step": state.step,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "ema_params": state.ema_params,
    }


class Checkpoints:
    """Save and restore TrainStates held as replicated global arrays (`Parallel.to_global`)."""

    def __init__(self, workdir: str, *, keep: int = 3, keep_best: bool = False):
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
            cleanup_tmp_directories=True,
        )
        self.directory = to_path(workdir) / CHECKPOINT_DIR
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint kept."""
        return list(self._manager.all_steps())

    def save(self, state: TrainState, metrics: Mapping[str, float] | None = None) -> None:
        """Start an asynchronous save of `state` at its step; `metrics` feed the best-checkpoint choice."""
        step = int(state.step.addressable_data(0))  # this process's copy of a replicated scalar
        if step in self._manager.all_steps():
            return
        self._manager.save(
            step, args=ocp.args.StandardSave(_state_tree(state)), metrics=dict(metrics) if metrics else None
        )

    def restore(self, template: TrainState, step: int | None = None) -> TrainState:
        """The checkpoint at `step` (default: the latest) in the shape and shardings of `template`."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(template))
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        return template.replace(**restored)

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.close()


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """{"model.alpha": 1.0, ...} from a nested config dict."""
    return traverse_util.flatten_dict(json.loads(json.dumps(dict(config), default=_json_default)), sep=".")


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a complete checkpoint (a step folder; Orbax renames it into place last)."""
    directory = to_path(workdir) / CHECKPOINT_DIR
    return directory.is_dir() and any(path.name.isdigit() for path in directory.iterdir())


def check_resumable(workdir: str, config: Mapping[str, Any], record: bool = True) -> None:
    """Refuse a config that the workdir's checkpoints cannot serve; then, if `record`, save it there.

    Raises ValueError naming every differing state-defining field, before anything is touched.
    """
    path = to_path(workdir) / CONFIG_FILE
    current = flatten_config(config)
    if path.exists() and has_checkpoints(workdir):
        saved = json.loads(path.read_text())
        differing = [
            f"{name}: checkpoint has {saved.get(name)!r}, config has {current.get(name)!r}"
            for name in STATE_DEFINING_FIELDS
            if saved.get(name) != current.get(name)
        ]
        if differing:
            raise ValueError(
                f"workdir {workdir} holds a run whose checkpoints do not fit this config; differing fields: "
                + "; ".join(differing)
                + ". Use a new --workdir, or restore those values."
            )
    if record and jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed: other processes may be reading the previous one.
        staged = path.parent / (CONFIG_FILE + ".tmp")
        staged.write_text(json.dumps(current, indent=1, sort_keys=True))
        staged.replace(path)


def _json_default(value: Any) -> Any:
    """ConfigDicts and other mappings as dicts; anything else as its string."""
    return dict(value) if isinstance(value, Mapping) else str(value)
