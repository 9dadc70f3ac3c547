"""SavedModel: the images signature equals Flax; the bytes signature applies the eval preprocessing."""

import numpy as np
import pytest
from export_models import CONFIGS, FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax.export.check import fidelity, reference_logits
from mobilenet_jax.export.exporters import load_exported
from mobilenet_jax.data.preprocess import normalize_images, preprocess_for_eval
from mobilenet_jax.export.savedmodel import BYTES_SIGNATURE, export_savedmodel

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def exported(request, tmp_path_factory):
    deployable = realistic_deployable(*request.param)
    path = str(tmp_path_factory.mktemp("savedmodel"))
    export_savedmodel(deployable, path)
    return deployable, path


def test_images_signature_matches_flax(exported):
    deployable, path = exported
    x = images(deployable.image_size, 3)
    outputs = load_exported("savedmodel", path)(x)
    assert fidelity("savedmodel", "float32", reference_logits(deployable, x), outputs, None).max_relative_diff <= (
        FLOAT32_TOLERANCE
    )


def test_bytes_signature_preprocesses_like_the_pipeline(exported):
    deployable, path = exported
    pixels = np.random.default_rng(0).integers(0, 256, (2, 150, 200, 3), dtype=np.uint8)
    encoded = tf.stack([tf.io.encode_png(p) for p in pixels])
    logits = tf.saved_model.load(path).signatures[BYTES_SIGNATURE](encoded=encoded)["logits"].numpy()
    x = normalize_images(np.stack([preprocess_for_eval(tf.constant(p), deployable.image_size) for p in pixels]),
                         deployable.normalization)
    reference = reference_logits(deployable, x)
    assert fidelity("savedmodel", "bytes", reference, logits, None).max_relative_diff <= FLOAT32_TOLERANCE
