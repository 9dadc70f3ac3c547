"""Parameter and mult-add counts of any MobileNet v1 variant, and the paper's table.

`python -m mobilenet_jax.counts` prints the 16 variants of the paper (1001 classes, as the paper
counts) beside the figures the paper reports.
"""

from __future__ import annotations

import dataclasses

from mobilenet_jax.ops.conv import conv_padding
from mobilenet_jax.model import BLOCKS, STEM_CHANNELS, VARIANTS, block_geometry, scaled_channels

# Paper, Tables 6 and 7: mult-adds (millions) and parameters (millions) it reports.
PAPER_MULT_ADDS = {"mobilenet_v1_100_224": 569, "mobilenet_v1_100_192": 418, "mobilenet_v1_100_160": 290,
                   "mobilenet_v1_100_128": 186, "mobilenet_v1_075_224": 325, "mobilenet_v1_050_224": 149,
                   "mobilenet_v1_025_224": 41}
PAPER_PARAMS = {1.0: 4.2, 0.75: 2.6, 0.5: 1.3, 0.25: 0.5}


@dataclasses.dataclass(frozen=True)
class Counts:
    """Trainable parameters and mult-adds of one model at one input size."""

    params: int
    mult_adds: int
    conv_params: int
    bn_params: int
    classifier_params: int
    conv_mult_adds: int
    classifier_mult_adds: int


def _conv_out(size: int, stride: int, padding: str, dilation: int = 1) -> int:
    """Output length of a 3x3 conv with `stride` and `dilation` on an input of length `size`."""
    low, high = conv_padding((size, size), 3, stride, padding, dilation)[0]
    return (size + low + high - 2 * dilation - 1) // stride + 1


def count(
    alpha: float = 1.0,
    resolution: int | tuple[int, int] = 224,
    num_classes: int = 1000,
    min_depth: int = 8,
    padding: str = "torch",
    output_stride: int | None = None,
) -> Counts:
    """Counts for MobileNetV1(alpha, num_classes, min_depth, padding, output_stride) on
    `resolution` inputs."""
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    h, w = _conv_out(h, 2, padding), _conv_out(w, 2, padding)
    c = scaled_channels(STEM_CHANNELS, alpha, min_depth)
    conv_params, bn_params, conv_mult_adds = 27 * c, 2 * c, h * w * 27 * c
    for (out, _), (stride, dilation) in zip(BLOCKS, block_geometry(output_stride)):
        out = scaled_channels(out, alpha, min_depth)
        h, w = _conv_out(h, stride, padding, dilation), _conv_out(w, stride, padding, dilation)
        conv_params += 9 * c + c * out
        bn_params += 2 * c + 2 * out
        conv_mult_adds += h * w * (9 * c + c * out)
        c = out
    classifier = (c + 1) * num_classes if num_classes else 0
    classifier_mult_adds = c * num_classes
    return Counts(
        params=conv_params + bn_params + classifier,
        mult_adds=conv_mult_adds + classifier_mult_adds,
        conv_params=conv_params,
        bn_params=bn_params,
        classifier_params=classifier,
        conv_mult_adds=conv_mult_adds,
        classifier_mult_adds=classifier_mult_adds,
    )


def paper_table(num_classes: int = 1001) -> str:
    """The 16 variants' mult-adds and parameters, beside the paper's figures, as text."""
    lines = [f"{'variant':<22} {'alpha':>5} {'size':>4} {'mult-adds (M)':>13} {'paper':>5} "
             f"{'params':>10} {'paper (M)':>9}"]
    for v in VARIANTS.values():
        c = count(v.alpha, v.resolution, num_classes)
        paper_ma = PAPER_MULT_ADDS.get(v.name, "")
        lines.append(f"{v.name:<22} {v.alpha:>5} {v.resolution:>4} {c.mult_adds / 1e6:>13.1f} {paper_ma:>5} "
                     f"{c.params:>10,} {PAPER_PARAMS[v.alpha]:>9}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(paper_table())
