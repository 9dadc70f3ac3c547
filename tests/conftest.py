"""Shared fixtures: PyTorch reference models with random, non-trivial weights and statistics."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mobilenet_jax.torch_reference import TorchMobileNetV1  # noqa: E402


def randomize_batchnorm(model: "torch.nn.Module", seed: int) -> None:
    """Move every BatchNorm's scale, bias, running mean and variance away from their defaults."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def make_torch_model(seed: int = 0, **kwargs) -> TorchMobileNetV1:
    """A TorchMobileNetV1 with seeded random weights and perturbed BatchNorm, in float32."""
    torch.manual_seed(seed)
    model = TorchMobileNetV1(**kwargs)
    randomize_batchnorm(model, seed)
    return model


def random_images(seed: int, batch: int, height: int, width: int | None = None) -> np.ndarray:
    """NHWC float32 images with roughly normalised statistics."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, height, width or height, 3), dtype=np.float32)


def to_nchw(images: np.ndarray) -> "torch.Tensor":
    """NHWC numpy images as an NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
