"""TF-Slim checkpoints written by TensorFlow with the real names -> Flax, against TF's logits."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import slim_reference as ref  # noqa: E402
from flax.traverse_util import flatten_dict  # noqa: E402
from logit_check import TOLERANCE, flax_logits, max_diff  # noqa: E402

from mobilenet_jax.interop import tf_slim  # noqa: E402
from mobilenet_jax.model import MobileNetV1  # noqa: E402


def images(size: int, seed: int = 0) -> np.ndarray:
    """Two images in TF-Slim's input range [-1, 1]."""
    return np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("alpha, size", [(0.25, 128), (0.5, 160), (1.0, 224)])
def test_checkpoint_matches_tf_slim_logits_through_ema_shadows(tmp_path, alpha, size):
    tensors = ref.with_shadows(ref.random_tensors(alpha, 1001, seed=1), seed=2)
    prefix = ref.save_checkpoint(str(tmp_path / "model.ckpt"), tensors)
    converted = tf_slim.from_tf_slim(prefix)
    assert converted.fields == dict(tf_slim.FIELDS, alpha=alpha, num_classes=1001)
    assert all(name.endswith(tf_slim.EMA_SUFFIX) for name in converted.origin.values())
    x = images(size)
    assert max_diff(converted, x, ref.slim_forward(prefix, x), f"TF-Slim alpha {alpha} size {size}") <= TOLERANCE


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("size", [(64, 64), (64, 96), (97, 97)])
def test_atrous_model_matches_tf_slims_dilated_base(tmp_path, output_stride, size):
    import jax

    prefix = ref.save_checkpoint(str(tmp_path / "model.ckpt"), ref.random_tensors(0.5, 1001, seed=3))
    converted = tf_slim.from_tf_slim(prefix)
    x = np.random.default_rng(4).uniform(-1, 1, (2, *size, 3)).astype(np.float32)
    features = ref.slim_features(prefix, x, output_stride=output_stride)
    reference = ref.slim_forward(prefix, x, output_stride=output_stride)
    for depthwise_impl in ("conv", "shifted"):  # SAME padding of a dilated kernel, in each form
        model = MobileNetV1(**converted.fields, output_stride=output_stride, depthwise_impl=depthwise_impl)
        logits, endpoints = jax.jit(lambda v, x: model.apply(v, x, return_endpoints=True))(converted.variables, x)
        deepest = np.asarray(endpoints[f"stride_{output_stride}"])
        assert deepest.shape == features.shape
        assert np.abs(logits - reference).max() <= TOLERANCE
        assert np.abs(deepest - features).max() <= TOLERANCE


def test_use_ema_false_reads_the_raw_variables_and_true_requires_shadows(tmp_path):
    raw = ref.random_tensors(0.25, 1001, seed=3)
    prefix = ref.save_checkpoint(str(tmp_path / "ema.ckpt"), ref.with_shadows(raw, seed=4))
    converted = tf_slim.from_tf_slim(prefix, use_ema=False)
    assert not any(name.endswith(tf_slim.EMA_SUFFIX) for name in converted.origin.values())
    x = images(128)
    assert np.max(np.abs(flax_logits(converted, x) - ref.slim_forward(prefix, x, use_ema=False))) <= TOLERANCE
    plain = ref.save_checkpoint(str(tmp_path / "plain.ckpt"), raw)
    with pytest.raises(KeyError, match="has no .*/ExponentialMovingAverage.*use_ema=False"):
        tf_slim.from_tf_slim(plain, use_ema=True)


def test_checkpoint_folder_without_classifier_gives_pooled_features(tmp_path):
    prefix = ref.save_checkpoint(str(tmp_path / "base.ckpt"), ref.random_tensors(0.25, 0, seed=5))
    converted = tf_slim.from_tf_slim(tmp_path)
    assert converted.fields["num_classes"] == 0 and converted.fields["alpha"] == 0.25
    x = images(128)
    assert np.max(np.abs(flax_logits(converted, x) - ref.slim_forward(prefix, x))) <= TOLERANCE


def test_mapping_source_equals_checkpoint(tmp_path):
    tensors = ref.random_tensors(0.25, 1001, seed=6)
    from_mapping = tf_slim.from_tf_slim(tensors)
    prefix = ref.save_checkpoint(str(tmp_path / "m.ckpt"), tensors)
    assert from_mapping.fields["alpha"] == 0.25
    x = images(128)
    assert np.max(np.abs(flax_logits(from_mapping, x) - ref.slim_forward(prefix, x))) <= TOLERANCE


def test_missing_and_misshapen_variables_are_named(tmp_path):
    tensors = ref.random_tensors(0.25, 1001, seed=7)
    missing = {k: v for k, v in tensors.items() if k != "MobilenetV1/Conv2d_3_pointwise/weights"}
    with pytest.raises(KeyError, match="MobilenetV1/Conv2d_3_pointwise/weights"):
        tf_slim.from_tf_slim(missing)
    bad = dict(tensors)
    bad["MobilenetV1/Conv2d_5_depthwise/BatchNorm/gamma"] = np.ones(7, np.float32)
    with pytest.raises(ValueError, match=r"Conv2d_5_depthwise/BatchNorm/gamma.*block5/depthwise/bn/scale"):
        tf_slim.from_tf_slim(bad)
    flat = dict(tensors)
    flat["MobilenetV1/Conv2d_0/weights"] = np.ones((27, 8), np.float32)
    with pytest.raises(ValueError, match="Conv2d_0/weights.*rank 4"):
        tf_slim.from_tf_slim(flat)
    with pytest.raises(FileNotFoundError, match="nothing.ckpt.index is missing"):
        tf_slim.from_tf_slim(tmp_path / "nothing.ckpt")


@pytest.mark.parametrize("frozen_from", [*tf_slim.VALUE_SETS, None])
def test_folder_with_a_frozen_graph_converts_it_and_logs_which_checkpoint_values_it_holds(
        tmp_path, caplog, frozen_from):
    raw = ref.random_tensors(0.25, 1001, seed=10)
    checkpoint = ref.with_shadows(raw, seed=11)
    ref.save_checkpoint(str(tmp_path / "mobilenet_v1_0.25_128.ckpt"), checkpoint)
    other = ref.random_tensors(0.25, 1001, seed=12)  # values frozen from neither set
    frozen = {name: checkpoint[name + tf_slim.VALUE_SETS[frozen_from]] if frozen_from else other[name] for name in raw}
    graph = tmp_path / "mobilenet_v1_0.25_128_frozen.pb"
    graph.write_bytes(ref.frozen_graph_def(frozen).SerializeToString())
    caplog.set_level(logging.INFO, logger=tf_slim.__name__)
    converted = tf_slim.from_tf_slim(tmp_path)
    np.testing.assert_equal(flatten_dict(converted.variables), flatten_dict(tf_slim.from_tf_slim(frozen).variables))
    [record] = [r for r in caplog.records if r.getMessage().startswith(f"{graph} holds")]
    expected = f"the {frozen_from} of" if frozen_from else "neither the ExponentialMovingAverage shadows nor the raw"
    assert f"holds {expected}" in record.getMessage()
    assert record.levelno == (logging.INFO if frozen_from else logging.WARNING)
    # Asked for a value set, the folder's checkpoint is read instead of the graph.
    assert all(n.endswith(tf_slim.EMA_SUFFIX) for n in tf_slim.from_tf_slim(tmp_path, use_ema=True).origin.values())


def test_folder_with_two_frozen_graphs_is_refused(tmp_path):
    graph = ref.frozen_graph_def(ref.random_tensors(0.25, 1001, seed=13)).SerializeToString()
    for name in ("mobilenet_v1_0.25_128_frozen.pb", "mobilenet_v1_0.5_128_frozen.pb"):
        (tmp_path / name).write_bytes(graph)
    with pytest.raises(ValueError, match="holds 2 frozen graphs.*pass the .pb to convert"):
        tf_slim.from_tf_slim(tmp_path)


def test_published_archive_is_recognised_extracted_and_converted(tmp_path, monkeypatch):
    import tarfile

    from mobilenet_jax.interop import download, pretrained

    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "mobilenet_v1_0.25_128"
    folder.mkdir()
    tensors = ref.with_shadows(ref.random_tensors(0.25, 1001, seed=8), seed=9)
    prefix = ref.save_checkpoint(str(folder / "mobilenet_v1_0.25_128.ckpt"), tensors)
    archive = tmp_path / "mobilenet_v1_0.25_128.tgz"  # the published archive's name and layout
    with tarfile.open(archive, "w:gz") as tar:
        for path in folder.iterdir():
            tar.add(path, arcname=f"./{path.name}")
    loaded = pretrained.load_pretrained(str(archive))
    assert loaded.preprocessing == pretrained.REGISTRY["mobilenet_v1_025_128.tf_slim"].preprocessing
    assert (loaded.model.alpha, loaded.model.num_classes, loaded.preprocessing.size) == (0.25, 1001, 128)
    x = images(128)
    assert np.max(np.abs(flax_logits(loaded, x) - ref.slim_forward(prefix, x))) <= TOLERANCE
    # Offline, the extracted checkpoint prefix stands in for the published archive.
    from_prefix = pretrained.load_pretrained("mobilenet_v1_025_128.tf_slim", file=prefix)
    np.testing.assert_equal(flatten_dict(from_prefix.variables), flatten_dict(loaded.variables))
