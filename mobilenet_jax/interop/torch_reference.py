"""The PyTorch reference MobileNet v1 that the Flax model must equal (NCHW, eager PyTorch).

The classic reference: every conv bias-free with BatchNorm (eps 1e-5, momentum 0.1) and ReLU,
padding 1 on both sides at every stride, stride on the depthwise conv, average pool, linear.
Generalised to a width multiplier, any class count, ReLU6, any BatchNorm epsilon, TensorFlow's
SAME padding (as TF-Slim and Keras weights need), any input size (a global mean where the
original has `AvgPool2d(7)`: the same at 224) and output stride 16 or 8, dilated as timm's
`mobilenetv1_100(output_stride=...)` is (`nn.Conv2d(dilation=d, padding=d)` on the torch padding).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mobilenet_jax.choices import check_choice
from mobilenet_jax.model import BLOCKS, OUTPUT_STRIDES, STEM_CHANNELS, block_geometry, scaled_channels
from mobilenet_jax.ops.conv import PADDINGS, conv_padding

TORCH_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


class SameConv2d(nn.Conv2d):
    """An unpadded nn.Conv2d that first pads its input by TensorFlow's SAME rule for that input's
    size and the conv's dilation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size, kernel, stride, dilation = tuple(x.shape[2:]), self.kernel_size[0], self.stride[0], self.dilation[0]
        (top, bottom), (left, right) = conv_padding(size, kernel, stride, "same", dilation)
        return super().forward(F.pad(x, (left, right, top, bottom)))


class ConvBNAct(nn.Sequential):
    """Bias-free conv, BatchNorm2d, activation; groups = channels makes it depthwise."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, groups: int,
        activation: str, padding: str, bn_epsilon: float, dilation: int = 1,
    ):
        super().__init__()
        conv = dict(groups=groups, dilation=dilation, bias=False)
        if padding == "same" and kernel > 1:  # a 1x1 conv pads nothing under either rule
            self.conv = SameConv2d(c_in, c_out, kernel, stride, **conv)
        else:
            self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=dilation * (kernel // 2), **conv)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_epsilon)
        self.act = TORCH_ACTIVATIONS[activation](inplace=True)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 (carrying the stride and dilation) then pointwise 1x1; `layer` builds each ConvBNAct."""

    def __init__(self, c_in: int, c_out: int, stride: int, dilation: int, layer: Callable[..., ConvBNAct]):
        super().__init__()
        self.depthwise = layer(c_in, c_in, 3, stride, c_in, dilation=dilation)
        self.pointwise = layer(c_in, c_out, 1, 1, 1)


class TorchMobileNetV1(nn.Module):
    """MobileNet v1 in PyTorch; `num_classes=0` returns the pooled features.

    `padding` "torch" pads every 3x3 conv (1, 1); "same" follows TensorFlow's SAME rule for each
    input's size (stride 2 on an even size: (0, 1)), like MobileNetV1(padding="same").
    `output_stride` 16 or 8 dilates the depthwise convs by `model.block_geometry`'s rule.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        alpha: float = 1.0,
        min_depth: int = 8,
        activation: str = "relu",
        dropout_rate: float = 0.0,
        padding: str = "torch",
        bn_epsilon: float = 1e-5,
        output_stride: int | None = None,
    ):
        super().__init__()
        check_choice("activation", activation, tuple(TORCH_ACTIVATIONS))
        check_choice("output_stride", output_stride, OUTPUT_STRIDES)
        layer = functools.partial(
            ConvBNAct, activation=activation, padding=check_choice("padding", padding, PADDINGS), bn_epsilon=bn_epsilon
        )
        channels = scaled_channels(STEM_CHANNELS, alpha, min_depth)
        self.stem = layer(3, channels, 3, 2, 1)
        blocks = []
        for (out, _), (stride, dilation) in zip(BLOCKS, block_geometry(output_stride)):
            out = scaled_channels(out, alpha, min_depth)
            blocks.append(DepthwiseSeparable(channels, out, stride, dilation, layer))
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
