"""A MobileNet v1 in torch with timm's exact state-dict names and structure (timm itself is not
installed): stem conv + bn1, five stages of 'dsa' blocks (conv_dw, bn1, ReLU6, conv_pw, bn2,
ReLU6, no skip), global average pool, Linear classifier; symmetric padding 1, BatchNorm eps 1e-5.
`output_stride` 16 or 8 dilates it by timm's builder rule (`EfficientNetBuilder`), padding a
dilated 3x3 conv by its dilation as timm's `get_padding` does."""

from __future__ import annotations

import torch
from torch import nn

from mobilenet_jax.interop.timm import STAGE_BLOCKS

STAGE_CHANNELS = (64, 128, 256, 512, 1024)


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm's channel rounding: nearest multiple of `divisor`, never below 90 % of `v`."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def conv_bn(
    c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1, dilation: int = 1
) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    padding = ((stride - 1) + dilation * (kernel - 1)) // 2  # timm's get_padding
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(c_out)


class DepthwiseSeparable(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dilation: int = 1):
        super().__init__()
        self.conv_dw, self.bn1 = conv_bn(c_in, c_in, 3, stride, groups=c_in, dilation=dilation)
        self.conv_pw, self.bn2 = conv_bn(c_in, c_out, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.bn1(self.conv_dw(x)))
        return nn.functional.relu6(self.bn2(self.conv_pw(x)))


class TimmMobileNetV1(nn.Module):
    def __init__(self, multiplier: float = 1.0, num_classes: int = 1000, output_stride: int = 32):
        super().__init__()
        width = lambda c: make_divisible(c * multiplier)
        self.conv_stem, self.bn1 = conv_bn(3, width(32), 3, 2)
        stages, c_in = [], width(32)
        current_stride, dilation = 2, 1
        for n, c in zip(STAGE_BLOCKS, STAGE_CHANNELS):
            blocks = []
            for b in range(n):
                stride, next_dilation = (2 if b == 0 and c != 64 else 1), dilation
                if current_stride * stride > output_stride:
                    stride, next_dilation = 1, dilation * stride
                else:
                    current_stride *= stride
                blocks.append(DepthwiseSeparable(c_in, width(c), stride, dilation))
                dilation = next_dilation
                c_in = width(c)
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.classifier = nn.Linear(c_in, num_classes) if num_classes else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's output (timm's `forward_features`)."""
        return self.blocks(nn.functional.relu6(self.bn1(self.conv_stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def random_model(multiplier: float, seed: int, num_classes: int = 1000, output_stride: int = 32) -> TimmMobileNetV1:
    """An eval-mode model with BatchNorm statistics and affine terms far from their defaults."""
    torch.manual_seed(seed)
    model = TimmMobileNetV1(multiplier, num_classes, output_stride).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2.0)
    return model
