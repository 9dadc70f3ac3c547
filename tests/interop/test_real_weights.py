"""The real TF-Slim MobileNet v1 1.0-224 ImageNet weights (tests/real_weights.py): the converted
model against TensorFlow running their frozen graph on every photograph scikit-image and
scikit-learn ship, the classify command, and a tarball laid out as TF-Slim publishes one.

The graph is converted once (`real_slim`) and TensorFlow runs once, over one batch of all photos.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

import real_weights  # noqa: E402
import slim_reference as ref  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402

from mobilenet_jax import classify  # noqa: E402
from mobilenet_jax.interop import download, imagenet, pretrained, tf_slim  # noqa: E402
from mobilenet_jax.interop.preprocessing import TF_SLIM  # noqa: E402

# The photographs scikit-image installs with itself (no download), colour then grayscale;
# `cat` is `chelsea` again, `horse` a silhouette and `logo` a drawing.
SKIMAGE_PHOTOS = (
    "astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket",
    "brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text",
)
# Max |logit difference| / max |logit| per photo; measured at most 4.4e-6 (4.8e-5 absolute).
RELATIVE_TOLERANCE = 1e-5
EGYPTIAN_CAT = 286  # of 1001, background first
REGISTERED = "mobilenet_v1_100_224.tf_slim"


def photographs() -> dict[str, np.ndarray]:
    """Every photograph scikit-image ships without a download and scikit-learn's samples, by name."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}
    photos["stereo_motorcycle"] = data.stereo_motorcycle()[0]  # its left view
    samples = load_sample_images()
    photos.update((Path(file).stem, image) for file, image in zip(samples.filenames, samples.images))
    return photos


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return photographs()


@pytest.fixture(scope="module")
def batch(photos) -> np.ndarray:
    return np.stack([TF_SLIM(photo) for photo in photos.values()])


@pytest.fixture(scope="module")
def tf_reference(real_graph, batch) -> np.ndarray:
    return real_weights.tf_logits(real_graph, batch)


_apply = jax.jit(lambda model, variables, images: model.apply(variables, images), static_argnums=0)


def logits(model, variables, images: np.ndarray) -> np.ndarray:
    """The model's logits, compiled once per model configuration and batch shape."""
    return np.asarray(_apply(model, variables, images))


@pytest.fixture(scope="module")
def ours(real_slim, batch) -> np.ndarray:
    return logits(real_slim.model(), real_slim.variables, batch)


def relative_errors(logits_a: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Max |difference| per image, relative to the image's max |reference logit|."""
    return np.abs(logits_a - reference).max(axis=1) / np.abs(reference).max(axis=1)


def test_logits_match_tensorflow_on_every_photograph(photos, ours, tf_reference):
    errors = relative_errors(ours, tf_reference)
    for name, error, row in zip(photos, errors, tf_reference):
        print(f"{name:22s} max |logit| {np.abs(row).max():5.1f}  relative max |diff| {error:.1e}")
    assert len(photos) == 20 and errors.max() <= RELATIVE_TOLERANCE


def test_top1_and_top5_agree_with_tensorflow(photos, ours, tf_reference):
    assert tf_reference[list(photos).index("chelsea")].argmax() == EGYPTIAN_CAT
    np.testing.assert_array_equal(ours.argmax(axis=1), tf_reference.argmax(axis=1))
    top5 = [set(row) for row in np.argsort(-ours, axis=1)[:, :5]]
    assert top5 == [set(row) for row in np.argsort(-tf_reference, axis=1)[:, :5]]


@pytest.mark.parametrize("output_stride,same_top1", [(16, 14), (8, 13)])
def test_the_atrous_network_of_the_real_weights_still_sees_the_cat(photos, real_slim, batch, ours, output_stride,
                                                                   same_top1):
    atrous = logits(real_slim.model().clone(output_stride=output_stride), real_slim.variables, batch)
    assert atrous[list(photos).index("chelsea")].argmax() == EGYPTIAN_CAT
    assert (atrous.argmax(axis=1) == ours.argmax(axis=1)).sum() == same_top1  # of 20; see docs/model.md


def test_classify_names_egyptian_cat_first_for_chelsea(real_graph, photos, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(image)
    assert classify.main([str(image), "--weights", str(real_graph)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image)
    assert lines[1].endswith(imagenet.class_names(1001)[EGYPTIAN_CAT]) and "Egyptian cat" in lines[1]


@pytest.fixture(scope="module")
def published(real_graph, tmp_path_factory) -> Path:
    """`mobilenet_v1_1.0_224.tgz` laid out as published, from the real weights: the checkpoint's
    ExponentialMovingAverage shadows are the frozen graph's values, its raw variables differ."""
    checkpoint = ref.with_shadows(tf_slim.read_frozen_graph(real_graph), seed=0, averaged=True)
    folder = tmp_path_factory.mktemp("published") / "mobilenet_v1_1.0_224"
    return ref.publish(folder, real_graph, checkpoint, real_weights.INPUT.split(":")[0],
                       real_weights.LOGITS.split(":")[0], 224)


def test_published_tarball_loads_its_frozen_graph_by_path_and_registry_name(
        published, real_slim, batch, tf_reference, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    entry = pretrained.REGISTRY[REGISTERED]  # pinned to the real archive: pin this one instead
    pinned = dataclasses.replace(entry, sha256=download.sha256_of(published))
    monkeypatch.setitem(pretrained.REGISTRY, REGISTERED, pinned)
    caplog.set_level(logging.INFO, logger=tf_slim.__name__)
    expected = flatten_dict(real_slim.variables)
    for loaded in (pretrained.load_pretrained(published), pretrained.load_pretrained(REGISTERED, file=published)):
        assert loaded.preprocessing == entry.preprocessing and loaded.model == real_slim.model()
        np.testing.assert_equal(flatten_dict(loaded.variables), expected)
        assert relative_errors(logits(loaded.model, loaded.variables, batch), tf_reference).max() <= RELATIVE_TOLERANCE
    messages = [r.getMessage() for r in caplog.records if "_frozen.pb holds" in r.getMessage()]
    assert len(messages) == 2 and all("holds the ExponentialMovingAverage shadows of checkpoint" in m for m in messages)


def test_published_checkpoint_shadows_are_the_frozen_graph_and_raw_variables_differ(published, real_slim):
    folder = published.with_suffix("")
    shadows = tf_slim.from_tf_slim(folder, use_ema=True)
    np.testing.assert_equal(flatten_dict(shadows.variables), flatten_dict(real_slim.variables))
    raw = flatten_dict(tf_slim.from_tf_slim(folder, use_ema=False).variables)
    assert not any(np.array_equal(raw[key], value) for key, value in flatten_dict(real_slim.variables).items())
