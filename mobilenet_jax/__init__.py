"""MobileNet v1 in JAX/Flax, numerically equal to its PyTorch reference.

`import mobilenet_jax` needs only JAX and Flax: PyTorch lives in `mobilenet_jax.interop`,
TensorFlow in `mobilenet_jax.data`; `mobilenet_jax.training` trains, `mobilenet_jax.weights`
reads and writes model files.
"""

from mobilenet_jax.inference import predict
from mobilenet_jax.model import (
    BLOCKS,
    ENDPOINT_BLOCKS,
    VARIANTS,
    MobileNetV1,
    Variant,
    create_model,
    get_variant,
    scaled_channels,
)
from mobilenet_jax.weights import load_model, save_model

__all__ = [
    "BLOCKS",
    "ENDPOINT_BLOCKS",
    "VARIANTS",
    "MobileNetV1",
    "Variant",
    "create_model",
    "get_variant",
    "load_model",
    "predict",
    "save_model",
    "scaled_channels",
]
