"""Digits, image folders and TFDS by name: splits, labels, and errors that name the fix."""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

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
from mobilenet_jax.data import image_check
from mobilenet_jax.data.digits import digits_arrays
from mobilenet_jax.data.pipeline import create_eval_iterator, create_train_iterator, get_dataset_info


def test_digits_split_is_fixed_and_stratified():
    info = get_dataset_info(make_spec())
    assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    (train_images, _), (test_images, test_labels) = digits_arrays()
    assert np.bincount(test_labels).min() >= 35 and np.bincount(test_labels).max() <= 37
    train_keys = {
        image.tobytes() + bytes([label]) for image, label in zip(*digits_arrays()[0])
    }
    test_keys = {image.tobytes() + bytes([label]) for image, label in zip(test_images, test_labels)}
    assert not train_keys & test_keys
    labels = np.concatenate([real_labels(eval_pass(make_spec(), index, 2)) for index in range(2)])
    np.testing.assert_array_equal(labels, test_labels)
    assert len(train_images) + len(labels) == 1797


def test_digits_eval_batches_are_the_gray_pixels():
    (_, _), (test_images, _) = digits_arrays()
    pixels = next(create_eval_iterator(make_spec(), process_index=0, process_count=1))["image"]
    assert pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])  # gray as RGB
    # Bilinear upsampling keeps the corner pixels of the 8x8 source exactly.
    np.testing.assert_array_equal(pixels[:, 0, 0, 0], test_images[:8, 0, 0, 0])
    np.testing.assert_array_equal(pixels[:, -1, -1, 0], test_images[:8, -1, -1, 0])
    assert pixels.max() > 200


def test_digits_train_batches():
    batches = take(
        create_train_iterator(make_spec(), seed=0, process_index=0, process_count=1), 3
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
    info = get_dataset_info(config)
    assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
    assert (info.num_train_examples, info.num_eval_examples) == (9, 3)
    batch = next(create_train_iterator(config, seed=0, process_index=0, process_count=1))
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
    info = get_dataset_info(config)
    assert (info.num_train_examples, info.num_eval_examples) == (12, 6)
    assert real_labels(eval_pass(config)).tolist() == [0, 0, 1, 1, 2, 2]


def test_folder_errors(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(ValueError, match="folder_train_dir=.*missing.*is not a folder"):
        get_dataset_info(make_spec(dataset="folder", folder_train_dir=missing))
    root = write_folder(tmp_path / "train")
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(ValueError, match="class folder .*fox.* has no"):
        get_dataset_info(make_spec(dataset="folder", folder_train_dir=root))


def test_folder_reads_class_folders_at_any_depth(tmp_path):
    root = tmp_path / "train"
    write_folder(root)
    for name, new_name in {
        "cat/0.png": "cat/sub/0.png",
        "cat/1.png": "cat/sub/deeper/1.png",
        "dog/2.jpg": "dog/sub/2.jpg",
        "emu/3.JPEG": "emu/sub/deeper/3.JPEG",
    }.items():
        (root / new_name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).rename(root / new_name)
    # Hidden files and folders are no images and no classes, even when they hold some.
    (root / ".ipynb_checkpoints" / "x").mkdir(parents=True)
    (root / ".ipynb_checkpoints" / "x" / "0.png").write_bytes((root / "cat" / "2.png").read_bytes())
    (root / "cat" / ".trash").mkdir()
    (root / "cat" / ".trash" / "0.png").write_bytes(b"")
    (root / "dog" / "._0.jpg").write_bytes(b"\0\5\26\7")  # a macOS resource fork, undecodable
    spec = make_spec(dataset="folder", folder_train_dir=str(root), folder_eval_fraction=0.25, batch_size=9)
    info = get_dataset_info(spec)
    assert info.class_names == ("cat", "dog", "emu")
    assert (info.num_train_examples, info.num_eval_examples) == (9, 3)
    batch = next(create_train_iterator(spec, seed=0, process_index=0, process_count=1))
    np.testing.assert_array_equal(colour_labels(batch), batch["label"])
    assert sorted(batch["label"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    (root / "fox" / "sub").mkdir(parents=True)
    (root / "fox" / "sub" / "notes.txt").write_text("no image")
    (root / "fox" / ".0.png").write_bytes((root / "cat" / "2.png").read_bytes())
    message = "config.folder_train_dir: class folder .*fox' has no .jpg/.jpeg/.png images \\(searched recursively\\)"
    with pytest.raises(ValueError, match=message):
        get_dataset_info(spec)


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
        create_train_iterator(make_spec(**overrides), seed=0, process_index=0, process_count=process_count)


def test_unprepared_tfds_dataset_raises(tmp_path):
    config = make_spec(dataset="cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'cifar10' is not prepared"):
        get_dataset_info(config)


def test_bad_tfds_fields_raise(tiny):
    with pytest.raises(ValueError, match="split 'test' is not in tiny_labelled.*'validation'"):
        get_dataset_info(dataclasses.replace(tiny, eval_split="test"))
    with pytest.raises(ValueError, match="crop_min_area must be in \\(0, 1\\], got 0.0"):
        get_dataset_info(dataclasses.replace(tiny, crop_min_area=0.0))


def test_tfds_eval_split_is_the_one_the_dataset_has(tiny, sharded, train_only, caplog):
    assert get_dataset_info(tiny).eval_split == "validation"
    assert "evaluating on" not in caplog.text
    info = get_dataset_info(sharded)
    assert (info.eval_split, info.num_train_examples, info.num_eval_examples) == ("test", SHARDED_TRAIN, SHARDED_FILES)
    assert "tiny_sharded has no 'validation' split: evaluating on 'test'" in caplog.text
    info = get_dataset_info(train_only)
    assert info.eval_split == "train[90%:]" and "evaluating on train[90%:], which training" in caplog.text
    assert (info.num_train_examples, info.num_eval_examples) == (SHARDED_TRAIN * 9 // 10, SHARDED_TRAIN // 10)
    held_out = real_labels(eval_pass(train_only))
    trained = np.concatenate([batch["label"] for batch in take(train_iterator(train_only), SHARDED_TRAIN // 16)])
    assert len(held_out) == SHARDED_TRAIN // 10 and not set(held_out) & set(trained)
    assert sorted([*held_out, *set(trained)]) == list(range(SHARDED_TRAIN))
    message = "no 'validation' or 'test' split to evaluate config.train_split='train\\[:50%\\]' on"
    with pytest.raises(ValueError, match=message):
        get_dataset_info(dataclasses.replace(train_only, train_split="train[:50%]"))


def blank_png(width: int, height: int) -> bytes:
    """A valid black 1-bit grayscale PNG: kilobytes on disk whatever its size, as a decompression
    bomb is (20000x20000 decodes to 1.2 GB as RGB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = zlib.compressobj()
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed pixels
    pixels = b"".join(rows.compress(row) for _ in range(height)) + rows.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def spoil_folder(root) -> dict[str, str]:
    """Bad files in a write_folder tree, and a PNG named .jpg that is fine: {name: why it is bad}."""
    png = (root / "cat" / "0.png").read_bytes()  # write_folder's cats are PNGs, its dogs JPEGs
    dog = (root / "dog" / "0.jpg").read_bytes()
    (root / "cat" / "png_named.jpg").write_bytes(png)
    (root / "cat" / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "dog" / "cut.jpg").write_bytes(dog[: len(dog) // 2])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "emu" / "notes.jpeg").write_text("not an image")
    (root / "emu" / "dot.png").write_bytes(tf.io.encode_png(np.zeros((1, 1, 3), np.uint8)).numpy())
    (root / "cat" / "line.jpg").write_bytes(tf.io.encode_jpeg(np.zeros((1, 50, 3), np.uint8)).numpy())
    (root / "dog" / "bomb.png").write_bytes(blank_png(10_000, 10_000))  # over PIL's bound: it warns
    (root / "emu" / "big_bomb.png").write_bytes(blank_png(20_000, 20_000))  # over twice it: it raises
    return {
        "cut.png": "Invalid PNG data",
        "cut.jpg": "jpeg::Uncompress failed",
        "empty.jpg": "empty file",
        "notes.jpeg": "Unknown image file format",
        "dot.png": "1x1 pixels, a side under 2 leaves no crop",
        "line.jpg": "50x1 pixels, a side under 2 leaves no crop",
        "bomb.png": "10000x10000 pixels, more than 89,478,485 (a decompression-bomb bound",
        "big_bomb.png": "more than 89,478,485 pixels (a decompression-bomb bound",
    }


def test_folder_check_names_every_bad_image(tmp_path):
    root = write_folder(tmp_path / "train")
    bad = spoil_folder(tmp_path / "train")
    spec = make_spec(dataset="folder", folder_train_dir=root)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ValueError) as error:
        warnings.simplefilter("always")
        get_dataset_info(spec)
    assert not [warning for warning in caught if warning.category is Image.DecompressionBombWarning]
    message = str(error.value)
    assert message.startswith("config.folder_train_dir has 8 images that training cannot use (")
    assert "\n" not in message and "png_named" not in message and "config.skip_bad_images=True" in message
    assert all(f"{tmp_path / 'train'}/" in message and f"/{name}: {why}" in message for name, why in bad.items())


def test_a_refusal_names_the_first_bad_images_and_counts_the_rest(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "train")
    spoil_folder(tmp_path / "train")
    monkeypatch.setattr(image_check, "LISTED_BAD_IMAGES", 3)
    with pytest.raises(ValueError) as error:
        get_dataset_info(make_spec(dataset="folder", folder_train_dir=root))
    assert str(error.value).count(f"{tmp_path / 'train'}/") == 3
    assert "; and 5 more); remove or fix them" in str(error.value)


def test_folder_skip_bad_images_leaves_them_out(tmp_path, caplog):
    root = write_folder(tmp_path / "train")
    bad = spoil_folder(tmp_path / "train")
    spec = make_spec(dataset="folder", folder_train_dir=root, skip_bad_images=True)
    info = get_dataset_info(spec)
    assert (info.num_train_examples, info.num_eval_examples) == (9, 4)  # 12 + png_named.jpg
    assert "leaving out 8 images that training cannot use" in caplog.text
    assert all(name in caplog.text for name in bad)
    batches = take(create_train_iterator(spec, seed=0, process_index=0, process_count=1), 3)
    for batch in batches:  # every image is its class's colour: no bad file was read
        np.testing.assert_array_equal(colour_labels(batch), batch["label"])


def test_folder_refusals(tmp_path):
    with pytest.raises(ValueError, match="skip_bad_images=True applies to dataset='folder' only"):
        make_spec(skip_bad_images=True)
    (tmp_path / "one" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="has 1 class sub-folders, a classifier needs at least 2"):
        get_dataset_info(make_spec(dataset="folder", folder_train_dir=str(tmp_path / "one")))
    root = write_folder(tmp_path / "train")
    for path in (tmp_path / "train" / "emu").iterdir():
        path.write_bytes(b"\x89PNG\r\n\x1a\n")
    spec = make_spec(dataset="folder", folder_train_dir=root, skip_bad_images=True)
    message = "class folder .*emu.* has no images training can use \\(all 4 are left out\\)"
    with pytest.raises(ValueError, match=message):
        get_dataset_info(spec)
