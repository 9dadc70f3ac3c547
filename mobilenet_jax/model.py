"""MobileNet v1 (Howard et al., 2017) as a Flax linen module, and the paper's named variants."""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenet_jax import layers
from mobilenet_jax.choices import check_choice
from mobilenet_jax.ops import backends
from mobilenet_jax.ops.conv import PADDINGS
from mobilenet_jax.ops.quantize import QUANTIZATIONS

Array = jax.Array

STEM_CHANNELS = 32
# (output channels, stride of the depthwise conv) of blocks 1..13, paper Table 1. The paper
# prints stride 2 for block 13: a known typo, every implementation uses 1 (7x7 output at 224).
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
# None and 32: the paper's network; 16 and 8: atrous (`block_geometry`).
OUTPUT_STRIDES = (None, 32, 16, 8)
MIN_INPUT_SIZE = 32
# The `layers.InputQuantizer`s of a quantization-aware model outside the convolution units, at
# batch_stats <name>/{low,high,tracked}: the last block's output entering the pooling, the pooled
# features entering the classifier, and the logits. With the units' inputs they are every tensor
# an integer-only runtime holds in 8 bits.
POOL_INPUT_QUANTIZER = "pool_input_quant"
CLASSIFIER_INPUT_QUANTIZER = "classifier_input_quant"
LOGITS_QUANTIZER = "logits_quant"


def scaled_channels(channels: int, alpha: float, min_depth: int = 8) -> int:
    """Channels under width multiplier `alpha`: TF-Slim's max(int(c * alpha), min_depth)."""
    return max(int(channels * alpha), min_depth)


def block_geometry(output_stride: int | None = None) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of each block's depthwise conv at `output_stride` (one of OUTPUT_STRIDES).

    TF-Slim's and timm's rule: walking the layers with the running stride (2 after the stem) and
    rate 1, a layer that would stride 2 once the running stride equals `output_stride` runs at
    stride 1 with the current rate, and the rate then doubles; every other layer runs at its
    stride with the current rate. None and 32 give the paper's strides, all at rate 1.
    """
    target = check_choice("output_stride", output_stride, OUTPUT_STRIDES) or 32
    current, rate, geometry = 2, 1, []
    for _, stride in BLOCKS:
        if stride > 1 and current == target:
            geometry.append((1, rate))
            rate *= stride
        else:
            geometry.append((stride, rate))
            current *= stride
    return tuple(geometry)


def endpoint_blocks(output_stride: int | None = None) -> dict[str, int]:
    """Backbone endpoints at `output_stride`: "stride_<s>" names the last block at stride s.

    At output stride 32 (None): stride_2 ... stride_32, blocks 1, 3, 5, 11 and 13. At 16:
    stride_2 ... stride_16, stride_16 being block 13; at 8: stride_2 ... stride_8, block 13.
    """
    current, blocks = 2, {}
    for index, (stride, _) in enumerate(block_geometry(output_stride), start=1):
        current *= stride
        blocks[f"stride_{current}"] = index
    return blocks


# Backbone endpoints of the paper's network: the last feature map at each stride, by block.
ENDPOINT_BLOCKS = endpoint_blocks()


class MobileNetV1(nn.Module):
    """MobileNet v1: a 3x3 stem, 13 depthwise-separable blocks, global average pool, classifier.

    Defaults equal the PyTorch reference (`torch_reference.TorchMobileNetV1`): ReLU, symmetric
    padding 1, BatchNorm eps 1e-5 and momentum 0.9 (Flax convention; PyTorch's 0.1). Inputs are
    NHWC images of any size >= 32. `num_classes=0` returns the pooled 1024 * alpha features.
    `depthwise_impl`, `batch_norm_impl` and `stem_impl` choose how XLA computes those layers
    ("auto": the backend's row of `ops.backends.BACKEND_DEFAULTS`); all forms share the variables.
    `init_stddev` > 0 draws every convolution and classifier kernel from a normal of that stddev
    truncated at two stddevs, TF-Slim's `truncated_normal_initializer` (the TF reference's 0.09);
    0 keeps He normal (fan-out) for the convolutions and LeCun normal for the classifier.
    With `return_endpoints=True` the call returns `(output, endpoints)`, endpoints mapping
    "stride_2" ... "stride_32" to the last feature map at that output stride, for backbones.
    `output_stride` 16 or 8 makes it atrous (`block_geometry`): the depthwise convs past that
    stride run at stride 1 and dilated, with the same variables; the endpoints then go up to
    "stride_16" or "stride_8", the deepest being the last block's output (`endpoint_blocks`).

    `quantization="int8"` makes the model quantization-aware: every convolution and classifier
    kernel is rounded onto its per-output-channel int8 grid, and every such layer's input, the
    pooling's input and the logits onto the 8-bit grid of a range tracked in `batch_stats`
    (`layers.InputQuantizer`), with straight-through gradients, so that it computes what
    `export.quantize`'s int8 model computes (docs/model.md). The variables are those of the float
    model, plus the ranges.
    """

    num_classes: int = 1000
    alpha: float = 1.0
    min_depth: int = 8
    dropout_rate: float = 0.0
    activation: str = "relu"
    padding: str = "torch"
    output_stride: int | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    init_stddev: float = 0.0
    bn_axis_name: str | None = None
    depthwise_impl: str = "auto"
    batch_norm_impl: str = "auto"
    stem_impl: str = "auto"
    quantization: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, numbers.Real):
            raise ValueError(f"alpha must be a number > 0, got {self.alpha!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, numbers.Integral):
            raise ValueError(f"num_classes must be an int >= 0, got {self.num_classes!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 returns pooled features), got {self.num_classes}")
        if self.min_depth < 1:
            raise ValueError(f"min_depth must be >= 1, got {self.min_depth}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if not self.init_stddev >= 0.0:
            raise ValueError(f"init_stddev must be >= 0 (0: He normal), got {self.init_stddev}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(
                f"bn_momentum must be in [0, 1) (Flax convention: 1 - PyTorch momentum), got {self.bn_momentum}"
            )
        check_choice("activation", self.activation, tuple(layers.ACTIVATIONS))
        check_choice("padding", self.padding, PADDINGS)
        check_choice("output_stride", self.output_stride, OUTPUT_STRIDES)
        for operation, impls in backends.IMPLS.items():
            check_choice(f"{operation}_impl", getattr(self, f"{operation}_impl"), impls)
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        super().__post_init__()

    @property
    def num_features(self) -> int:
        """Width of the pooled features that feed the classifier."""
        return scaled_channels(BLOCKS[-1][0], self.alpha, self.min_depth)

    @nn.compact
    def __call__(self, x: Array, train: bool = False, return_endpoints: bool = False):
        check_input(x)
        width = functools.partial(scaled_channels, alpha=self.alpha, min_depth=self.min_depth)
        precision = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        init = {"kernel_init": nn.initializers.truncated_normal(self.init_stddev)} if self.init_stddev else {}
        norm = functools.partial(
            layers.BatchNorm,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            impl=self.batch_norm_impl,
            **precision,
        )
        activation = layers.activation_fn(self.activation)
        quantize_input = (
            functools.partial(layers.InputQuantizer, momentum=self.bn_momentum, axis_name=self.bn_axis_name)
            if self.quantization
            else None
        )
        unit = functools.partial(layers.ConvBNAct, norm=norm, activation=activation, quantize_input=quantize_input)
        conv = functools.partial(layers.Conv, padding=self.padding, quantization=self.quantization, **precision, **init)
        stem = functools.partial(conv, features=width(STEM_CHANNELS), stride=2, impl=self.stem_impl)
        depthwise = functools.partial(conv, impl=self.depthwise_impl)
        pointwise = functools.partial(conv, kernel_size=1)

        x = unit(stem, name="stem")(x, train)
        endpoints, endpoint_at = {}, endpoint_blocks(self.output_stride)
        geometry = zip(BLOCKS, block_geometry(self.output_stride))
        for index, ((channels, _), (stride, dilation)) in enumerate(geometry, start=1):
            dilated = functools.partial(depthwise, dilation=dilation)
            x = layers.DepthwiseSeparable(
                width(channels), stride, dilated, pointwise, unit, name=f"block{index}"
            )(x, train)
            endpoints.update({name: x for name, block in endpoint_at.items() if block == index})

        if quantize_input is not None:
            x = quantize_input(name=POOL_INPUT_QUANTIZER)(x, train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if self.num_classes:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            if quantize_input is not None:
                # After dropout: the classifier's input is on the grid in training as at inference.
                x = quantize_input(name=CLASSIFIER_INPUT_QUANTIZER)(x, train)
                init = dict(init, dot_general=layers.int8_dot_general)
            x = nn.Dense(self.num_classes, name="classifier", **precision, **init)(x)
            x = x.astype(jnp.float32)
            if quantize_input is not None:
                x = quantize_input(name=LOGITS_QUANTIZER)(x, train)
        return (x, endpoints) if return_endpoints else x


def is_activation_range(path: str) -> bool:
    """Whether the "/"-joined batch_stats `path` is a quantization-aware model's activation range
    (a float model has none of these)."""
    parts = path.split("/")
    return len(parts) >= 2 and parts[-2] in (
        layers.INPUT_QUANTIZER, POOL_INPUT_QUANTIZER, CLASSIFIER_INPUT_QUANTIZER, LOGITS_QUANTIZER
    )


def check_input(x: Array) -> None:
    """Raise a ValueError unless `x` is an NHWC batch of RGB images at least 32 pixels a side."""
    if x.ndim != 4:
        raise ValueError(f"expected NHWC images of rank 4, got shape {tuple(x.shape)}; add a batch axis")
    if x.shape[-1] == 1:
        raise ValueError(
            f"expected 3 channels last (NHWC RGB), got grayscale images of shape {tuple(x.shape)}; "
            "repeat the channel: jnp.repeat(x, 3, axis=-1)"
        )
    if x.shape[-1] != 3:
        advice = "transpose NCHW with (0, 2, 3, 1)" if x.shape[1] == 3 else "convert the images to RGB"
        raise ValueError(f"expected 3 channels last (NHWC RGB), got shape {tuple(x.shape)}; {advice}")
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
        raise ValueError(f"input height and width must be >= {MIN_INPUT_SIZE}, got {tuple(x.shape[1:3])}")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A named member of the paper's family: width multiplier and default input resolution."""

    name: str
    alpha: float
    resolution: int


def _variant(alpha: float, resolution: int) -> Variant:
    """The paper's variant at `alpha` and `resolution`, named like timm: alpha as a percentage."""
    return Variant(f"mobilenet_v1_{round(alpha * 100):03d}_{resolution}", alpha, resolution)


VARIANTS: dict[str, Variant] = {
    v.name: v for v in (_variant(a, r) for a in (1.0, 0.75, 0.5, 0.25) for r in (224, 192, 160, 128))
}


def get_variant(name: str) -> Variant:
    """The variant called `name`, e.g. "mobilenet_v1_075_160" (alpha 0.75 at 160 x 160)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[name]


def create_model(name: str, **kwargs: Any) -> MobileNetV1:
    """A MobileNetV1 for the named variant; `kwargs` set any other field (num_classes, dtype...).

    Published weights come with their model: `mobilenet_jax.pretrained.load_pretrained`.
    """
    return MobileNetV1(alpha=get_variant(name).alpha, **kwargs)
