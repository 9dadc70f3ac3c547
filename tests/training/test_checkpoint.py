"""Checkpoints that do not restore are skipped, and a resume may change only some fields."""

from __future__ import annotations

import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits
from mobilenet_jax.training import checkpoint
from mobilenet_jax.training.state import TrainState


def tiny_state(step: int, value: float) -> TrainState:
    """A state with an optimizer state of optax's named tuples, as a real run's."""
    params = {"w": jnp.full((64, 64), value, jnp.float32)}
    opt_state = optax.sgd(0.1, momentum=0.9).init(params)
    return TrainState(
        step=jnp.asarray(step), params=params, batch_stats={}, opt_state=opt_state, ema=None, apply_fn=None, tx=None
    )


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_that_restores(tmp_path, capsys):
    manager = checkpoint.Checkpoints(str(tmp_path), keep=5)
    for step in (1, 2, 3):
        manager.save(tiny_state(step, float(step)))
        manager.wait()
    manager.close()
    folder = tmp_path / checkpoint.CHECKPOINT_DIR
    (folder / "3" / "default" / "_METADATA").unlink()
    for array_file in (folder / "2" / "default").rglob("d/*"):
        os.truncate(array_file, array_file.stat().st_size // 2)

    manager = checkpoint.Checkpoints(str(tmp_path), keep=5)
    restored = manager.restore(tiny_state(0, 0.0))
    manager.close()
    assert int(restored.step) == 1
    np.testing.assert_array_equal(restored.params["w"], np.ones((64, 64), np.float32))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("checkpoint ")] == ["3", "2"]
    assert all("skipped and left on disk" in line for line in lines if line.startswith("checkpoint "))
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["1", "2", "3"]  # nothing deleted


def test_no_restorable_checkpoint_is_one_error_naming_them(tmp_path):
    manager = checkpoint.Checkpoints(str(tmp_path))
    manager.save(tiny_state(4, 4.0))
    manager.wait()
    (tmp_path / checkpoint.CHECKPOINT_DIR / "4" / "default" / "_METADATA").unlink()
    with pytest.raises(ValueError, match=r"no checkpoint in .* restores: 4 \(.*\)\. Move the damaged step folders"):
        manager.restore(tiny_state(0, 0.0))
    manager.close()


def saved_run(workdir: pathlib.Path, **overrides) -> dict:
    """A workdir with a (fake) checkpoint folder and the config.json of digits with `overrides`."""
    record = checkpoint.run_record(digits.get_config().to_dict(), num_classes=10)
    (workdir / checkpoint.CHECKPOINT_DIR / "8").mkdir(parents=True)
    checkpoint.save_record(str(workdir), record)
    return dict(record, **overrides)


@pytest.mark.parametrize(
    "field, value",
    [
        ("model.activation", "relu6"),
        ("model.padding", "same"),
        ("batch_size", 32),
        ("momentum", 0.5),
        ("weight_decay", 1e-4),
        ("learning_rate", 0.1),
        ("label_smoothing", 0.1),
        ("model.bn_epsilon", 1e-3),
        ("quantization", "int8"),  # quantization-aware training from a float run's checkpoints
        ("num_classes", 7),  # a folder with another class count
    ],
)
def test_fields_that_change_the_meaning_of_a_checkpoint_are_refused_by_name(tmp_path, field, value):
    record = saved_run(tmp_path, **{field: value})
    before = (tmp_path / checkpoint.CONFIG_FILE).read_text()
    with pytest.raises(ValueError, match=rf"differing fields: {field}: checkpoint has .*, config has {value!r}\."):
        checkpoint.check_resumable(str(tmp_path), record)
    assert (tmp_path / checkpoint.CONFIG_FILE).read_text() == before


def test_when_and_how_long_may_change_on_resume(tmp_path):
    record = saved_run(
        tmp_path, eval_every_steps=5, log_every_steps=1, checkpoint_every_steps=2, num_epochs=80.0, num_train_steps=900
    )
    checkpoint.check_resumable(str(tmp_path), record)
    assert json.loads((tmp_path / checkpoint.CONFIG_FILE).read_text())["num_epochs"] == 40.0  # only checked
