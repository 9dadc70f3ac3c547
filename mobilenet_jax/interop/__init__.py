"""Weights in and out of other frameworks: converters, and the registry of pretrained weights."""
