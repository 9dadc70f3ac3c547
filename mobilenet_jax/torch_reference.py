"""The PyTorch reference MobileNet v1; the code lives in `mobilenet_jax.interop.torch_reference`."""

from mobilenet_jax.interop.torch_reference import TorchMobileNetV1, random_reference  # noqa: F401
