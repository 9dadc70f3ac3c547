"""A run's record of itself (its flat config and class count), and the guard on resuming a run.

Each checkpoint carries the record of the run that wrote it in its step metadata; the workdir's
`config.json` is its human-readable copy. A rerun on the same workdir may change only
RESUMABLE_FIELDS: `check_resumable` compares it with the record of the checkpoint it would
restore.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from mobilenet_jax.paths import to_path
from mobilenet_jax.training import hosts
from mobilenet_jax.training.checkpoint import CHECKPOINT_DIR, steps_on_disk
from mobilenet_jax.training.checkpoint_errors import without_log_lines
from mobilenet_jax.weights import CONFIG_FILE

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


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """{"model.alpha": 1.0, ...} from a nested config dict."""
    return traverse_util.flatten_dict(json.loads(json.dumps(dict(config), default=_json_default)), sep=".")


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
    steps = hosts.from_process_zero(steps_on_disk(workdir))
    if not steps:
        return None
    directory = to_path(workdir) / CHECKPOINT_DIR
    try:
        with without_log_lines("Metadata file does not exist"):  # a step of older code, or damaged
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
