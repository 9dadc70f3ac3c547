"""Model files written by a training run: `load_variables` here, the rest in `mobilenet_jax.weights`."""

from mobilenet_jax.weights import load_model, load_variables  # noqa: F401
