"""Calibration and check images from an image folder, through the training pipeline."""

import numpy as np
import pytest
from export_models import realistic_deployable

from mobilenet_jax import weights
from mobilenet_jax.export import datasets
from mobilenet_jax.export.__main__ import main

tf = pytest.importorskip("tensorflow")

PER_CLASS = 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir()
        for index in range(PER_CLASS):
            pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
            (root / name / f"{index}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return str(root)


def test_folder_calibration_and_eval_images(folder):
    deployable = realistic_deployable(0.25, 32)
    calibration = datasets.calibration_images(folder, deployable, count=40)
    assert sum(len(b) for b in calibration) >= 40 and calibration[0].shape[1:] == (32, 32, 3)
    images, labels = map(np.concatenate, zip(*datasets.eval_examples(folder, deployable)))
    # The pipeline holds out a fixed tenth of the folder (at least one image per class).
    assert images.shape[1:] == (32, 32, 3) and 1 <= len(labels) < 2 * PER_CLASS
    assert set(labels) <= {0, 1}


def test_tfds_calibration_and_eval_images(tiny_labelled_dir):
    deployable = realistic_deployable(0.25, 32)
    calibration = datasets.calibration_images("tiny_labelled", deployable, count=8, data_dir=tiny_labelled_dir)
    assert sum(len(b) for b in calibration) >= 8 and calibration[0].shape[1:] == (32, 32, 3)
    examples = datasets.eval_examples("tiny_labelled:validation", deployable, data_dir=tiny_labelled_dir)
    images, labels = map(np.concatenate, zip(*examples))
    assert images.shape == (11, 32, 32, 3) and sorted(labels) == list(range(11))  # each example once


def test_export_command_calibrates_on_a_tfds_name_in_data_dir(tiny_labelled_dir, tmp_path, capsys):
    deployable = realistic_deployable(0.25, 32)
    path, out = str(tmp_path / "mobilenet_v1.msgpack"), tmp_path / "int8.stablehlo"
    weights.save_model(path, deployable.model, deployable.variables)
    argv = ["--weights", path, "--image-size", "32", "--format", "stablehlo", "--kind", "int8", "--out", str(out),
            "--calibration", "tiny_labelled"]
    with pytest.raises(SystemExit, match="not prepared in .*--data-dir"):  # not in TFDS's default folder
        main(argv)
    main([*argv, "--data-dir", tiny_labelled_dir])
    assert capsys.readouterr().out.strip() == f"wrote {out}" and out.stat().st_size > 0
