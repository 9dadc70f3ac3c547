"""PyTorch-reference weights to Flax variables and back; the code lives in `mobilenet_jax.interop.torch_weights`."""

from mobilenet_jax.interop.torch_weights import flax_to_torch, infer_model, torch_to_flax  # noqa: F401
