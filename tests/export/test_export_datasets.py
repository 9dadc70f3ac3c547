"""Calibration and check images from an image folder, through the training pipeline."""

import re

import numpy as np
import pytest
from export_models import realistic_deployable

from mobilenet_jax import MobileNetV1, weights
from mobilenet_jax.export import Deployable, datasets
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
    argv = ["--weights", path, "--image-size", "32", "--normalization", "imagenet", "--format", "stablehlo",
            "--kind", "int8", "--out", str(out), "--calibration", "tiny_labelled"]
    with pytest.raises(SystemExit) as exit:  # not in TFDS's default folder
        main(argv)
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.count("\n") == 1
    assert re.search("--calibration='tiny_labelled': TFDS dataset 'tiny_labelled' is not prepared in .*--data-dir",
                     error)
    main([*argv, "--data-dir", tiny_labelled_dir])
    assert capsys.readouterr().out.strip() == f"wrote {out}" and out.stat().st_size > 0



def png(height: int, width: int) -> bytes:
    """A gray PNG of `height` x `width` pixels."""
    return tf.io.encode_png(np.full((height, width, 3), 128, np.uint8)).numpy()


def bad_datasets(root) -> dict[str, tuple[str, str]]:
    """{case: (dataset for the flag, how the error goes on after the flag)}, written under `root`."""
    for name, files in {
        "one_class": {"cat/0.png": png(40, 40)},
        "bad_image": {"cat/0.png": png(40, 40), "cat/1.png": png(40, 40), "dog/0.png": png(1, 1)},
        "no_images": {"cat/0.png": png(40, 40), "dog/sub/notes.txt": b"no image"},
        "one_each": {"cat/0.png": png(40, 40), "dog/0.png": png(40, 40)},
    }.items():
        for path, contents in files.items():
            (root / name / path).parent.mkdir(parents=True, exist_ok=True)
            (root / name / path).write_bytes(contents)
    (root / "empty").mkdir()
    (root / "photo.jpg").write_bytes(png(40, 40))
    accepted = "use 'digits', an image folder root/<class>/*.jpg or a TFDS image-classification name"
    return {
        "empty folder": (f"{root}/empty", f"='{root}/empty' has 0 class sub-folders, a classifier needs at least 2"),
        "one class": (f"{root}/one_class", f"='{root}/one_class' has 1 class sub-folders"),
        "a file": (f"{root}/photo.jpg", f"='{root}/photo.jpg' is a file, not a folder; " + accepted),
        "a missing folder": (f"{root}/missing", f"='{root}/missing' does not exist; " + accepted),
        "an unknown name": ("no_such_dataset", "='no_such_dataset' is not a known dataset: " + accepted),
        "a bad image": (f"{root}/bad_image", f" has 1 image that training cannot use ({root}/bad_image/dog/0.png: "
                        "1x1 pixels, a side under 2 leaves no crop); remove or fix them"),
        "a class without images": (f"{root}/no_images", f": class folder '{root}/no_images/dog' has no .jpg/.jpeg/.png "
                                   "images (searched recursively)"),
        "too few images": (f"{root}/one_each", f"='{root}/one_each': cannot hold out 10% of each class for evaluation"),
    }


@pytest.mark.parametrize("flag", ["--calibration", "--data"])
def test_dataset_errors_name_the_flag(flag, tmp_path):
    deployable = Deployable(MobileNetV1(num_classes=2, alpha=0.25), {}, image_size=32)
    for case, (dataset, expected) in bad_datasets(tmp_path).items():
        with pytest.raises(ValueError) as error:
            if flag == "--calibration":
                datasets.calibration_images(dataset, deployable, count=8)
            else:
                list(datasets.eval_examples(dataset, deployable))
        message = str(error.value)
        assert message.startswith(flag + expected), (case, message)
        assert "config." not in message and "skip_bad_images" not in message and "\n" not in message, (case, message)


def test_tfds_errors_name_the_flag(tiny_labelled_dir, tmp_path):
    deployable = Deployable(MobileNetV1(num_classes=2, alpha=0.25), {}, image_size=32)
    with pytest.raises(ValueError, match="^--calibration='cifar10': TFDS dataset 'cifar10' is not prepared in .*"
                       "point --data-dir at that folder$"):
        datasets.calibration_images("cifar10", deployable, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="^--data: split 'nosuch' is not in tiny_labelled: use one of"):
        list(datasets.eval_examples("tiny_labelled:nosuch", deployable, data_dir=tiny_labelled_dir))
