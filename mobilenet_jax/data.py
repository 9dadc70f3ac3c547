"""Input pipelines: TFDS datasets, a folder of images and the offline digits set, as numpy batches.

The only module of the package that imports TensorFlow. Every source goes through the same
tf.data pipeline, so batching, per-process sharding, padded evaluation, seeding and resume are
written once:

- Each process yields batches of `batch_size // process_count`, its slice of the global batch.
- TFDS training data: each process reads its own even share of the split (the
  `tfds.even_splits` rule: the first `n % process_count` processes hold one extra example), so
  no file is read twice, and global batches depend on the process count.
- In-memory training data (digits, image folders): every process walks the same global stream
  and keeps its slice of each global batch (reading only those images), so global batches are
  the same for any process count: a run on 2 hosts x 2 devices sees what 1 host x 4 devices sees.
- Training repeats forever. Epoch `e` is the stream's records shuffled with a seed drawn from
  (seed, e), and the augmentation of the example at stream position `i` is keyed by
  (seed, stream, i) (stream: the process index for per-process shares, else 0), so any step can
  be rebuilt without replaying the ones before it.
- Evaluation is finite, sees every example of the split exactly once across all processes, and
  pads with masked zeros so every process yields the same number of equally shaped batches.

Images are resized bilinearly with antialiasing (the torchvision / PIL behaviour), for training
and evaluation alike.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets
from sklearn import model_selection
from sklearn import utils as sklearn_utils

MIN_IMAGE_SIZE = 32
# Eval crop side = image_size / (image_size + 32) of the shorter side: 0.875 at 224.
EVAL_CROP_PADDING = 32
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_MAX_ATTEMPTS = 10
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Held-out splits use their own fixed seed so the test set never moves with the training seed.
SPLIT_SEED = 0
DIGITS_NUM_TEST = 360
# Digits fill their 8x8 frame: crop mildly, never flip, evaluate on the whole image.
DIGITS_CROP_MIN_AREA = 0.6

_RGB_MEAN_STD = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "inception": ((127.5,) * 3, (127.5,) * 3),
    # timm's mean = std = 0.5 on [0, 1] is the same map as inception's x / 127.5 - 1.
    "half": ((127.5,) * 3, (127.5,) * 3),
}

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Sizes and class names of a dataset's train and eval splits (whole splits, all processes)."""

    num_classes: int
    num_train_examples: int
    num_eval_examples: int
    class_names: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class _Augment:
    """How a source's images are cropped; everything else is shared by all sources."""

    crop_min_area: float
    flip: bool
    eval_crop_padding: int


@dataclasses.dataclass(frozen=True)
class _Part:
    """One process's share of a split, before shuffling and preprocessing."""

    records: tf.data.Dataset  # {"image", "label": int32} in a fixed order
    count: int  # examples in this process's share
    max_count: int  # examples in the largest share of any process
    load: Callable[[tf.Tensor], tf.Tensor]  # record image -> encoded bytes or an HWC tensor
    shuffle_buffer: int
    # The whole split for every process, which keeps its slice of each global batch.
    whole: bool = False


@dataclasses.dataclass(frozen=True)
class _Source:
    """A dataset opened and checked, ready to hand out per-process parts of its splits."""

    info: DatasetInfo
    augment: _Augment
    part: Callable[..., _Part]  # (train, process_index, process_count, seed) -> _Part


# ---------------------------------------------------------------------------------------------
# Preprocessing of single images.


def normalize_images(images: Any, convention: str) -> Any:
    """Maps 0..255 RGB images (numpy, JAX or TF; uint8 or float) to the model's input range."""
    mean, std = _mean_std(convention)
    if isinstance(images, tf.Tensor):
        images = tf.cast(images, tf.float32)
    else:
        images = np.asarray(images, np.float32)
    return (images - mean) / std


def preprocess_for_train(
    image: tf.Tensor,
    rng_seed: tf.Tensor,
    image_size: int,
    *,
    crop_min_area: float = 0.08,
    flip: bool = True,
    crop_padding: int = EVAL_CROP_PADDING,
    normalization: str = "imagenet",
) -> tf.Tensor:
    """Inception-style random crop (fused with JPEG decoding), flip, resize, normalise.

    `image` is an encoded image string (JPEG decodes only the crop; PNG and others decode fully)
    or a decoded HWC tensor. `rng_seed` is a stateless seed of shape [2]: the output is a pure
    function of it. When no crop in the area range fits, the eval center crop (`crop_padding`,
    see preprocess_for_eval) is used instead.
    """
    _hide_accelerators()
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(rng_seed, 2))
    window_fn = functools.partial(
        _random_crop_window,
        seed=crop_seed,
        min_area=crop_min_area,
        image_size=image_size,
        crop_padding=crop_padding,
    )
    image = _resize(_crop(image, window_fn), image_size)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return normalize_images(image, normalization)


def preprocess_for_eval(
    image: tf.Tensor,
    image_size: int,
    *,
    crop_padding: int = EVAL_CROP_PADDING,
    normalization: str = "imagenet",
) -> tf.Tensor:
    """Center crop of image_size / (image_size + crop_padding) of the shorter side, resized."""
    _hide_accelerators()
    window_fn = functools.partial(
        _center_crop_window, image_size=image_size, crop_padding=crop_padding
    )
    return normalize_images(_resize(_crop(image, window_fn), image_size), normalization)


def _crop(image: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Crops an encoded or decoded image to the [y, x, height, width] that window_fn picks."""
    if image.dtype != tf.string:
        y, x, height, width = tf.unstack(window_fn(tf.shape(image)))
        return tf.slice(image, [y, x, 0], [height, width, -1])

    def jpeg() -> tf.Tensor:
        window = window_fn(tf.image.extract_jpeg_shape(image))
        return tf.image.decode_and_crop_jpeg(image, window, channels=3)

    def other() -> tf.Tensor:
        decoded = tf.io.decode_image(image, channels=3, expand_animations=False)
        return _crop(decoded, window_fn)

    return tf.cond(tf.io.is_jpeg(image), jpeg, other)


def _center_crop_window(shape: tf.Tensor, image_size: int, crop_padding: int) -> tf.Tensor:
    """The centered square [y, x, side, side], side = shorter * image_size / (size + padding)."""
    height, width = shape[0], shape[1]
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    side = tf.cast(image_size / (image_size + crop_padding) * shorter, tf.int32)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _random_crop_window(
    shape: tf.Tensor, seed: tf.Tensor, min_area: float, image_size: int, crop_padding: int
) -> tf.Tensor:
    """A random window of area in (min_area, 1) and aspect in (3/4, 4/3), else the eval crop."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RANGE,
        area_range=(min_area, 1.0),
        max_attempts=CROP_MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    # The op answers with the whole image when all attempts miss.
    missed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    sampled = tf.concat([begin[:2], size[:2]], axis=0)
    return tf.cond(
        missed, lambda: _center_crop_window(shape, image_size, crop_padding), lambda: sampled
    )


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear antialiased resize to a float32 [image_size, image_size, 3] image."""
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(resized, [image_size, image_size, 3])


# ---------------------------------------------------------------------------------------------
# Public entry points.


def get_dataset_info(config: Any) -> DatasetInfo:
    """Class count, split sizes and class names of `config.dataset`, without reading images."""
    return _open_source(config).info


def create_train_iterator(
    config: Any, *, seed: int, process_index: int, process_count: int, start_step: int = 0
) -> Iterator[Batch]:
    """Endless augmented batches {"image": f32 [B, S, S, 3], "label": i32 [B]} for this process.

    B = config.batch_size // process_count. The stream is a function of `seed` alone, and
    `start_step=k` yields exactly what a fresh iterator yields after k batches. Resuming costs
    reading (not decoding) at most one epoch of this process's records, to refill the shuffle.
    """
    local_batch = _local_batch_size(config.batch_size, process_count, "batch_size")
    _check_process_index(process_index, process_count)
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    source = _open_source(config)
    part = source.part(True, process_index, process_count, seed)
    if part.count == 0:
        raise ValueError(
            f"process {process_index} of {process_count} got no training examples: the train "
            f"split has too few for {process_count} processes; use a larger split"
        )
    examples, stream = _train_stream(part, config, seed, process_index, local_batch, start_step)
    example_seed = tf.constant([seed, stream], tf.int64)
    augment = source.augment

    def train_example(index: tf.Tensor, record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = preprocess_for_train(
            part.load(record["image"]),
            tf.random.experimental.stateless_fold_in(example_seed, index),
            config.image_size,
            crop_min_area=augment.crop_min_area,
            flip=augment.flip,
            crop_padding=augment.eval_crop_padding,
            normalization=config.normalization,
        )
        return {"image": image, "label": record["label"]}

    batches = examples.map(train_example, num_parallel_calls=tf.data.AUTOTUNE)
    return _as_numpy(batches.batch(local_batch, drop_remainder=True), config)


def create_eval_iterator(config: Any, *, process_index: int, process_count: int) -> Iterator[Batch]:
    """One pass over the eval split: {"image", "label", "mask": bool [B]} batches, padded.

    B = config.eval_batch_size // process_count. Every process yields the same number of
    batches; padding examples are zero images with label 0 and mask False, so the True masks of
    all processes together count each example of the split exactly once.
    """
    local_batch = _local_batch_size(config.eval_batch_size, process_count, "eval_batch_size")
    _check_process_index(process_index, process_count)
    source = _open_source(config)
    part = source.part(False, process_index, process_count, None)
    size = config.image_size

    def eval_example(record: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = preprocess_for_eval(
            part.load(record["image"]),
            size,
            crop_padding=source.augment.eval_crop_padding,
            normalization=config.normalization,
        )
        return {"image": image, "label": record["label"], "mask": tf.constant(True)}

    num_batches = -(-part.max_count // local_batch)
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros([size, size, 3], tf.float32),
            "label": tf.constant(0, tf.int32),
            "mask": tf.constant(False),
        }
    ).repeat(num_batches * local_batch - part.count)
    examples = part.records.map(eval_example, num_parallel_calls=tf.data.AUTOTUNE)
    batches = examples.concatenate(padding).batch(local_batch, drop_remainder=True)
    return _as_numpy(batches, config)


def _train_stream(
    part: _Part, config: Any, seed: int, process_index: int, local_batch: int, start_step: int
) -> tuple[tf.data.Dataset, int]:
    """This process's (stream position, record) pairs from step `start_step`, and the stream id."""
    cache = config.get("cache", False)
    if not part.whole:
        return _epochs(part, seed, start_step * local_batch, cache), process_index
    examples = _epochs(part, seed, start_step * config.batch_size, cache)
    # Filtering before decoding: each process decodes only its own slice.
    mine = examples.filter(lambda index, _: index % config.batch_size // local_batch == process_index)
    return mine, 0


def _epochs(part: _Part, seed: int, start: int, cache: bool) -> tf.data.Dataset:
    """Endless (global index, record) pairs, one freshly seeded shuffle per epoch, from `start`."""
    records = part.records.cache() if cache else part.records
    first_epoch, offset = divmod(start, part.count)

    def epoch(index: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = tf.random.stateless_uniform(
            [], seed=tf.stack([tf.constant(seed, tf.int64), index]), minval=None, dtype=tf.int64
        )
        return records.shuffle(part.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)

    examples = tf.data.Dataset.counter(first_epoch).flat_map(epoch)
    # Skipping before decoding keeps a resume cheap: skipped records are read, never decoded.
    return examples.enumerate(start=first_epoch * part.count).skip(offset)


def _as_numpy(batches: tf.data.Dataset, config: Any) -> Iterator[Batch]:
    """Deterministic, prefetched numpy iterator over `batches`."""
    options = tf.data.Options()
    options.deterministic = True
    # Parallel map already fills the cores; intra-op threads would only contend with it.
    options.threading.max_intra_op_parallelism = 1
    prefetch = config.get("prefetch", None) or tf.data.AUTOTUNE
    return iter(tfds.as_numpy(batches.with_options(options).prefetch(prefetch)))


# ---------------------------------------------------------------------------------------------
# Sources.


def _open_source(config: Any) -> _Source:
    """Checks the config and opens its dataset's metadata (no images are read)."""
    _hide_accelerators()
    _check_image_size(config.image_size)
    _mean_std(config.normalization)
    if config.dataset == "digits":
        return _digits_source(config.image_size)
    if config.dataset == "folder":
        return _folder_source(config)
    return _tfds_source(config)


def _tfds_source(config: Any) -> _Source:
    """A TFDS image-classification dataset, read undecoded so decoding can fuse with the crop."""
    builder = _tfds_builder(config.dataset, config.get("data_dir", None))
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    if not isinstance(builder.info.features[image_key], tfds.features.Image):
        raise ValueError(
            f"config.dataset={config.dataset!r} has no image feature {image_key!r}; "
            "use an image-classification dataset"
        )
    labels = builder.info.features[label_key]
    train_split = config.get("train_split", "train")
    eval_split = config.get("eval_split", "validation")
    info = DatasetInfo(
        num_classes=labels.num_classes,
        num_train_examples=_tfds_split_size(builder, train_split),
        num_eval_examples=_tfds_split_size(builder, eval_split),
        class_names=tuple(labels.names),
    )
    shuffle_buffer = config.get("shuffle_buffer", 16_384)
    if shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")

    def part(train: bool, process_index: int, process_count: int, seed: int | None) -> _Part:
        shares = tfds.even_splits(train_split if train else eval_split, process_count)
        counts = [builder.info.splits[share].num_examples for share in shares]
        dataset = builder.as_dataset(
            split=shares[process_index],
            decoders={image_key: tfds.decode.SkipDecoding()},
            shuffle_files=train,
            read_config=tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False),
        )
        records = dataset.map(
            lambda ex: {"image": ex[image_key], "label": tf.cast(ex[label_key], tf.int32)}
        )
        return _Part(records, counts[process_index], max(counts), tf.identity, shuffle_buffer)

    return _Source(info, _augment_from_config(config), part)


def _tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The builder of a prepared TFDS dataset, or a ValueError saying how to get one."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(
            f"config.dataset={name!r} is not a known dataset: use 'digits', 'folder' or a TFDS "
            "image-classification name such as 'imagenet2012' or 'cifar10'"
        ) from error
    if not builder.info.splits:
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}: prepare it with "
            f"`tfds build {name} --data_dir=...` (imagenet2012 needs its archives in "
            "<data_dir>/downloads/manual) and point config.data_dir at that folder"
        )
    return builder


def _tfds_split_size(builder: tfds.core.DatasetBuilder, split: str) -> int:
    """Number of examples in a TFDS split string, or a ValueError listing the splits."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"split {split!r} is not in {builder.name}: use one of {sorted(builder.info.splits)} "
            "or a slice of them such as 'train[:90%]'"
        ) from error


def _digits_source(image_size: int) -> _Source:
    """scikit-learn's 1,797 8x8 digits with a fixed stratified test set of 360."""
    train, test = _digits_arrays()
    info = DatasetInfo(
        num_classes=10,
        num_train_examples=len(train[1]),
        num_eval_examples=len(test[1]),
        class_names=tuple(str(digit) for digit in range(10)),
    )
    augment = _Augment(crop_min_area=DIGITS_CROP_MIN_AREA, flip=False, eval_crop_padding=0)
    load = functools.partial(_upsample_gray, image_size=image_size)
    return _Source(info, augment, functools.partial(_array_part, train, test, load))


@functools.cache
def _digits_arrays() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)): uint8 [N, 8, 8, 1] in 0..255, int32."""
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return _held_out(images, digits.target.astype(np.int32), DIGITS_NUM_TEST)


def _upsample_gray(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """A small grayscale image as float32 RGB, upsampled bilinearly to the model resolution."""
    # Upsampling before the crop keeps crop offsets finer than the 8x8 pixel grid.
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear")
    return tf.image.grayscale_to_rgb(resized)


def _folder_source(config: Any) -> _Source:
    """`root/<class>/*.jpg|jpeg|png`, classes numbered in sorted folder-name order."""
    train_dir = config.get("folder_train_dir", None)
    class_names, paths, labels = _scan_folder(train_dir, "folder_train_dir")
    eval_dir = config.get("folder_eval_dir", None)
    if eval_dir is None:
        fraction = config.get("folder_eval_fraction", 0.1)
        if not 0 < fraction < 1:
            raise ValueError(
                f"folder_eval_fraction must be in (0, 1), got {fraction}; or set folder_eval_dir"
            )
        try:
            train, test = _held_out(paths, labels, fraction)
        except ValueError as error:
            raise ValueError(
                f"cannot hold out folder_eval_fraction={fraction} of {train_dir} per class "
                f"({error}); add images or set folder_eval_dir"
            ) from error
    else:
        eval_names, eval_paths, eval_labels = _scan_folder(eval_dir, "folder_eval_dir")
        if eval_names != class_names:
            raise ValueError(
                f"folder_eval_dir classes {eval_names} differ from folder_train_dir classes "
                f"{class_names}; give both folders the same class sub-folders"
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
    return _Source(info, _augment_from_config(config), part)


def _scan_folder(root: str | None, field: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """(class names, image paths, int32 labels) of a class-per-sub-folder image folder."""
    if root is None or not pathlib.Path(root).is_dir():
        raise ValueError(f"{field}={root!r} is not a folder; set config.{field} to an image folder")
    class_dirs = sorted(path for path in pathlib.Path(root).iterdir() if path.is_dir())
    if not class_dirs:
        raise ValueError(f"{field}={root!r} has no class sub-folders; put images in root/<class>/")
    paths, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        images = sorted(
            str(path) for path in class_dir.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not images:
            raise ValueError(
                f"class folder {str(class_dir)!r} has no {'/'.join(IMAGE_EXTENSIONS)} images; "
                "add images or remove the folder"
            )
        paths += images
        labels += [label] * len(images)
    class_names = tuple(class_dir.name for class_dir in class_dirs)
    return class_names, np.array(paths), np.array(labels, np.int32)


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
    seed: int | None,
) -> _Part:
    """All in-memory training items (see `_Part.whole`), or this process's contiguous even share
    of the evaluation items."""
    del seed  # In-memory items have no file order to shuffle.
    if is_train:
        items, labels = train
        count = len(labels)
        records = tf.data.Dataset.from_tensor_slices({"image": items, "label": labels})
        return _Part(records, count, count, load, shuffle_buffer=max(count, 1), whole=True)
    items, labels = test
    bounds = [_even_share(len(labels), index, process_count) for index in range(process_count)]
    start, stop = bounds[process_index]
    records = tf.data.Dataset.from_tensor_slices(
        {"image": items[start:stop], "label": labels[start:stop]}
    )
    count = stop - start
    max_count = max(end - begin for begin, end in bounds)
    return _Part(records, count, max_count, load, shuffle_buffer=max(count, 1))


def _even_share(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of share `index` of `n` items in `count` shares, cut as tfds.even_splits."""
    size, extra = divmod(n, count)
    start = index * size + min(index, extra)
    return start, start + size + int(index < extra)


# ---------------------------------------------------------------------------------------------
# Checks and settings.


def _augment_from_config(config: Any) -> _Augment:
    """ImageNet-style augmentation with the config's crop area."""
    crop_min_area = config.get("crop_min_area", 0.08)
    if not 0 < crop_min_area <= 1:
        raise ValueError(f"crop_min_area must be in (0, 1], got {crop_min_area}")
    return _Augment(crop_min_area=crop_min_area, flip=True, eval_crop_padding=EVAL_CROP_PADDING)


def _mean_std(convention: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std on the 0..255 scale for a normalisation convention."""
    if convention not in _RGB_MEAN_STD:
        raise ValueError(
            f"normalization must be one of {sorted(_RGB_MEAN_STD)}, got {convention!r}"
        )
    mean, std = _RGB_MEAN_STD[convention]
    return np.array(mean, np.float32), np.array(std, np.float32)


def _check_image_size(image_size: int) -> None:
    """Rejects resolutions the network cannot take."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be >= {MIN_IMAGE_SIZE} (MobileNet downsamples 32x), got "
            f"{image_size}; raise config.image_size"
        )


def _local_batch_size(global_batch: int, process_count: int, field: str) -> int:
    """Per-process batch size, or a ValueError when the global batch does not divide evenly."""
    if global_batch < process_count or global_batch % process_count:
        raise ValueError(
            f"{field}={global_batch} must be a positive multiple of process_count={process_count}; "
            f"use e.g. {field}={max(1, round(global_batch / process_count)) * process_count}"
        )
    return global_batch // process_count


def _check_process_index(process_index: int, process_count: int) -> None:
    """Rejects a process index outside [0, process_count)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")


@functools.cache
def _hide_accelerators() -> None:
    """Keeps TensorFlow off GPUs and TPUs, whose memory belongs to JAX."""
    for kind in ("GPU", "TPU"):
        if not tf.config.list_physical_devices(kind):
            continue
        try:
            tf.config.set_visible_devices([], kind)
        except RuntimeError:
            logging.warning(
                "TensorFlow was initialised before the data pipeline and may hold %s memory; "
                "build the data iterators before other TensorFlow use (e.g. summary writers)",
                kind,
            )
