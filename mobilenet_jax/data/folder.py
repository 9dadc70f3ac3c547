"""An image folder (`root/<class>/**/*.jpg|jpeg|png`, local or gs://) as a `Source`: classes
found, every image checked once before training starts, a held-out or separate eval folder."""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from etils import epath
from sklearn import utils as sklearn_utils

from mobilenet_jax.data import image_check
from mobilenet_jax.data.in_memory import SPLIT_SEED, array_part, held_out
from mobilenet_jax.data.protocol import Settings, Source, imagenet_augment
from mobilenet_jax.data.spec import DatasetInfo, DataSpec
from mobilenet_jax.paths import to_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def folder_source(spec: DataSpec, settings: Settings) -> Source:
    """`root/<class>/**/*.jpg|jpeg|png`, classes numbered in sorted folder-name order, every image
    checked before training starts (see `image_check`)."""
    train_dir = spec.folder_train_dir
    class_names, paths, labels = _scan_folder(
        train_dir, settings.folder_train_dir, spec.skip_bad_images, settings.config_fixes
    )
    eval_dir = spec.folder_eval_dir
    if eval_dir is None:
        fraction = spec.folder_eval_fraction
        try:
            train, test = held_out(paths, labels, fraction)
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
    part = functools.partial(array_part, train, test, tf.io.read_file)
    return Source(info, imagenet_augment(spec), part)


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
