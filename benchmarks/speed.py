"""Training and inference throughput of the Flax model against its peers, in one process.

    python -m benchmarks.speed --batch 32 --steps 3 --repeats 5 --memory --json bench.json

Contenders: the project's train step and its inference, both through `predict` (the project's
path) and as plain `jax.jit(model.apply)`; PyTorch eager and `torch.compile`; and exported
models on ONNX Runtime and LiteRT (XNNPACK), float32 and int8, each with `os.cpu_count()`
threads, from the same weights as the JAX model (`--runtimes`, `--export-kinds`; int8 calibrated
on random images, which sets speed, not accuracy). "infer" runs at `--batch`, "latency" at
batch 1. Every contender is timed by the same helper, interleaved round by round (one timed
block of `--steps` calls per contender per round), so machine load hits all alike. The first
call is the warm-up; for JAX its excess over the steady-state median is reported as compile
time. PyTorch runs in float32 with `torch.set_num_threads(os.cpu_count())`. Each rate is also
given as a share of XLA's float32 matrix-product rate measured in the same process, and with
`--memory` each contender's peak resident memory is measured in a process of its own
(`benchmarks.memory`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
import torch

from benchmarks import memory
from benchmarks.timing import (
    LEARNING_RATE,
    MOMENTUM,
    NUM_CLASSES,
    Contender,
    jax_infer,
    jax_train,
    matmul_gflops,
    measure,
    random_batch,
)
from mobilenet_jax.counts import count
from mobilenet_jax.interop.torch_reference import TorchMobileNetV1
from mobilenet_jax.model import MobileNetV1


def jax_model(alpha: float, impl: str, dtype: str) -> MobileNetV1:
    """The Flax model with the given depthwise implementation and computation dtype."""
    return MobileNetV1(num_classes=NUM_CLASSES, alpha=alpha, depthwise_impl=impl, dtype=jnp.dtype(dtype))


def torch_train(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> Callable[[], Any]:
    """One SGD-momentum step of `model` (eager or compiled) on a fixed batch."""
    original = getattr(model, "_orig_mod", model)
    original.train()
    optimizer = torch.optim.SGD(original.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return run


def torch_infer(model: torch.nn.Module, images: np.ndarray) -> Callable[[], Any]:
    """An eval-mode, no-grad forward pass of `model` (eager or compiled)."""
    getattr(model, "_orig_mod", model).eval()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def torch_models(alpha: float, compiled: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    """Factories of the PyTorch contenders: eager, and `torch.compile` unless skipped."""
    factories = {"torch eager": lambda: TorchMobileNetV1(NUM_CLASSES, alpha)}
    if compiled:
        factories["torch compile"] = lambda: torch.compile(TorchMobileNetV1(NUM_CLASSES, alpha))
    return factories


def exported_model(runtime: str, kind: str, model: MobileNetV1, images: np.ndarray) -> bytes:
    """The JAX benchmark model exported for `runtime` (a LiteRT flatbuffer or an ONNX model)."""
    from mobilenet_jax.export import Deployable
    from mobilenet_jax.export.onnx import export_onnx
    from mobilenet_jax.export.tflite import export_tflite

    deployable = Deployable(model, model.init(jax.random.key(0), images[:1]), images.shape[1])
    calibration = [random_batch(max(8, len(images)), images.shape[1], seed=1)[0]]
    if runtime == "litert":
        return export_tflite(deployable, kind=kind, calibration=calibration)
    if runtime == "onnxruntime":
        return export_onnx(deployable, kind=kind, calibration=calibration, batch_size=len(images))
    raise ValueError(f"unknown runtime {runtime!r}; choose litert or onnxruntime")


def exported_runner(runtime: str, flat: bytes, images: np.ndarray) -> Callable[[], Any]:
    """An exported model on its runtime, called on `images`."""
    from mobilenet_jax.export.onnx import OnnxModel
    from mobilenet_jax.export.tflite import TFLiteModel

    runner = (TFLiteModel if runtime == "litert" else OnnxModel)(flat, os.cpu_count())
    return lambda: runner(images)


@dataclasses.dataclass(frozen=True)
class Planned:
    """A contender not built yet: `make(prepare())` compiles or loads it and returns its call.

    `prepare` holds the work that is not the contender's own (exporting a model), so that a
    memory probe can leave it out.
    """

    name: str
    kind: str
    images: int
    make: Callable[[Any], Callable[[], Any]]
    prepare: Callable[[], Any] = lambda: None

    def build(self, prepared: Any = None) -> Contender:
        """The contender, or one that carries the reason it could not be built."""
        try:
            return Contender(self.name, self.kind, self.images,
                             self.make(self.prepare() if prepared is None else prepared))
        except Exception as e:  # noqa: BLE001 - a failing export or backend is reported, not fatal
            return Contender(self.name, self.kind, self.images, lambda: None,
                             error=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")


def exported_plan(args: argparse.Namespace, images: np.ndarray) -> list[Planned]:
    """Inference and latency contenders of every exported runtime and kind."""
    sizes = {"infer": args.batch, "latency": 1}
    return [
        Planned(f"{runtime} {export_kind}", kind, sizes[kind],
                functools.partial(exported_runner, runtime, images=images[:sizes[kind]]),
                functools.partial(exported_model, runtime, export_kind, jax_model(args.alpha, "conv", "float32"),
                                  images[:sizes[kind]]))
        for kind in args.kinds if kind in sizes
        for runtime in args.runtimes
        for export_kind in args.export_kinds
    ]


def plan(args: argparse.Namespace) -> list[Planned]:
    """Train, batch inference and batch-1 latency contenders for every JAX variant and PyTorch.

    JAX inference is timed twice: through `predict` (the project's path, in chunks where the
    backend table says so) and as plain `jax.jit(model.apply)` on the whole batch (`predict`
    without chunks is exactly that call).
    """
    images, labels = random_batch(args.batch, args.resolution)
    sizes = {"train": args.batch, "infer": args.batch, "latency": 1}
    makers: dict[str, Callable[[Any, np.ndarray], Callable[[], Any]]] = {
        "train": lambda m, x: pick(m, jax_train, torch_train)(m, x, labels[:len(x)]),
        "infer": lambda m, x: pick(m, jax_infer, torch_infer)(m, x),
    }
    makers["latency"] = makers["infer"]
    factories: dict[str, Callable[[], Any]] = {
        f"jax {impl} {dtype}": functools.partial(jax_model, args.alpha, impl, dtype)
        for dtype in args.dtypes
        for impl in args.impls
    }
    factories.update(torch_models(args.alpha, not args.skip_torch_compile))
    planned = []
    for kind in args.kinds:
        x = images[:sizes[kind]]
        for name, factory in factories.items():
            planned.append(Planned(name, kind, len(x), lambda _, f=factory, k=kind, x=x: makers[k](f(), x)))
            if kind != "train" and name.startswith("jax "):
                planned.append(Planned(name.replace("jax ", "jax apply ", 1), kind, len(x),
                                       lambda _, f=factory, x=x: jax_infer(f(), x, images_per_chunk=None)))
    return planned + exported_plan(args, images)


def pick(model: Any, for_jax: Callable, for_torch: Callable) -> Callable:
    """`for_jax` for a Flax model, `for_torch` for a PyTorch one."""
    return for_jax if isinstance(model, MobileNetV1) else for_torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform's guess elsewhere."""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor()


def exported_runtime_versions(runtimes: list[str]) -> dict[str, str]:
    """Installed versions of the exported runtimes' packages (and their converters)."""
    from importlib import metadata

    packages = {"onnxruntime": ("onnxruntime", "tf2onnx"), "litert": ("ai-edge-litert", "tensorflow-cpu")}
    versions = {}
    for package in (p for runtime in runtimes for p in packages.get(runtime, ())):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def environment(args: argparse.Namespace) -> dict[str, Any]:
    """Machine, library versions, thread count and the command line."""
    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax_backend": jax.default_backend(),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "torch": torch.__version__,
            **exported_runtime_versions(args.runtimes),
        },
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], "-m", "benchmarks.speed", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": vars(args),
    }


def ratios_per_round(result: dict[str, Any], base: dict[str, Any]) -> list[float]:
    """`base`'s time per call over `result`'s, round by round.

    Both ran within seconds of each other in each round, so a drift of the machine's speed
    between rounds cancels in these ratios; it does not cancel in the ratio of the medians.
    """
    return [b / s for s, b in zip(result["seconds"], base["seconds"])]


def flops_per_image(args: argparse.Namespace, kind: str) -> float:
    """Floating-point operations per image: 2 per mult-add forward; a train step counts three passes."""
    forward = 2 * count(args.alpha, args.resolution, NUM_CLASSES).mult_adds
    return 3 * forward if kind == "train" else forward


def _ratio(result: dict[str, Any], base: dict[str, Any] | None) -> str:
    """`result` against `base`: median per-round ratio (min-max), or "-"."""
    if not base or base is result:
        return "-" if not base else "1.00x"
    rounds = ratios_per_round(result, base)
    return f"{statistics.median(rounds):.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"


def table(results: list[dict[str, Any]], ceiling_gflops: float | None = None,
          flops: Callable[[str], float] | None = None) -> str:
    """A plain-text table: throughput, spread, compile time, peak memory, the share of the
    matrix-product ceiling, and speed ratios to PyTorch eager and to ONNX Runtime float32.

    Ratios are medians (min-max) of the ratios taken round by round (`ratios_per_round`), the
    figure to trust on a machine whose speed drifts. "% ceiling" is the contender's rate in
    GFLOP/s over XLA's float32 2048^3 matrix product measured in the same process.
    """
    def baseline(name: str) -> dict[str, dict[str, Any]]:
        return {r["kind"]: r for r in results if r["name"] == name and "error" not in r}

    eager, ort = baseline("torch eager"), baseline("onnxruntime float32")
    lines = [
        f"{'kind':8} {'contender':28} {'img/s':>8} {'ms/call':>9} {'min-max ms':>17} {'compile s':>9} "
        f"{'peak MB':>8} {'% ceil':>6} {'vs torch eager':>20} {'vs onnxruntime':>20}"
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['kind']:8} {r['name']:28} {r['error']}")
            continue
        spread = f"{r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}"
        compile_s = f"{r['compile_s']:.1f}" if r["name"].startswith("jax") or "compile" in r["name"] else "-"
        peak = f"{r['peak_mb']:.0f}" if r.get("peak_mb") is not None else "-"
        share = f"{100 * r['images_per_s'] * flops(r['kind']) / (ceiling_gflops * 1e9):.0f}%" if ceiling_gflops else "-"
        lines.append(
            f"{r['kind']:8} {r['name']:28} {r['images_per_s']:8.2f} {r['median_s'] * 1e3:9.1f} {spread:>17} "
            f"{compile_s:>9} {peak:>8} {share:>6} {_ratio(r, eager.get(r['kind'])):>20} "
            f"{_ratio(r, ort.get(r['kind'])):>20}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; medians over these")
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float32"])
    parser.add_argument("--impls", type=lambda s: s.split(","), default=["shifted"])
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=["train", "infer", "latency"])
    parser.add_argument("--runtimes", type=lambda s: [r for r in s.split(",") if r], default=["onnxruntime", "litert"],
                        help="exported runtimes to time (empty to skip)")
    parser.add_argument("--export-kinds", type=lambda s: s.split(","), default=["float32", "int8"])
    parser.add_argument("--json", default=None, help="write all raw numbers here")
    parser.add_argument("--skip-torch-compile", action="store_true")
    parser.add_argument("--memory", action="store_true",
                        help="also measure each contender's peak resident memory, each in a fresh process")
    parser.add_argument("--probe-memory", default=None, metavar="KIND:NAME", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table and optionally write the JSON record."""
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    planned = plan(args)
    if args.probe_memory:
        kind, name = args.probe_memory.split(":", 1)
        chosen = next(p for p in planned if (p.kind, p.name) == (kind, name))
        prepared = chosen.prepare()
        baseline_mb = memory.settled_resident_mb()
        contender = chosen.build(prepared)
        if not contender.error:
            memory.report(memory.peak_of_call_mb(contender.run, baseline_mb))
        return
    env = environment(args)
    print(f"{env['cpu']}, {env['cpu_count']} cores, torch threads {env['torch_threads']}, jax {jax.__version__}")
    contenders = [p.build() for p in planned]
    ceilings = [matmul_gflops()]
    measure(contenders, args.steps, args.repeats)
    ceilings.append(matmul_gflops())
    env["matmul_gflops"] = ceilings
    results = [c.summary() for c in contenders]
    if args.memory:
        argv_here = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--memory"]
        for r in results:
            if "error" not in r:
                r["peak_mb"] = memory.probe(argv_here, r["kind"], r["name"])
    print(f"XLA float32 2048^3 matrix product: {ceilings[0]:.0f} GFLOP/s before the rounds, {ceilings[1]:.0f} after")
    print(table(results, max(ceilings), functools.partial(flops_per_image, args)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
