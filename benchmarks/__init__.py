"""Side-by-side speed measurements of the Flax model against the PyTorch reference."""
