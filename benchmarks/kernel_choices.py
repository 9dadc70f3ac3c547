"""Measure every kernel choice of `mobilenet_jax.ops.backends` on this machine's JAX backend.

    python -m benchmarks.kernel_choices [--batch 256 --dtype bfloat16 --repeats 5]

Times the train step and eval-mode inference of the canonical forms (XLA's convolutions,
autodiff BatchNorm), each other form swapped in alone, and all tuned forms together, interleaved
in one process; then inference in chunks of several sizes. It prints the table and the
`KernelDefaults` row those numbers support for this backend, to be written into
`BACKEND_DEFAULTS` with the figures in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import jax
import jax.numpy as jnp

from benchmarks.timing import NUM_CLASSES, Contender, jax_infer, jax_train, measure, random_batch
from mobilenet_jax import MobileNetV1
from mobilenet_jax.ops import backends

# Each field's non-canonical form, swapped in alone.
ALTERNATIVES = {"depthwise": "shifted", "batch_norm": "fused", "stem": "matmul"}


def form_sets() -> dict[str, backends.KernelDefaults]:
    """Canonical, each alternative alone, and all alternatives together."""
    sets = {"canonical": backends.CANONICAL}
    for field, form in ALTERNATIVES.items():
        sets[f"{field}={form}"] = dataclasses.replace(backends.CANONICAL, **{field: form})
    sets["all tuned"] = dataclasses.replace(backends.CANONICAL, **ALTERNATIVES)
    return sets


def contenders(args: argparse.Namespace) -> list[Contender]:
    """Train and inference contenders for every form set, and inference per chunk size."""
    images, labels = random_batch(args.batch, args.resolution)
    make = lambda forms: MobileNetV1(
        num_classes=NUM_CLASSES, alpha=args.alpha, dtype=jnp.dtype(args.dtype), **backends.model_impls(forms)
    )
    timed = []
    for name, forms in form_sets().items():
        timed.append(Contender(name, "train", args.batch, jax_train(make(forms), images, labels)))
        timed.append(Contender(name, "infer", args.batch, jax_infer(make(forms), images, images_per_chunk=None)))
    for chunk in args.chunks:
        model = make(backends.CANONICAL)
        timed.append(Contender(f"chunks of {chunk}", "infer", args.batch, jax_infer(model, images, chunk)))
    return timed


def suggested_row(results: dict[tuple[str, str], float]) -> backends.KernelDefaults:
    """Each field's faster form for training (train step img/s), and the fastest inference chunk."""
    base = results.get(("canonical", "train"), 0.0)
    fields = {
        field: form if results.get((f"{field}={form}", "train"), 0.0) > base else getattr(backends.CANONICAL, field)
        for field, form in ALTERNATIVES.items()
    }
    chunks = {None: results.get(("canonical", "infer"), 0.0)}
    chunks.update({int(name.split()[-1]): speed for (name, kind), speed in results.items() if name.startswith("chunks")})
    best_chunk = max(chunks, key=chunks.get)
    return backends.KernelDefaults(
        **fields,
        inference_images_per_chunk=best_chunk,
        depthwise_grad_images_per_chunk=backends.CANONICAL.depthwise_grad_images_per_chunk,
    )


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table and the suggested row."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=2, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians over these")
    parser.add_argument("--chunks", type=lambda s: [int(c) for c in s.split(",")], default=[4, 16])
    args = parser.parse_args(argv)
    print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}, batch {args.batch}, {args.dtype}")
    timed = contenders(args)
    measure(timed, args.steps, args.repeats)
    speeds = {}
    print(f"{'kind':6} {'forms':24} {'img/s':>10} {'vs canonical':>13}")
    for contender in timed:
        if contender.error:
            print(f"{contender.kind:6} {contender.name:24} {contender.error}")
            continue
        speeds[(contender.name, contender.kind)] = contender.images / statistics.median(contender.seconds)
    for (name, kind), speed in speeds.items():
        base = speeds.get(("canonical", kind))
        ratio = f"{speed / base:.2f}x" if base else "-"
        print(f"{kind:6} {name:24} {speed:10.1f} {ratio:>13}")
    print(f"suggested row for {jax.default_backend()!r}: {suggested_row(speeds)}")


if __name__ == "__main__":
    main()
