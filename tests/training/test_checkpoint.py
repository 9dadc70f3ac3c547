"""Checkpoints that do not restore are skipped, each records its run, a resume may change only some
fields, and a full disk is one error."""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import digits
from mobilenet_jax import weights
from mobilenet_jax.training import checkpoint, run_record
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
    record = run_record.run_record(digits.get_config().to_dict(), num_classes=10)
    (workdir / checkpoint.CHECKPOINT_DIR / "8").mkdir(parents=True)
    run_record.save_record(str(workdir), record)
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
    before = (tmp_path / weights.CONFIG_FILE).read_text()
    with pytest.raises(ValueError, match=rf"differing fields: {field}: checkpoint has .*, config has {value!r}\."):
        run_record.check_resumable(str(tmp_path), record)
    assert (tmp_path / weights.CONFIG_FILE).read_text() == before


def test_when_and_how_long_may_change_on_resume(tmp_path):
    record = saved_run(
        tmp_path, eval_every_steps=5, log_every_steps=1, checkpoint_every_steps=2, num_epochs=80.0, num_train_steps=900
    )
    run_record.check_resumable(str(tmp_path), record)
    assert json.loads((tmp_path / weights.CONFIG_FILE).read_text())["num_epochs"] == 40.0  # only checked


def digits_record(**overrides) -> dict:
    """The run record of the digits config, with `overrides`."""
    return dict(run_record.run_record(digits.get_config().to_dict(), num_classes=10), **overrides)


def test_each_checkpoint_records_its_run_and_a_resume_is_checked_against_it_not_config_json(tmp_path):
    manager = checkpoint.Checkpoints(str(tmp_path), record=digits_record())
    manager.save(tiny_state(4, 4.0))
    manager.wait()
    manager.close()
    assert ocp.metadata.get_step_metadata(tmp_path / checkpoint.CHECKPOINT_DIR / "4").custom_metadata == digits_record()
    changed = digits_record(batch_size=32, learning_rate=5.0, label_smoothing=0.3)
    expected = (r"differing fields: batch_size: checkpoint has 64, config has 32; label_smoothing: checkpoint has 0.0, "
                r"config has 0.3; learning_rate: checkpoint has 0.4, config has 5.0\. Use a new --workdir")
    with pytest.raises(ValueError, match=expected):  # no config.json
        run_record.check_resumable(str(tmp_path), changed)
    run_record.save_record(str(tmp_path), changed)  # a config.json edited to match
    with pytest.raises(ValueError, match=expected):
        run_record.check_resumable(str(tmp_path), changed)
    run_record.check_resumable(str(tmp_path), digits_record(num_train_steps=900))


def test_checkpoints_that_record_no_run_and_no_config_json_are_refused_in_one_line(tmp_path):
    manager = checkpoint.Checkpoints(str(tmp_path))  # as checkpoints were written before they carried a record
    manager.save(tiny_state(4, 4.0))
    manager.wait()
    manager.close()
    with pytest.raises(ValueError) as refusal:
        run_record.check_resumable(str(tmp_path), digits_record())
    assert str(refusal.value) == (
        f"the checkpoints in {tmp_path / checkpoint.CHECKPOINT_DIR} record no config (written before checkpoints "
        f"carried it) and {tmp_path / weights.CONFIG_FILE} is missing: put back the config.json of the run that "
        "wrote them, or use a new --workdir"
    )


# How TensorStore reports a full disk, raised as a ValueError from Orbax's background save thread.
TENSORSTORE_FULL_DISK = (
    'RESOURCE_EXHAUSTED: Error writing "params.w/0.0" in OCDBT database at local file "{}": Failed to write '
    "1819662 bytes to file 7: No space left on device [os_error_code='28']"
)


def test_a_full_disk_met_in_the_background_is_one_oserror_naming_the_checkpoints(tmp_path, monkeypatch, caplog):
    def fails_in_the_background(manager):
        error = ValueError(TENSORSTORE_FULL_DISK.format(manager.directory))
        logging.getLogger("absl").error("Save Finalize thread (save_finalize) failed.", exc_info=error)
        raise error

    manager = checkpoint.Checkpoints(str(tmp_path))
    manager.save(tiny_state(4, 4.0))
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", fails_in_the_background)
    with pytest.raises(OSError) as error:
        manager.wait()
    assert error.value.errno == errno.ENOSPC
    assert str(error.value) == (
        f"cannot write checkpoints in {tmp_path / checkpoint.CHECKPOINT_DIR}: no space left on device; free space "
        "there, then rerun the same command: it resumes from the last complete checkpoint"
    )
    assert not [record for record in caplog.records if "failed" in record.getMessage()]  # Orbax's echo dropped
    monkeypatch.undo()
    manager.close()


@pytest.fixture
def small_disk(tmp_path) -> pathlib.Path:
    """A 4 MiB tmpfs; skipped where this user may not mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_full_disk_is_one_oserror_and_the_rerun_saves_once_space_is_freed(small_disk, caplog):
    params = {"w": np.random.default_rng(0).standard_normal((1024, 512), np.float32)}  # 2 MiB, incompressible
    state = tiny_state(4, 0.0).replace(params=params, opt_state=optax.sgd(0.1, momentum=0.9).init(params))
    filler = small_disk / "filler"
    filler.write_bytes(bytes(3 * 2**20))
    manager = checkpoint.Checkpoints(str(small_disk))
    with pytest.raises(OSError, match=rf"^cannot write checkpoints in {small_disk}/checkpoints: no space left on dev"):
        manager.save(state)
        manager.wait()
    manager.close()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]

    filler.unlink()
    manager = checkpoint.Checkpoints(str(small_disk))  # the rerun: the failed save's folder is cleaned up
    manager.save(state)
    manager.wait()
    restored = manager.restore(state.replace(step=jnp.asarray(0)))
    manager.close()
    assert int(restored.step) == 4
    np.testing.assert_array_equal(restored.params["w"], params["w"])
