"""The PyTorch reference MobileNet v1 that the Flax model must equal (NCHW, eager PyTorch).

The classic reference: every conv bias-free with BatchNorm (eps 1e-5, momentum 0.1) and ReLU,
padding 1 on both sides at every stride, stride on the depthwise conv, average pool, linear.
Generalised to a width multiplier, any class count, ReLU6 and any input size (a global mean
where the original has `AvgPool2d(7)`: the same at 224).
"""

from __future__ import annotations

import torch
from torch import nn

from mobilenet_jax.model import BLOCKS, STEM_CHANNELS, scaled_channels

TORCH_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


class ConvBNAct(nn.Sequential):
    """Bias-free conv, BatchNorm2d, activation; groups = channels makes it depthwise."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, groups: int, activation: str):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = TORCH_ACTIVATIONS[activation](inplace=True)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 (carrying the stride) then pointwise 1x1, each with BN and activation."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str):
        super().__init__()
        self.depthwise = ConvBNAct(c_in, c_in, 3, stride, c_in, activation)
        self.pointwise = ConvBNAct(c_in, c_out, 1, 1, 1, activation)


class TorchMobileNetV1(nn.Module):
    """MobileNet v1 in PyTorch; `num_classes=0` returns the pooled features."""

    def __init__(
        self,
        num_classes: int = 1000,
        alpha: float = 1.0,
        min_depth: int = 8,
        activation: str = "relu",
        dropout_rate: float = 0.0,
    ):
        super().__init__()
        if activation not in TORCH_ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(TORCH_ACTIVATIONS)}, got {activation!r}")
        channels = scaled_channels(STEM_CHANNELS, alpha, min_depth)
        self.stem = ConvBNAct(3, channels, 3, 2, 1, activation)
        blocks = []
        for out, stride in BLOCKS:
            out = scaled_channels(out, alpha, min_depth)
            blocks.append(DepthwiseSeparable(channels, out, stride, activation))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout_rate)
        self.classifier = nn.Linear(channels, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = x.mean(dim=(2, 3))
        return self.classifier(self.dropout(x))


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Move every BatchNorm's scale, bias, running mean and variance away from their defaults.

    Fresh BatchNorms are an identity in eval mode, which would hide layout or convention errors
    from an equivalence check.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def random_reference(seed: int = 0, **kwargs) -> TorchMobileNetV1:
    """A TorchMobileNetV1 with seeded random weights and randomized BatchNorm (see above)."""
    torch.manual_seed(seed)
    model = TorchMobileNetV1(**kwargs)
    randomize_batchnorm(model, seed)
    return model
