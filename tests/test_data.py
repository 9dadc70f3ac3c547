"""Tests for mobilenet_jax.data: preprocessing, sources, sharding, padding, determinism, resume."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from mobilenet_jax import data  # noqa: E402

SIZE = 32
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
MOCK_EXAMPLES = 10  # mock_data yields this many examples for every split
TINY_TRAIN, TINY_EVAL = 12, 11


def make_config(**overrides) -> ml_collections.ConfigDict:
    """A small config on the offline digits; keyword arguments replace fields."""
    config = ml_collections.ConfigDict(
        {
            "dataset": "digits",
            "data_dir": None,
            "folder_train_dir": None,
            "folder_eval_dir": None,
            "folder_eval_fraction": 0.25,
            "train_split": "train",
            "eval_split": "validation",
            "image_size": SIZE,
            "batch_size": 8,
            "eval_batch_size": 8,
            "normalization": "imagenet",
            "crop_min_area": 0.08,
            "shuffle_buffer": 64,
            "cache": False,
            "prefetch": 2,
        }
    )
    config.update(overrides)
    return config


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    """The next `count` batches of an iterator."""
    return [next(iterator) for _ in range(count)]


def eval_pass(config, process_index: int = 0, process_count: int = 1):
    """All batches of one eval pass."""
    return list(
        data.create_eval_iterator(config, process_index=process_index, process_count=process_count)
    )


def real_labels(batches) -> np.ndarray:
    """Labels of the unmasked examples of eval batches, in order."""
    return np.concatenate([batch["label"][batch["mask"]] for batch in batches])


def assert_same_batches(first, second) -> None:
    """Two lists of batches are identical, key by key."""
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert one.keys() == other.keys()
        for key in one:
            np.testing.assert_array_equal(one[key], other[key])


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random uint8 RGB image (so JPEG keeps it close)."""
    noise = np.random.default_rng(seed).random((height // 8, width // 8, 3), np.float32) * 255
    return tf.cast(tf.image.resize(noise, [height, width]), tf.uint8).numpy()


# ---------------------------------------------------------------------------------------------
# Normalisation and single-image preprocessing.


def test_normalize_images_known_pixels():
    pixels = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    imagenet = data.normalize_images(pixels, "imagenet")
    np.testing.assert_allclose(
        imagenet[0, 0], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6
    )
    np.testing.assert_allclose(
        imagenet[0, 1], [0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225], rtol=1e-6
    )
    for convention in ("inception", "half"):
        np.testing.assert_allclose(
            data.normalize_images(pixels, convention)[0], [[-1] * 3, [1] * 3]
        )
    assert data.normalize_images(np.full(3, 127.5), "inception").tolist() == [0, 0, 0]
    assert data.normalize_images(pixels, "half").dtype == np.float32
    with pytest.raises(ValueError, match="normalization must be one of.*'caffe'"):
        data.normalize_images(pixels, "caffe")


@pytest.mark.parametrize(
    "height, width, size, offset, side",
    [
        (256, 320, 224, (16, 48), 224),  # 224/256 of the shorter side: the crop needs no resize
        (255, 321, 64, (43, 76), 170),  # int(64/96 * 255) = 170; odd margins round up
    ],
)
def test_preprocess_for_eval_is_the_center_crop(height, width, size, offset, side):
    image = smooth_image(height, width)
    # Without chroma subsampling decode_and_crop_jpeg equals decode-then-slice bit for bit; with
    # it, libjpeg's fancy upsampling differs on the crop's left and right edge columns.
    encoded = tf.io.encode_jpeg(image, quality=95, chroma_downsampling=False)
    decoded = tf.io.decode_jpeg(encoded, channels=3)
    crop = decoded[offset[0] : offset[0] + side, offset[1] : offset[1] + side]
    expected = tf.image.resize(crop, [size, size], method="bilinear", antialias=True)
    got = data.preprocess_for_eval(encoded, size, normalization="inception").numpy()
    assert got.shape == (size, size, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, data.normalize_images(expected, "inception").numpy())
    # PNG goes through the full-decode branch and is lossless: compare with the raw pixels.
    from_png = data.preprocess_for_eval(tf.io.encode_png(image), size, normalization="inception")
    raw = image[offset[0] : offset[0] + side, offset[1] : offset[1] + side]
    raw = tf.image.resize(raw, [size, size], method="bilinear", antialias=True)
    np.testing.assert_array_equal(from_png.numpy(), data.normalize_images(raw, "inception").numpy())


def test_random_crop_window_stays_inside_and_in_range():
    shape = tf.constant([300, 400, 3])
    windows = np.array(
        [
            data._random_crop_window(shape, tf.constant([seed, 7]), 0.08, 224, 32).numpy()
            for seed in range(200)
        ]
    )
    y, x, height, width = windows.T
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + height <= 300).all() and (x + width <= 400).all()
    area = height * width / (300 * 400)
    assert area.min() >= 0.08 - 1e-3 and area.max() <= 1
    aspect = width / height
    assert aspect.min() >= 0.75 - 0.02 and aspect.max() <= 4 / 3 + 0.02
    assert len({tuple(window) for window in windows}) > 150  # the seed really moves the crop


def test_preprocess_for_train_shape_determinism_and_flip():
    encoded = tf.io.encode_jpeg(smooth_image(300, 400))
    first = data.preprocess_for_train(encoded, tf.constant([1, 2]), 96)
    assert first.shape == (96, 96, 3) and first.dtype == tf.float32
    np.testing.assert_array_equal(
        first, data.preprocess_for_train(encoded, tf.constant([1, 2]), 96)
    )
    assert not np.array_equal(first, data.preprocess_for_train(encoded, tf.constant([1, 3]), 96))
    # Dark left half, bright right half: a flip shows as a brighter left column.
    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:, 32:] = 255

    def flipped(seed: int, flip: bool) -> bool:
        out = data.preprocess_for_train(
            tf.constant(halves), tf.constant([seed, 0]), SIZE, crop_min_area=0.9, flip=flip
        ).numpy()
        return bool(out[:, 0].mean() > out[:, -1].mean())

    flips = [flipped(seed, True) for seed in range(20)]
    assert 0 < sum(flips) < 20
    assert not any(flipped(seed, False) for seed in range(20))


# ---------------------------------------------------------------------------------------------
# ImageNet on tfds.testing.mock_data.


@pytest.fixture(scope="module")
def imagenet_metadata(tmp_path_factory) -> str:
    """A data_dir holding only imagenet2012's metadata, with MOCK_EXAMPLES per split."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    splits = [
        tfds.core.SplitInfo(name=name, shard_lengths=[MOCK_EXAMPLES], num_bytes=0)
        for name in ("train", "validation")
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    return data_dir


@pytest.fixture
def imagenet(imagenet_metadata):
    """A config for imagenet2012 while TFDS serves random JPEGs of random sizes."""
    with tfds.testing.mock_data(
        num_examples=MOCK_EXAMPLES,
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=imagenet_metadata,
    ):
        yield make_config(dataset="imagenet2012", batch_size=4, eval_batch_size=4)


def mock_labels(split: str) -> list[int]:
    """The labels the mock serves, in reading order."""
    return [int(example["label"]) for example in tfds.load("imagenet2012", split=split)]


def test_imagenet_mock_serves_jpeg_bytes(imagenet):
    builder = tfds.builder("imagenet2012")
    dataset = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    example = next(iter(dataset))
    assert example["image"].dtype == tf.string and bool(tf.io.is_jpeg(example["image"]))


def test_imagenet_info(imagenet):
    info = data.get_dataset_info(imagenet)
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (1000, 10, 10)
    assert len(info.class_names) == 1000 and info.class_names[0] == "n01440764"


def test_imagenet_train_batches(imagenet):
    batch = next(data.create_train_iterator(imagenet, seed=0, process_index=0, process_count=1))
    assert batch.keys() == {"image", "label"}
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert set(batch["label"]) <= set(mock_labels("train"))
    low, high = -IMAGENET_MEAN / IMAGENET_STD, (255 - IMAGENET_MEAN) / IMAGENET_STD
    assert (batch["image"] >= low - 1e-5).all() and (batch["image"] <= high + 1e-5).all()
    assert batch["image"].std() > 0.1  # real pixels, not padding


def test_imagenet_eval_pads_and_masks(imagenet):
    batches = eval_pass(imagenet)
    assert len(batches) == 3  # ceil(10 / 4)
    assert [batch["mask"].tolist() for batch in batches][-1] == [True, True, False, False]
    assert sum(int(batch["mask"].sum()) for batch in batches) == MOCK_EXAMPLES
    assert real_labels(batches).tolist() == mock_labels("validation")
    last = batches[-1]
    assert last["image"].shape == (4, SIZE, SIZE, 3) and last["mask"].dtype == bool
    assert not last["image"][2:].any() and not last["label"][2:].any()
    assert last["image"][:2].std(axis=(1, 2, 3)).min() > 0.1  # real images before the padding


def test_imagenet_train_is_seeded(imagenet):
    def first_batches(seed: int) -> list[dict[str, np.ndarray]]:
        iterator = data.create_train_iterator(imagenet, seed=seed, process_index=0, process_count=1)
        return take(iterator, 2)

    assert_same_batches(first_batches(0), first_batches(0))
    other = first_batches(1)
    assert not np.array_equal(first_batches(0)[0]["label"], other[0]["label"])


def test_imagenet_augmentation_is_seeded(imagenet):
    imagenet.batch_size = MOCK_EXAMPLES  # one batch is one epoch: the same images, reordered

    def epoch_by_label(seed: int) -> np.ndarray:
        iterator = data.create_train_iterator(imagenet, seed=seed, process_index=0, process_count=1)
        batch = next(iterator)
        return batch["image"][np.argsort(batch["label"])]

    assert len(set(mock_labels("train"))) == MOCK_EXAMPLES
    first, second = epoch_by_label(0), epoch_by_label(1)
    assert all(not np.array_equal(one, other) for one, other in zip(first, second))


def test_imagenet_epochs_are_permutations(imagenet):
    iterator = data.create_train_iterator(imagenet, seed=0, process_index=0, process_count=1)
    labels = np.concatenate([batch["label"] for batch in take(iterator, 5)])
    first, second = labels[:MOCK_EXAMPLES], labels[MOCK_EXAMPLES:]
    assert sorted(first) == sorted(second) == sorted(mock_labels("train"))
    assert first.tolist() != second.tolist()  # each epoch has its own order


def test_start_step_resumes_exactly(imagenet):
    fresh = data.create_train_iterator(imagenet, seed=5, process_index=0, process_count=1)
    expected = take(fresh, 6)[3:]  # steps 3..5 cover examples 12..23: epochs 1 and 2
    resumed = data.create_train_iterator(
        imagenet, seed=5, process_index=0, process_count=1, start_step=3
    )
    assert_same_batches(take(resumed, 3), expected)


def test_cache_keeps_the_stream(imagenet):
    def batches(cache: bool) -> list[dict[str, np.ndarray]]:
        imagenet.cache = cache
        iterator = data.create_train_iterator(imagenet, seed=2, process_index=0, process_count=1)
        return take(iterator, 4)  # two epochs: the second reads from the cache

    assert_same_batches(batches(True), batches(False))


# ---------------------------------------------------------------------------------------------
# A real (tiny) TFDS dataset on disk, for per-process splits.


class TinyLabelled(tfds.core.GeneratorBasedBuilder):
    """JPEG images whose label is their index, so every example is identifiable."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=TINY_TRAIN),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self, features=features, supervised_keys=("image", "label")
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples(TINY_TRAIN),
            "validation": self._generate_examples(TINY_EVAL),
        }

    def _generate_examples(self, count: int):
        for index in range(count):
            yield index, {"image": smooth_image(40, 48 + 8 * index, index), "label": index}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> ml_collections.ConfigDict:
    """A config for TinyLabelled, prepared in a temporary data_dir."""
    data_dir = str(tmp_path_factory.mktemp("tiny"))
    TinyLabelled(data_dir=data_dir).download_and_prepare()
    return make_config(dataset="tiny_labelled", data_dir=data_dir, batch_size=4, eval_batch_size=4)


def test_tfds_eval_sees_each_example_once_across_processes(tiny):
    shares = [eval_pass(tiny, index, 2) for index in range(2)]
    assert [len(share) for share in shares] == [3, 3]  # ceil(6 / 2) batches each
    assert [len(real_labels(share)) for share in shares] == [6, 5]
    union = np.concatenate([real_labels(share) for share in shares])
    assert sorted(union) == list(range(TINY_EVAL))
    assert all(batch["image"].shape == (2, SIZE, SIZE, 3) for share in shares for batch in share)


def test_tfds_train_processes_read_disjoint_shares(tiny):
    epochs = []
    for index in range(2):
        iterator = data.create_train_iterator(tiny, seed=0, process_index=index, process_count=2)
        epochs.append(np.concatenate([batch["label"] for batch in take(iterator, 3)]))
    assert sorted(np.concatenate(epochs)) == list(range(TINY_TRAIN))


# ---------------------------------------------------------------------------------------------
# Digits.


def test_digits_split_is_fixed_and_stratified():
    info = data.get_dataset_info(make_config())
    assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    (train_images, _), (test_images, test_labels) = data._digits_arrays()
    assert np.bincount(test_labels).min() >= 35 and np.bincount(test_labels).max() <= 37
    train_keys = {
        image.tobytes() + bytes([label]) for image, label in zip(*data._digits_arrays()[0])
    }
    test_keys = {image.tobytes() + bytes([label]) for image, label in zip(test_images, test_labels)}
    assert not train_keys & test_keys
    labels = np.concatenate([real_labels(eval_pass(make_config(), index, 2)) for index in range(2)])
    np.testing.assert_array_equal(labels, test_labels)
    assert len(train_images) + len(labels) == 1797


def test_digits_eval_pixels_follow_the_convention():
    (_, _), (test_images, _) = data._digits_arrays()
    for convention in ("imagenet", "inception"):
        batch = next(
            data.create_eval_iterator(
                make_config(normalization=convention), process_index=0, process_count=1
            )
        )
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if convention == "imagenet" else (127.5, 127.5)
        pixels = batch["image"] * std + mean  # back to 0..255
        np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-3)  # gray as RGB
        # Bilinear upsampling keeps the corner pixels of the 8x8 source exactly.
        np.testing.assert_allclose(pixels[:, 0, 0, 0], test_images[:8, 0, 0, 0], atol=1e-3)
        np.testing.assert_allclose(pixels[:, -1, -1, 0], test_images[:8, -1, -1, 0], atol=1e-3)
        assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3 and pixels.max() > 200


def test_digits_train_batches():
    batches = take(
        data.create_train_iterator(make_config(), seed=0, process_index=0, process_count=1), 3
    )
    labels = np.concatenate([batch["label"] for batch in batches])
    assert batches[0]["image"].shape == (8, SIZE, SIZE, 3) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() <= 9 and len(set(labels)) > 3


# ---------------------------------------------------------------------------------------------
# Image folders.

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
    pixels = batch["image"] * IMAGENET_STD + IMAGENET_MEAN
    return pixels.mean(axis=(1, 2)).argmax(axis=-1)


def test_folder_labels_follow_sorted_class_names(tmp_path):
    config = make_config(
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
    config = make_config(
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
        data.get_dataset_info(make_config(dataset="folder", folder_train_dir=missing))
    root = write_folder(tmp_path / "train")
    (tmp_path / "train" / "fox").mkdir()
    with pytest.raises(ValueError, match="class folder .*fox.* has no"):
        data.get_dataset_info(make_config(dataset="folder", folder_train_dir=root))


# ---------------------------------------------------------------------------------------------
# Bad configs fail early and say how to fix them.


@pytest.mark.parametrize(
    "overrides, process_count, message",
    [
        (
            {"dataset": "no_such_dataset"},
            1,
            "config.dataset='no_such_dataset' is not a known dataset",
        ),
        ({"image_size": 16}, 1, "image_size must be >= 32.*got 16"),
        ({"normalization": "caffe"}, 1, "normalization must be one of"),
        ({"batch_size": 10}, 3, "batch_size=10 must be a positive multiple of process_count=3"),
    ],
)
def test_bad_config_raises(overrides, process_count, message):
    config = make_config(**overrides)
    with pytest.raises(ValueError, match=message):
        data.create_train_iterator(config, seed=0, process_index=0, process_count=process_count)


def test_unprepared_tfds_dataset_raises(tmp_path):
    config = make_config(dataset="cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'cifar10' is not prepared"):
        data.get_dataset_info(config)


def test_bad_tfds_fields_raise(tiny):
    with pytest.raises(ValueError, match="split 'test' is not in tiny_labelled.*'validation'"):
        data.get_dataset_info(make_config(**{**tiny.to_dict(), "eval_split": "test"}))
    with pytest.raises(ValueError, match="crop_min_area must be in \\(0, 1\\], got 0.0"):
        data.get_dataset_info(make_config(**{**tiny.to_dict(), "crop_min_area": 0.0}))
