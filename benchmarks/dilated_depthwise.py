"""Time the dilated depthwise layers of an atrous MobileNet in each form, on this machine.

    python -m benchmarks.dilated_depthwise [--output-strides 16,8 --batch 32 --repeats 5]

At output stride 16 or 8 the depthwise convs past that stride run at stride 1 with dilation 2
or 4 (`model.block_geometry`). For those layers alone, at their own shapes, this times the
forward pass and the training step's part of them (forward, then the input and kernel
gradients) in three forms: "conv" (XLA's grouped convolution with `rhs_dilation`), "shifted"
(the library's sum of shifted windows, taps `dilation` apart, hand-written kernel gradient) and
"space-to-batch" (what TensorFlow does for atrous convolution: the input's d*d phases moved into
the batch, a plain undilated grouped convolution, the phases moved back), written here only, and
the same around the undilated shifted form.
Every form is checked against "conv" first. Contenders run in interleaved rounds of a block of
calls each, with a pause before every block; the table gives the median per block.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.machine import machine_line
from benchmarks.timing import Contender, warm_up
from mobilenet_jax.model import BLOCKS, STEM_CHANNELS, block_geometry, scaled_channels
from mobilenet_jax.ops.conv import Padding, conv_padding
from mobilenet_jax.ops.depthwise import depthwise_conv_grouped, depthwise_conv_shifted

Array = jax.Array
Layer = tuple[int, int, int]  # (input size, channels, dilation) of a stride-1 dilated depthwise conv


def dilated_layers(output_stride: int, resolution: int, alpha: float) -> list[Layer]:
    """The depthwise convs that run dilated at `output_stride`, with their input size and channels."""
    size, channels, layers = -(-resolution // 2), scaled_channels(STEM_CHANNELS, alpha), []
    for (out_channels, _), (stride, dilation) in zip(BLOCKS, block_geometry(output_stride)):
        if dilation > 1:
            layers.append((size, channels, dilation))
        size, channels = -(-size // stride), scaled_channels(out_channels, alpha)
    return layers


def space_to_batch_depthwise(
    x: Array,
    kernel: Array,
    stride: int,
    padding: Padding,
    dilation: int = 1,
    plain: Callable[..., Array] = depthwise_conv_grouped,
) -> Array:
    """A stride-1 dilated depthwise conv as the undilated form `plain` on the input's d x d phases."""
    d, (n, h, w, c) = dilation, x.shape
    extent = 2 * d  # a 3x3 kernel dilated by d spans 2d + 1 pixels
    out_h, out_w = h + sum(padding[0]) - extent, w + sum(padding[1]) - extent
    # Pad further at the end so that both padded sizes divide by d; the extra rows are cropped.
    pad_h, pad_w = (-(-(size + sum(pad)) // d) * d for size, pad in ((h, padding[0]), (w, padding[1])))
    (top, _), (left, _) = padding
    xp = jnp.pad(x, ((0, 0), (top, pad_h - h - top), (left, pad_w - w - left), (0, 0)))
    phases = xp.reshape(n, pad_h // d, d, pad_w // d, d, c).transpose(2, 4, 0, 1, 3, 5)
    y = plain(phases.reshape(d * d * n, pad_h // d, pad_w // d, c), kernel, 1, ((0, 0), (0, 0)))
    _, ph, pw, _ = y.shape
    y = y.reshape(d, d, n, ph, pw, c).transpose(2, 3, 0, 4, 1, 5).reshape(n, ph * d, pw * d, c)
    return y[:, :out_h, :out_w]


FORMS: dict[str, Callable[..., Array]] = {
    "conv": depthwise_conv_grouped,
    "shifted": depthwise_conv_shifted,
    "space-to-batch": space_to_batch_depthwise,
    "space-to-batch shifted": functools.partial(space_to_batch_depthwise, plain=depthwise_conv_shifted),
}


def layer_inputs(layers: list[Layer], batch: int, seed: int = 0) -> tuple[list[Array], list[Array]]:
    """Random NHWC inputs and (3, 3, 1, C) kernels, one pair per layer."""
    rng = np.random.default_rng(seed)
    xs = [jnp.asarray(rng.standard_normal((batch, s, s, c), dtype=np.float32)) for s, c, _ in layers]
    kernels = [jnp.asarray(rng.standard_normal((3, 3, 1, c), dtype=np.float32)) for _, c, _ in layers]
    return xs, kernels


def forward_fn(form: Callable[..., Array], layers: list[Layer]) -> Callable[[list[Array], list[Array]], list[Array]]:
    """Every dilated layer's output, each from its own input ("same" padding, stride 1)."""

    def forward(xs: list[Array], kernels: list[Array]) -> list[Array]:
        return [
            form(x, k, 1, conv_padding((s, s), 3, 1, "same", d), d) for x, k, (s, _, d) in zip(xs, kernels, layers)
        ]

    return forward


def train_fn(form: Callable[..., Array], layers: list[Layer]) -> Callable[..., Any]:
    """Forward, then the input and kernel gradients of every layer against a fixed cotangent."""
    forward = forward_fn(form, layers)

    def loss(xs: list[Array], kernels: list[Array], cotangents: list[Array]) -> Array:
        return sum(jnp.vdot(y, t) for y, t in zip(forward(xs, kernels), cotangents))

    return jax.grad(loss, argnums=(0, 1))


def contenders(output_stride: int, args: argparse.Namespace) -> list[Contender]:
    """Forward and train contenders of every form at `output_stride`, checked against "conv"."""
    layers = dilated_layers(output_stride, args.resolution, args.alpha)
    xs, kernels = layer_inputs(layers, args.batch)
    cotangents = [jnp.ones_like(y) for y in jax.jit(forward_fn(depthwise_conv_grouped, layers))(xs, kernels)]
    reference = None
    timed = []
    for name, form in FORMS.items():
        forward = jax.jit(forward_fn(form, layers))
        train = jax.jit(train_fn(form, layers))
        grads = jax.tree.leaves(train(xs, kernels, cotangents))
        reference = reference or grads
        for got, want in zip(grads, reference):
            scale = float(jnp.abs(want).max())
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-3 * scale)
        label = f"os{output_stride} {name}"
        timed.append(Contender(label, "infer", args.batch, lambda f=forward: jax.block_until_ready(f(xs, kernels))))
        timed.append(
            Contender(label, "train", args.batch, lambda f=train: jax.block_until_ready(f(xs, kernels, cotangents)))
        )
    return timed


def measure_with_pauses(timed: list[Contender], steps: int, repeats: int, pause: float) -> None:
    """Interleaved rounds; each contender's block of `steps` calls starts after `pause` seconds."""
    for contender in timed:
        warm_up(contender)
    for _ in range(repeats):
        for contender in (c for c in timed if not c.error):
            time.sleep(pause)
            start = time.perf_counter()
            for _ in range(steps):
                contender.run()
            contender.seconds.append((time.perf_counter() - start) / steps)


def main(argv: list[str] | None = None) -> None:
    """Measure and print ms per call (median, min, max over rounds) and the ratio to "conv"."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-strides", type=lambda s: [int(v) for v in s.split(",")], default=[16, 8])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians over these")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of rest before each block")
    args = parser.parse_args(argv)
    print(machine_line())
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, batch {args.batch}, {args.resolution} px, float32")
    for output_stride in args.output_strides:
        layers = dilated_layers(output_stride, args.resolution, args.alpha)
        print(f"output stride {output_stride}: (size, channels, dilation) {layers}")
        timed = contenders(output_stride, args)
        measure_with_pauses(timed, args.steps, args.repeats, args.pause)
        base = {c.kind: statistics.median(c.seconds) for c in timed if c.name.endswith(" conv")}
        print(f"{'kind':6} {'form':30} {'ms median':>10} {'min':>8} {'max':>8} {'speed vs conv':>14}")
        for c in sorted(timed, key=lambda c: c.kind):
            med, low, high = (1e3 * v for v in (statistics.median(c.seconds), min(c.seconds), max(c.seconds)))
            print(f"{c.kind:6} {c.name:30} {med:10.1f} {low:8.1f} {high:8.1f} {base[c.kind] * 1e3 / med:13.2f}x")
        print(f"load average after: {machine_line().rsplit('load average ', 1)[1]}", flush=True)


if __name__ == "__main__":
    main()
