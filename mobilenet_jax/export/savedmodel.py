"""TensorFlow SavedModel export through `jax2tf`, with an image and an encoded-bytes signature.

The folded JAX model is converted with a polymorphic batch dimension. `jax2tf` in this JAX
always serializes natively: the graph holds one `XlaCallModule` op carrying the StableHLO, which
TensorFlow Serving runs and the TFLite converter legalizes into builtin ops.
"""

from __future__ import annotations

from typing import Any

from mobilenet_jax.export.folding import inference_fn
from mobilenet_jax.export.runtime import require
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.export.writer import Kinds

KINDS = Kinds("SavedModel", ("float32",))
IMAGES_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "serving_bytes"


def tf_function(deployable: Deployable, batch_size: int | None = None) -> Any:
    """A `tf.function` computing logits from float32 NHWC images; batch size polymorphic if None."""
    tf = require("tensorflow")
    from jax.experimental import jax2tf

    forward = jax2tf.convert(
        inference_fn(deployable.model, deployable.variables),
        polymorphic_shapes=["(b, ...)"] if batch_size is None else None,
        with_gradient=False,
    )
    size = deployable.image_size
    spec = tf.TensorSpec([batch_size, size, size, 3], tf.float32, name="images")
    return tf.function(forward, input_signature=[spec], autograph=False)


def export_savedmodel(deployable: Deployable, path: str, *, kind: str = "float32", calibration: Any = None) -> None:
    """Write a float32 SavedModel to the directory `path` with two serving signatures.

    "serving_default": `images` float32 [b, S, S, 3], already normalised -> `logits`.
    "serving_bytes": `encoded` string [b] of JPEG/PNG files -> `logits`, each image decoded,
    center-cropped, resized and normalised by the training pipeline's eval preprocessing for
    photographs (`preprocess_for_eval`: crop S / (S + 32) of the shorter side, the deployable's
    normalisation).
    """
    KINDS.check(deployable, kind, calibration)
    tf = require("tensorflow")
    forward = tf_function(deployable)
    preprocess = _preprocessing(deployable)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded")], autograph=False)
    def from_bytes(encoded: Any) -> dict[str, Any]:
        images = tf.map_fn(preprocess, encoded, fn_output_signature=tf.float32)
        return {"logits": forward(images)}

    module = tf.Module()
    module.forward = forward
    module.from_bytes = from_bytes
    signatures = {
        IMAGES_SIGNATURE: tf.function(lambda images: {"logits": forward(images)}, autograph=False)
        .get_concrete_function(forward.input_signature[0]),
        BYTES_SIGNATURE: from_bytes.get_concrete_function(),
    }
    tf.saved_model.save(module, path, signatures=signatures)


def _preprocessing(deployable: Deployable) -> Any:
    """encoded image -> normalised float32 [S, S, 3], exactly as the training pipeline evaluates."""
    from mobilenet_jax.data.preprocess import normalize_images, preprocess_for_eval  # TensorFlow, imported on use

    size, normalization = deployable.image_size, deployable.normalization

    def preprocess(encoded: Any) -> Any:
        return normalize_images(preprocess_for_eval(encoded, size), normalization)

    return preprocess
