"""Deployment: StableHLO, SavedModel, TFLite/LiteRT and ONNX exports of the folded model; int8.

    from mobilenet_jax.export import export, load_exported
    export("runs/digits", "tflite", "digits.tflite", kind="int8", calibration="digits")
    logits = load_exported("tflite", "digits.tflite")(images)

Importing this package needs only JAX: each format imports its framework when it runs.
"""

from mobilenet_jax.export.exporters import FORMATS, export, get_format, load_exported
from mobilenet_jax.export.folding import fold_batchnorm, folded_forward, inference_fn
from mobilenet_jax.export.quantize import int8_inference_fn
from mobilenet_jax.export.runtime import MissingRuntimeError
from mobilenet_jax.export.source import Deployable, load_weights

__all__ = [
    "FORMATS",
    "Deployable",
    "MissingRuntimeError",
    "export",
    "fold_batchnorm",
    "folded_forward",
    "get_format",
    "inference_fn",
    "int8_inference_fn",
    "load_exported",
    "load_weights",
]
