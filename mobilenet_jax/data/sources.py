"""Datasets behind one protocol: TFDS by name, a folder of images, and the offline digits.

`open_source(spec)` opens a dataset once (metadata and file lists; an image folder also has each
image's header read and the image decoded once, to refuse or skip the ones training cannot use
before it starts) and returns a `Source`: its `DatasetInfo`, how its images are augmented, and a
function that hands each process its part of a split. The pipeline (`pipeline.py`) does the rest
the same way for all. Errors name the settings the user gave (`Settings`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from etils import epath
from sklearn import datasets as sklearn_datasets
from sklearn import model_selection
from sklearn import utils as sklearn_utils
from tensorflow_datasets.core.utils import shard_utils

from mobilenet_jax.data import image_check
from mobilenet_jax.data.preprocess import EVAL_CROP_PADDING, keep_tensorflow_off_accelerators
from mobilenet_jax.data.spec import HELD_OUT_PERCENT, DatasetInfo, DataSpec
from mobilenet_jax.paths import to_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Held-out splits use their own fixed seed so the test set never moves with the training seed.
SPLIT_SEED = 0
DIGITS_NUM_TEST = 360
# Digits fill their 8x8 frame: crop mildly, never flip, evaluate on the whole image.
DIGITS_CROP_MIN_AREA = 0.6
# TFDS files read at once, 16 records from each in turn: TFDS's own reading order.
READ_CYCLE, READ_BLOCK = 16, 16


@dataclasses.dataclass(frozen=True)
class Settings:
    """What errors call the settings that chose a dataset, so that each names what the user set:
    the training config's fields by default, a command's flags with `Settings.from_flags`."""

    dataset: str = "config.dataset"
    folder_train_dir: str = "config.folder_train_dir"
    folder_eval_dir: str = "config.folder_eval_dir"
    train_split: str = "config.train_split"
    eval_split: str = "config.eval_split"
    data_dir: str = "config.data_dir"
    accepted: str = (
        "'digits', 'folder' (images in config.folder_train_dir) or a TFDS image-classification name "
        "such as 'imagenet2012' or 'cifar10'"
    )
    # Whether errors may offer the config's other fields (skip_bad_images, folder_eval_dir) as fixes.
    config_fixes: bool = True

    @classmethod
    def from_flags(cls, dataset_flag: str, data_dir_flag: str) -> Settings:
        """The settings of a command that takes the dataset (a name, a folder or "name:split") in
        one flag and the TFDS folder in another."""
        return cls(
            dataset=dataset_flag,
            folder_train_dir=dataset_flag,
            folder_eval_dir=dataset_flag,
            train_split=dataset_flag,
            eval_split=dataset_flag,
            data_dir=data_dir_flag,
            accepted=(
                "'digits', an image folder root/<class>/*.jpg or a TFDS image-classification name "
                f"(optionally name:split) prepared in {data_dir_flag}"
            ),
            config_fixes=False,
        )


@dataclasses.dataclass(frozen=True)
class Augment:
    """How a source's images are cropped; everything else is shared by all sources."""

    crop_min_area: float
    flip: bool
    eval_crop_padding: int


@dataclasses.dataclass(frozen=True)
class Part:
    """One process's share of a split, before shuffling and preprocessing: its files and a reader."""

    # File indices (an int64 vector) -> the {"image", "label": int32} records those files hold for
    # this share, in an order fixed by the indices. In-memory items are one file.
    read: Callable[[tf.Tensor], tf.data.Dataset]
    file_counts: tuple[int, ...]  # examples each file holds for this share, in stored order
    max_count: int  # examples in the largest share of any process
    load: Callable[[tf.Tensor], tf.Tensor]  # record image -> encoded bytes or an HWC tensor
    # The whole split for every process, which keeps its slice of each global batch.
    whole: bool = False

    @property
    def count(self) -> int:
        """Examples in this process's share."""
        return sum(self.file_counts)

    def read_all(self) -> tf.data.Dataset:
        """The share's records, its files in stored order."""
        return self.read(tf.range(len(self.file_counts), dtype=tf.int64))


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset opened and checked once per run, ready to hand out per-process parts of its splits."""

    info: DatasetInfo
    augment: Augment
    part: Callable[..., Part]  # (train, process_index, process_count) -> Part


def open_source(spec: DataSpec, settings: Settings = Settings()) -> Source:
    """The dataset of `spec`, opened and checked (TFDS and digits: metadata only; folders: every
    image's header read and the image decoded once); errors name the `settings`."""
    keep_tensorflow_off_accelerators()
    if spec.dataset == "digits":
        return _digits_source(spec.image_size)
    if spec.dataset == "folder":
        return _folder_source(spec, settings)
    return _tfds_source(spec, settings)


def _tfds_source(spec: DataSpec, settings: Settings) -> Source:
    """A TFDS image-classification dataset, read undecoded so decoding can fuse with the crop."""
    data_dir = None if spec.data_dir is None else str(to_path(spec.data_dir))
    builder = _tfds_builder(spec.dataset, data_dir, settings)
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if not isinstance(builder.info.features[image_key], tfds.features.Image):
        raise ValueError(
            f"{settings.dataset}={spec.dataset!r} has no image feature {image_key!r}; "
            "use an image-classification dataset"
        )
    labels = builder.info.features[label_key]
    train_split, eval_split = _tfds_splits(builder, spec.train_split, spec.eval_split, settings)
    info = DatasetInfo(
        num_classes=labels.num_classes,
        num_train_examples=_tfds_split_size(builder, train_split, settings.train_split),
        num_eval_examples=_tfds_split_size(builder, eval_split, settings.eval_split),
        class_names=tuple(labels.names),
        eval_split=eval_split,
    )

    def part(train: bool, process_index: int, process_count: int) -> Part:
        shares = tfds.even_splits(train_split if train else eval_split, process_count)
        counts = [builder.info.splits[share].num_examples for share in shares]
        files = builder.info.splits[shares[process_index]].file_instructions
        read = _tfds_reader(builder, files, image_key, label_key)
        return Part(read, tuple(file.take for file in files), max(counts), tf.identity)

    return Source(info, _imagenet_augment(spec), part)


def _tfds_reader(
    builder: tfds.core.DatasetBuilder, files: list[shard_utils.FileInstruction], image_key: str, label_key: str
) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """`Part.read` of a TFDS share's files (its `file_instructions`), images left encoded.

    Reading files directly, rather than through `builder.as_dataset`, lets the pipeline read any
    subset of them in any order; each file yields only its slice of the share (skip, take).
    """
    paths = tf.constant([os.fspath(file.filename) for file in files], tf.string)
    skips = tf.constant([file.skip for file in files], tf.int64)
    takes = tf.constant([file.take for file in files], tf.int64)
    adapter = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[builder.info.file_format]
    features = builder.info.features
    decoders = {image_key: tfds.decode.SkipDecoding()}

    def file_records(index: tf.Tensor) -> tf.data.Dataset:
        return adapter.make_tf_data(paths[index]).skip(skips[index]).take(takes[index])

    def record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        example = features.deserialize_example(serialized, decoders=decoders)
        return {"image": example[image_key], "label": tf.cast(example[label_key], tf.int32)}

    def read(indices: tf.Tensor) -> tf.data.Dataset:
        serialized = tf.data.Dataset.from_tensor_slices(indices).interleave(
            file_records,
            cycle_length=READ_CYCLE,
            block_length=READ_BLOCK,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return serialized.map(record, num_parallel_calls=tf.data.AUTOTUNE)

    return read


def _tfds_builder(name: str, data_dir: str | None, settings: Settings) -> tfds.core.DatasetBuilder:
    """The builder of a prepared TFDS dataset, or a ValueError saying how to get one."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as error:  # an unknown name, or one TFDS cannot parse ("my-images", "/data")
        raise ValueError(f"{settings.dataset}={name!r} is not a known dataset: use {settings.accepted}") from error
    if not builder.info.splits:
        raise ValueError(
            f"{settings.dataset}={name!r}: TFDS dataset {name!r} is not prepared in {builder.data_dir}: prepare it "
            f"with `tfds build {name} --data_dir=...` (imagenet2012 needs its archives in "
            f"<data_dir>/downloads/manual) and point {settings.data_dir} at that folder"
        )
    return builder


def _tfds_splits(
    builder: tfds.core.DatasetBuilder, train_split: str, eval_split: str | None, settings: Settings
) -> tuple[str, str]:
    """(train, eval) split strings; eval_split=None picks "validation", else "test", else a
    held-out slice of "train" that training then does not see, and says which."""
    if eval_split is not None:
        return train_split, eval_split
    for name in ("validation", "test"):
        if name in builder.info.splits:
            if name != "validation":
                logging.warning("%s has no 'validation' split: evaluating on %r", builder.name, name)
            return train_split, name
    if train_split != "train":
        raise ValueError(
            f"{builder.name} has no 'validation' or 'test' split to evaluate {settings.train_split}={train_split!r} "
            f"on; set {settings.eval_split} to one of {sorted(builder.info.splits)} or a slice of them"
        )
    cut = 100 - HELD_OUT_PERCENT
    logging.warning(
        "%s has no 'validation' or 'test' split: evaluating on train[%d%%:], which training does not see",
        builder.name,
        cut,
    )
    return f"train[:{cut}%]", f"train[{cut}%:]"


def _tfds_split_size(builder: tfds.core.DatasetBuilder, split: str, setting: str) -> int:
    """Number of examples in a TFDS split string, or a ValueError naming the `setting` it came
    from and listing the splits."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"{setting}: split {split!r} is not in {builder.name}: use one of {sorted(builder.info.splits)} "
            "or a slice of them such as 'train[:90%]'"
        ) from error


def _digits_source(image_size: int) -> Source:
    """scikit-learn's 1,797 8x8 digits with a fixed stratified test set of 360."""
    train, test = digits_arrays()
    info = DatasetInfo(
        num_classes=10,
        num_train_examples=len(train[1]),
        num_eval_examples=len(test[1]),
        class_names=tuple(str(digit) for digit in range(10)),
        eval_split="test",
    )
    augment = Augment(crop_min_area=DIGITS_CROP_MIN_AREA, flip=False, eval_crop_padding=0)
    load = functools.partial(_upsample_gray, image_size=image_size)
    return Source(info, augment, functools.partial(_array_part, train, test, load))


@functools.cache
def digits_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)): uint8 [N, 8, 8, 1] in 0..255, int32."""
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return _held_out(images, digits.target.astype(np.int32), DIGITS_NUM_TEST)


def _upsample_gray(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """A small grayscale image as float32 RGB, upsampled bilinearly to the model resolution."""
    # Upsampling before the crop keeps crop offsets finer than the 8x8 pixel grid.
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.image.grayscale_to_rgb(resized)


def _folder_source(spec: DataSpec, settings: Settings) -> Source:
    """`root/<class>/**/*.jpg|jpeg|png`, classes numbered in sorted folder-name order, every image
    checked before training starts (see `_image_problem`)."""
    train_dir = spec.folder_train_dir
    class_names, paths, labels = _scan_folder(
        train_dir, settings.folder_train_dir, spec.skip_bad_images, settings.config_fixes
    )
    eval_dir = spec.folder_eval_dir
    if eval_dir is None:
        fraction = spec.folder_eval_fraction
        try:
            train, test = _held_out(paths, labels, fraction)
        except ValueError as error:
            more = " or set config.folder_eval_dir" if settings.config_fixes else ""
            raise ValueError(
                f"{settings.folder_train_dir}={train_dir!r}: cannot hold out {fraction:.0%} of each class for "
                f"evaluation ({error}); add images{more}"
            ) from error
    else:
        eval_names, eval_paths, eval_labels = _scan_folder(
            eval_dir, settings.folder_eval_dir, spec.skip_bad_images, settings.config_fixes
        )
        if eval_names != class_names:
            raise ValueError(
                f"{settings.folder_eval_dir} classes {eval_names} differ from {settings.folder_train_dir} "
                f"classes {class_names}; give both folders the same class sub-folders"
            )
        # Per-process shares are contiguous: shuffle once so each holds every class.
        train = tuple(sklearn_utils.shuffle(paths, labels, random_state=SPLIT_SEED))
        test = (eval_paths, eval_labels)
    info = DatasetInfo(
        num_classes=len(class_names),
        num_train_examples=len(train[1]),
        num_eval_examples=len(test[1]),
        class_names=class_names,
    )
    part = functools.partial(_array_part, train, test, tf.io.read_file)
    return Source(info, _imagenet_augment(spec), part)


def _scan_folder(
    root: str | None, setting: str, skip_bad: bool, offer_skip: bool
) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(class names, image paths, int32 labels) of a class-per-sub-folder image folder, local or
    gs://, each class's images found at any depth below its folder (as torchvision's
    ImageFolder does) and checked by `image_check.check_images`; hidden files and folders are left out."""
    if root is None or not to_path(root).is_dir():
        raise ValueError(f"{setting}={root!r} is not a folder; set {setting} to an image folder root/<class>/*.jpg")
    class_dirs = sorted(
        (path for path in to_path(root).iterdir() if not _hidden(path) and path.is_dir()), key=lambda path: path.name
    )
    if len(class_dirs) < 2:
        raise ValueError(
            f"{setting}={root!r} has {len(class_dirs)} class sub-folders, a classifier needs at least 2; "
            "put each class's images in root/<class>/"
        )
    images = {class_dir: sorted(_images_under(class_dir)) for class_dir in class_dirs}
    for class_dir, paths in images.items():
        if not paths:
            raise ValueError(
                f"{setting}: class folder {str(class_dir)!r} has no {'/'.join(IMAGE_EXTENSIONS)} images "
                "(searched recursively); add images or remove the folder"
            )
    bad = image_check.check_images([path for paths in images.values() for path in paths], setting, skip_bad, offer_skip)
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        good = [path for path in images[class_dir] if path not in bad]
        if not good:
            raise ValueError(
                f"{setting}: class folder {str(class_dir)!r} has no images training can use (all "
                f"{len(images[class_dir])} are left out); add images or remove the folder"
            )
        paths += good
        labels += [label] * len(good)
    class_names = tuple(class_dir.name for class_dir in class_dirs)
    return class_names, np.array(paths), np.array(labels, np.int32)


def _hidden(path: epath.Path) -> bool:
    """Whether a file or folder is hidden (".DS_Store", "._photo.jpg", ".ipynb_checkpoints")."""
    return path.name.startswith(".")


def _images_under(folder: epath.Path) -> list[str]:
    """Paths of the images in `folder` and its sub-folders at any depth, hidden ones left out.

    Names with an image extension count as images without asking the file system (on gs://,
    a request each); only other names are asked whether they are folders.
    """
    images = []
    for path in folder.iterdir():
        if _hidden(path):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(str(path))
        elif path.is_dir():
            images += _images_under(path)
    return images


def _held_out(
    items: np.ndarray, labels: np.ndarray, test_size: int | float
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A fixed stratified (train, test) split, shuffled so every process share mixes classes."""
    train_items, test_items, train_labels, test_labels = model_selection.train_test_split(
        items, labels, test_size=test_size, stratify=labels, random_state=SPLIT_SEED
    )
    return (train_items, train_labels), (test_items, test_labels)


def _array_part(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    load: Callable[[tf.Tensor], tf.Tensor],
    is_train: bool,
    process_index: int,
    process_count: int,
) -> Part:
    """All in-memory training items (see `Part.whole`), or this process's contiguous even share
    of the evaluation items; either way one "file", so each training epoch shuffles all of it."""
    if is_train:
        items, labels = train
        return Part(_in_memory(items, labels), (len(labels),), len(labels), load, whole=True)
    items, labels = test
    bounds = [_even_share(len(labels), index, process_count) for index in range(process_count)]
    start, stop = bounds[process_index]
    max_count = max(end - begin for begin, end in bounds)
    return Part(_in_memory(items[start:stop], labels[start:stop]), (stop - start,), max_count, load)


def _in_memory(items: np.ndarray, labels: np.ndarray) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """`Part.read` of in-memory items, held as one file."""
    # Built once: a pipeline function that captures this dataset, not the arrays, stays small.
    dataset = tf.data.Dataset.from_tensor_slices({"image": items, "label": labels})
    return lambda files: dataset


def _even_share(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of share `index` of `n` items in `count` shares, cut as tfds.even_splits."""
    size, extra = divmod(n, count)
    start = index * size + min(index, extra)
    return start, start + size + int(index < extra)


def _imagenet_augment(spec: DataSpec) -> Augment:
    """ImageNet-style augmentation with the spec's crop area."""
    return Augment(crop_min_area=spec.crop_min_area, flip=True, eval_crop_padding=EVAL_CROP_PADDING)
