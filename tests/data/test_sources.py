"""Digits, image folders and TFDS by name: splits, labels, and errors that name the fix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import (
    SHARDED_FILES,
    SHARDED_TRAIN,
    SIZE,
    eval_pass,
    make_spec,
    real_labels,
    take,
    train_iterator,
)
from mobilenet_jax import data


def test_digits_split_is_fixed_and_stratified():
    info = data.get_dataset_info(make_spec())
    assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    (train_images, _), (test_images, test_labels) = data.digits_arrays()
    assert np.bincount(test_labels).min() >= 35 and np.bincount(test_labels).max() <= 37
    train_keys = {
        image.tobytes() + bytes([label]) for image, label in zip(*data.digits_arrays()[0])
    }
    test_keys = {image.tobytes() + bytes([label]) for image, label in zip(test_images, test_labels)}
    assert not train_keys & test_keys
    labels = np.concatenate([real_labels(eval_pass(make_spec(), index, 2)) for index in range(2)])
    np.testing.assert_array_equal(labels, test_labels)
    assert len(train_images) + len(labels) == 1797


def test_digits_eval_batches_are_the_gray_pixels():
    (_, _), (test_images, _) = data.digits_arrays()
    pixels = next(data.create_eval_iterator(make_spec(), process_index=0, process_count=1))["image"]
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])  # gray as RGB
    # Bilinear upsampling keeps the corner pixels of the 8x8 source exactly.
    np.testing.assert_array_equal(pixels[:, 0, 0, 0], test_images[:8, 0, 0, 0])
    np.testing.assert_array_equal(pixels[:, -1, -1, 0], test_images[:8, -1, -1, 0])
    assert pixels.max() > 200


def test_digits_train_batches():
    batches = take(
        data.create_train_iterator(make_spec(), seed=0, process_index=0, process_count=1), 3
    )
    labels = np.concatenate([batch["label"] for batch in batches])
    assert batches[0]["image"].shape == (8, SIZE, SIZE, 3) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= 9 and len(set(labels)) > 3


COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def write_folder(root, extensions=(".png", ".jpg", ".JPEG"), per_class: int = 4) -> str:
    """root/<class>/<n><ext>: solid images, one colour per class, mixed formats."""
    for (name, color), extension in zip(COLORS.items(), extensions):
        (root / name).mkdir(parents=True)
        image = np.broadcast_to(np.array(color, np.uint8), (20 + per_class, 30, 3))
        encode = tf.io.encode_png if extension == ".png" else tf.io.encode_jpeg
        for index in range(per_class):
            tf.io.write_file(str(root / name / f"{index}{extension}"), encode(image[index:]))
    (root / "notes.txt").write_text("not a class")
    return str(root)


def colour_labels(batch) -> np.ndarray:
    """The class each image's mean colour says it is."""
    return batch["image"].mean(axis=(1, 2)).argmax(axis=-1)


def test_folder_labels_follow_sorted_class_names(tmp_path):
    config = make_spec(
        dataset="folder", folder_train_dir=write_folder(tmp_path / "train"), batch_size=6
    )
    info = data.get_dataset_info(config)
    assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
    assert (info.num_train_examples, info.num_eval_examples) == (9, 3)
    batch = next(data.create_train_iterator(config, seed=0, process_index=0, process_count=1))
    np.testing.assert_array_equal(colour_labels(batch), batch["label"])
    batches = eval_pass(config)
    assert sorted(real_labels(batches)) == [0, 1, 2]  # one held out per class
    np.testing.assert_array_equal(colour_labels(batches[0])[:3], batches[0]["label"][:3])


def test_folder_with_eval_dir(tmp_path):
    config = make_spec(
        dataset="folder",
        folder_train_dir=write_folder(tmp_path / "train"),
        folder_eval_dir=write_folder(tmp_path / "eval", per_class=2),
    )
    info = data.get_dataset_info(config)
    assert (info.num_train_examples, info.num_eval_examples) == (12, 6)
    assert real_labels(eval_pass(config)).tolist() == [0, 0, 1, 1, 2, 2]


def test_folder_errors(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="folder_train_dir=.*missing.*is not a folder"):
        data.get_dataset_info(make_spec(dataset="folder", folder_train_dir=missing))
    root = write_folder(tmp_path / "train")
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(ValueError, match="class folder .*fox.* has no"):
        data.get_dataset_info(make_spec(dataset="folder", folder_train_dir=root))


@pytest.mark.parametrize(
    "overrides, process_count, message",
    [
        (
            {"dataset": "no_such_dataset"},
            1,
            "config.dataset='no_such_dataset' is not a known dataset",
        ),
        ({"image_size": 16}, 1, "image_size must be >= 32.*got 16"),
        ({"image_size": 100_000}, 1, "image_size must be <= 2048, got 100000; lower config.image_size"),
        ({"batch_size": 10}, 3, "batch_size=10 must be a positive multiple of process_count=3"),
    ],
)
def test_bad_config_raises(overrides, process_count, message):
    with pytest.raises(ValueError, match=message):
        data.create_train_iterator(make_spec(**overrides), seed=0, process_index=0, process_count=process_count)


def test_unprepared_tfds_dataset_raises(tmp_path):
    config = make_spec(dataset="cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'cifar10' is not prepared"):
        data.get_dataset_info(config)


def test_bad_tfds_fields_raise(tiny):
    with pytest.raises(ValueError, match="split 'test' is not in tiny_labelled.*'validation'"):
        data.get_dataset_info(dataclasses.replace(tiny, eval_split="test"))
    with pytest.raises(ValueError, match="crop_min_area must be in \\(0, 1\\], got 0.0"):
        data.get_dataset_info(dataclasses.replace(tiny, crop_min_area=0.0))


def test_tfds_eval_split_is_the_one_the_dataset_has(tiny, sharded, train_only, caplog):
    assert data.get_dataset_info(tiny).eval_split == "validation"
    assert "evaluating on" not in caplog.text
    info = data.get_dataset_info(sharded)
    assert (info.eval_split, info.num_train_examples, info.num_eval_examples) == ("test", SHARDED_TRAIN, SHARDED_FILES)
    assert "tiny_sharded has no 'validation' split: evaluating on 'test'" in caplog.text
    info = data.get_dataset_info(train_only)
    assert info.eval_split == "train[90%:]" and "evaluating on train[90%:], which training" in caplog.text
    assert (info.num_train_examples, info.num_eval_examples) == (SHARDED_TRAIN * 9 // 10, SHARDED_TRAIN // 10)
    held_out = real_labels(eval_pass(train_only))
    trained = np.concatenate([batch["label"] for batch in take(train_iterator(train_only), SHARDED_TRAIN // 16)])
    assert len(held_out) == SHARDED_TRAIN // 10 and not set(held_out) & set(trained)
    assert sorted([*held_out, *set(trained)]) == list(range(SHARDED_TRAIN))
    message = "no 'validation' or 'test' split to evaluate train_split='train\\[:50%\\]' on"
    with pytest.raises(ValueError, match=message):
        data.get_dataset_info(dataclasses.replace(train_only, train_split="train[:50%]"))


def spoil_folder(root) -> dict[str, str]:
    """Bad files in a write_folder tree, and a PNG named .jpg that is fine: {name: why it is bad}."""
    png = (root / "cat" / "0.png").read_bytes()  # write_folder's cats are PNGs, its dogs JPEGs
    dog = (root / "dog" / "0.jpg").read_bytes()
    (root / "cat" / "png_named.jpg").write_bytes(png)
    (root / "cat" / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "dog" / "cut.jpg").write_bytes(dog[: len(dog) // 2])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "emu" / "notes.jpeg").write_text("not an image")
    return {
        "cut.png": "Invalid PNG data",
        "cut.jpg": "jpeg::Uncompress failed",
        "empty.jpg": "empty file",
        "notes.jpeg": "Unknown image file format",
    }


def test_folder_check_names_every_bad_image(tmp_path):
    root = write_folder(tmp_path / "train")
    bad = spoil_folder(tmp_path / "train")
    spec = make_spec(dataset="folder", folder_train_dir=root)
    with pytest.raises(ValueError, match="folder_train_dir has 4 images that do not decode") as error:
        data.get_dataset_info(spec)
    message = str(error.value)
    assert "\n" not in message and "png_named" not in message and "skip_bad_images=True" in message
    assert all(f"{tmp_path / 'train'}/" in message and f"/{name}: {why}" in message for name, why in bad.items())


def test_folder_skip_bad_images_leaves_them_out(tmp_path, caplog):
    root = write_folder(tmp_path / "train")
    bad = spoil_folder(tmp_path / "train")
    spec = make_spec(dataset="folder", folder_train_dir=root, skip_bad_images=True)
    info = data.get_dataset_info(spec)
    assert (info.num_train_examples, info.num_eval_examples) == (9, 4)  # 12 + png_named.jpg
    assert "leaving out 4 images that do not decode" in caplog.text
    assert all(name in caplog.text for name in bad)
    batches = take(data.create_train_iterator(spec, seed=0, process_index=0, process_count=1), 3)
    for batch in batches:  # every image is its class's colour: no bad file was read
        np.testing.assert_array_equal(colour_labels(batch), batch["label"])


def test_folder_refusals(tmp_path):
    with pytest.raises(ValueError, match="skip_bad_images=True applies to dataset='folder' only"):
        make_spec(skip_bad_images=True)
    (tmp_path / "one" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="has 1 class sub-folders, a classifier needs at least 2"):
        data.get_dataset_info(make_spec(dataset="folder", folder_train_dir=str(tmp_path / "one")))
    root = write_folder(tmp_path / "train")
    for path in (tmp_path / "train" / "emu").iterdir():
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
    spec = make_spec(dataset="folder", folder_train_dir=root, skip_bad_images=True)
    with pytest.raises(ValueError, match="class folder .*emu.* has no .* images that decode"):
        data.get_dataset_info(spec)
