"""Weights in and out of other frameworks: the PyTorch reference model and its converter."""
