"""Training: one config gate (`config`), the state, the pure train and eval steps, their mapping
over devices (`mesh`), optimizers, checkpoints, metrics, and the loop that ties them together."""

from mobilenet_jax.training.loop import train_and_evaluate  # noqa: F401
