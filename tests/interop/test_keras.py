"""keras.applications.MobileNet weights (random, BatchNorm perturbed) -> Flax, against Keras."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from flax.traverse_util import flatten_dict  # noqa: E402
from logit_check import TOLERANCE, flax_logits, max_diff  # noqa: E402

from mobilenet_jax.interop import keras as keras_interop  # noqa: E402


def keras_mobilenet(alpha: float, size: int, seed: int, **kwargs) -> "keras.Model":
    """A Keras MobileNet returning logits, with random BatchNorm statistics and affine terms."""
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNet(
        weights=None, alpha=alpha, input_shape=(size, size, 3), classifier_activation=None, **kwargs
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c),
                               rng.uniform(0.5, 2.0, c)])
        elif layer.name == "conv_preds":
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    return model


def images(size: int) -> np.ndarray:
    """Two images in Keras MobileNet's input range [-1, 1]."""
    return np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def save_published_layout(model: "keras.Model", path: str) -> str:
    """The published files' layout: Keras 2 weights-only HDF5 (`layer_names` at the root)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def renamed_as_keras2(path: str, copy: str) -> str:
    """A copy of a weights-only file with Keras 2's weight names, as in the published files:
    "conv_dw_1/depthwise_kernel:0" for "conv_dw_1/kernel", and ":0" on every name."""
    import shutil

    import h5py

    shutil.copy(path, copy)
    with h5py.File(copy, "a") as f:
        for layer in f.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            group, renamed = f[layer], []
            for name in group.attrs["weight_names"]:
                name = name.decode() if isinstance(name, bytes) else str(name)
                short = name.split("/")[-1]
                if layer.startswith("conv_dw_") and short == "kernel":
                    short = "depthwise_kernel"
                group.move(name, f"{layer}/{short}:0")
                renamed.append(f"{layer}/{short}:0".encode())
            if renamed:
                group.attrs["weight_names"] = np.array(renamed)
    return copy


@pytest.mark.parametrize("alpha, size", [(0.25, 128), (0.5, 160), (1.0, 224)])
def test_h5_files_match_keras_logits(tmp_path, alpha, size):
    model = keras_mobilenet(alpha, size, seed=1)
    x = images(size)
    reference = np.asarray(model(x, training=False))
    model.save(tmp_path / "model.h5")
    model.save_weights(tmp_path / "model.weights.h5")
    published = save_published_layout(model, str(tmp_path / "published.h5"))
    sources = [str(tmp_path / "model.h5"), str(tmp_path / "model.weights.h5"), published,
               renamed_as_keras2(published, str(tmp_path / "keras2.h5")), model]
    converted = [keras_interop.from_keras(source) for source in sources]
    assert converted[0].fields == dict(keras_interop.FIELDS, alpha=alpha, num_classes=1000)
    assert max_diff(converted[0], x, reference, f"Keras alpha {alpha} size {size}") <= TOLERANCE
    for other in converted[1:]:  # every layout gives the same variables
        np.testing.assert_equal(flatten_dict(other.variables), flatten_dict(converted[0].variables))


def test_no_top_weights_at_an_alpha_below_the_width_floor_give_pooled_features(tmp_path):
    # int(32 * 0.2) = 6 channels in the stem: Keras has no floor of 8, the converter sets min_depth=1.
    model = keras_mobilenet(0.2, 96, seed=2, include_top=False, pooling="avg")
    x = images(96)
    model.save_weights(tmp_path / "notop.weights.h5")
    converted = keras_interop.from_keras(tmp_path / "notop.weights.h5")
    assert converted.fields["num_classes"] == 0 and converted.variables["params"]["stem"]["conv"]["kernel"].shape[-1] == 6
    assert max_diff(converted, x, np.asarray(model(x, training=False)), "Keras no-top alpha 0.2 size 96") <= TOLERANCE


def test_sizes_where_keras_padding_differs_from_same_are_refused(tmp_path):
    assert [s for s in (96, 100, 127, 128, 224, 225) if keras_interop.keras_size_matches(s)] == [96, 127, 128, 224]
    model = keras_mobilenet(0.25, 100, seed=3)
    with pytest.raises(ValueError, match="input size 100 .* multiple of 32"):
        keras_interop.from_keras(model)
    # The refusal is needed: at 100 the same weights under TF SAME padding give other logits.
    model.save_weights(tmp_path / "at100.weights.h5")
    converted = keras_interop.from_keras(tmp_path / "at100.weights.h5")
    x = images(100)
    assert np.max(np.abs(flax_logits(converted, x) - np.asarray(model(x, training=False)))) > 10 * TOLERANCE


def test_missing_layer_weight_is_named(tmp_path):
    import h5py

    model = keras_mobilenet(0.25, 128, seed=4)
    path = str(tmp_path / "broken.h5")
    save_published_layout(model, path)
    with h5py.File(path, "a") as f:
        del f["conv_pw_3"]["conv_pw_3"]
        f["conv_pw_3"].attrs["weight_names"] = np.array([], dtype="S1")
    with pytest.raises(KeyError, match="conv_pw_3/kernel"):
        keras_interop.from_keras(path)
    with pytest.raises(ValueError, match="neither a Keras 2 weights file"):
        with h5py.File(tmp_path / "empty.h5", "w"):
            pass
        keras_interop.from_keras(tmp_path / "empty.h5")


def test_published_file_name_selects_its_registry_entry(tmp_path):
    from mobilenet_jax.interop import pretrained

    model = keras_mobilenet(0.25, 128, seed=5)
    path = save_published_layout(model, str(tmp_path / "mobilenet_2_5_128_tf.h5"))
    loaded = pretrained.load_pretrained(path)
    assert loaded.preprocessing == pretrained.REGISTRY["mobilenet_v1_025_128.keras"].preprocessing
    x = images(128)
    assert np.max(np.abs(flax_logits(loaded, x) - np.asarray(model(x, training=False)))) <= TOLERANCE


def test_a_file_that_is_not_hdf5_is_named(tmp_path):
    path = tmp_path / "mobilenet.h5"
    path.write_text("not HDF5")
    with pytest.raises(ValueError, match=f"{path} is not an HDF5 file h5py can read \\(.*signature not found.*\\); "
                                         "pass a Keras .h5 weights file"):
        keras_interop.from_keras(path)
    with pytest.raises(FileNotFoundError, match=f"Keras weights file {tmp_path / 'gone.h5'} does not exist"):
        keras_interop.from_keras(tmp_path / "gone.h5")
