"""MobileNet v1 in JAX/Flax, numerically equal to its PyTorch reference.

`import mobilenet_jax` needs only JAX and Flax: PyTorch lives in `mobilenet_jax.torch_reference`
and `mobilenet_jax.convert`, TensorFlow in `mobilenet_jax.data`.
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

__all__ = [
    "BLOCKS",
    "ENDPOINT_BLOCKS",
    "VARIANTS",
    "MobileNetV1",
    "Variant",
    "create_model",
    "get_variant",
    "predict",
    "scaled_channels",
]
