"""Developer commands: `python -m mobilenet_jax.tools.equivalence` (agreement with PyTorch)."""
