"""Calibration and check images from an image folder, through the training pipeline."""

import numpy as np
import pytest
from export_models import realistic_deployable

from mobilenet_jax.export import datasets

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
