"""Weights in and out of other frameworks: the PyTorch reference and its converter, the TF-Slim,
Keras and timm converters, and the registry of published ImageNet weights."""
