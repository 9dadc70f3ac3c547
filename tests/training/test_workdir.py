"""A workdir that one run owns: its model is always written, a resume is checked against the
checkpoint it restores, and a second run is refused. In-process runs of a tiny digits config."""

from __future__ import annotations

import ast
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from configs import digits
from mobilenet_jax import weights
from mobilenet_jax.training import lock, model_files, train_and_evaluate
from tiny_runs import tiny_flags

pytestmark = pytest.mark.slow

STEPS = 4
UNWRITABLE = "/proc/mobilenet_v1.msgpack"


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """The digits config at the sizes of `tiny_flags`, with `overrides` ("model.alpha" for nested fields)."""
    config = digits.get_config()
    flags = dict(flag.removeprefix("--config.").split("=", 1) for flag in tiny_flags(STEPS)[1:])
    for name, value in {**{k: ast.literal_eval(v) for k, v in flags.items()}, **overrides}.items():
        *parents, field = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[field] = value
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """A finished run whose export_path cannot be written, and the error it ended with."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    with pytest.raises(model_files.ExportError) as error:
        train_and_evaluate(tiny_config(export_path=UNWRITABLE), str(workdir))
    return workdir, str(error.value)


def files(directory: pathlib.Path) -> dict[str, bytes]:
    """The content of every file below `directory`."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_an_unwritable_export_path_fails_naming_it_and_the_model_kept_in_the_workdir(finished):
    workdir, error = finished
    model_file = workdir / weights.MODEL_FILE
    assert error.startswith(f"export_path {UNWRITABLE} cannot be written (FileNotFoundError: ")
    assert error.endswith(
        f"); the model is in {model_file}: copy it from there, or rerun the same command with a writable "
        "--config.export_path, which writes it there"
    )
    model, variables = weights.load_model(str(model_file))
    assert model.num_classes == 10 and model.alpha == 0.25
    assert weights.load_class_names(str(model_file)) == tuple(str(i) for i in range(10))
    assert weights.load_preprocessing(str(model_file)).size == 32


def test_a_rerun_writes_the_missing_model_files_from_the_checkpoint(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    expected = weights.load_variables(str(workdir / weights.MODEL_FILE))
    for model_file in workdir.glob(weights.MODEL_FILE + "*"):
        model_file.unlink()
    export_path = tmp_path / "exported" / "model.msgpack"
    result = train_and_evaluate(tiny_config(export_path=str(export_path)), str(workdir))
    assert result["finished_before"] and result["step"] == STEPS and result["model_path"] == str(export_path)
    for path in (workdir / weights.MODEL_FILE, export_path):
        actual = weights.load_variables(str(path))
        assert jax.tree.structure(actual) == jax.tree.structure(expected)
        jax.tree.map(np.testing.assert_array_equal, actual, expected)


@pytest.mark.parametrize(
    "overrides, differing",
    [
        (dict(batch_size=32, learning_rate=5.0, label_smoothing=0.3),
         "batch_size: checkpoint has 16, config has 32; label_smoothing: checkpoint has 0.0, config has 0.3; "
         "learning_rate: checkpoint has 0.4, config has 5.0. "),
        ({"model.alpha": 0.5}, "model.alpha: checkpoint has 0.25, config has 0.5. "),
    ],
    ids=["hyperparameters", "alpha"],
)
def test_a_resume_is_checked_against_the_checkpoint_whatever_became_of_config_json(finished, tmp_path, overrides,
                                                                                  differing):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    (workdir / weights.CONFIG_FILE).unlink()
    before = files(workdir)
    with pytest.raises(ValueError, match="differing fields: ") as error:
        train_and_evaluate(tiny_config(**overrides), str(workdir))
    assert f"differing fields: {differing}Use a new --workdir" in str(error.value)
    assert files(workdir) == before


def test_a_run_on_a_workdir_another_run_holds_is_refused_before_writing(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    with lock.held(str(workdir)):  # the other run: this process, running
        before = files(workdir)
        with pytest.raises(lock.WorkdirInUse, match=rf"^workdir {workdir} is in use by another run: pid \d+ on host "):
            train_and_evaluate(tiny_config(num_train_steps=2 * STEPS), str(workdir))
        assert files(workdir) == before
