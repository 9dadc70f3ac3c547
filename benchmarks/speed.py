"""Training and inference throughput of the Flax model against PyTorch, in one process.

    python -m benchmarks.speed --batch 32 --steps 3 --repeats 5 --json bench.json

Exported models join the inference contenders ("infer" at `--batch`, "latency" at batch 1):
ONNX Runtime and LiteRT (XNNPACK), float32 and int8, each with `os.cpu_count()` threads, from
the same weights as the JAX model (`--runtimes`, `--export-kinds`; int8 calibrated on random
images, which sets speed, not accuracy). Every contender is timed by the same helper, interleaved round by round (one timed block of
`--steps` calls per contender per round), so machine load hits JAX and PyTorch alike. The first
call of each contender is the warm-up; for JAX its excess over the steady-state median is
reported as compile time. PyTorch runs in float32 with `torch.set_num_threads(os.cpu_count())`.
"""

from __future__ import annotations

import argparse
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

from benchmarks.timing import (
    LEARNING_RATE,
    MOMENTUM,
    NUM_CLASSES,
    Contender,
    jax_infer,
    jax_train,
    measure,
    random_batch,
)
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


def exported_runner(runtime: str, kind: str, model: MobileNetV1, images: np.ndarray) -> Callable[[], Any]:
    """An exported copy of the JAX benchmark model on `runtime`, called on `images`."""
    from mobilenet_jax.export import Deployable
    from mobilenet_jax.export.onnx import OnnxModel, export_onnx
    from mobilenet_jax.export.tflite import TFLiteModel, export_tflite

    deployable = Deployable(model, model.init(jax.random.key(0), images[:1]), images.shape[1])
    calibration = [random_batch(max(8, len(images)), images.shape[1], seed=1)[0]]
    threads = os.cpu_count()
    if runtime == "litert":
        runner = TFLiteModel(export_tflite(deployable, kind=kind, calibration=calibration), threads)
    elif runtime == "onnxruntime":
        flat = export_onnx(deployable, kind=kind, calibration=calibration, batch_size=len(images))
        runner = OnnxModel(flat, threads)
    else:
        raise ValueError(f"unknown runtime {runtime!r}; choose litert or onnxruntime")
    return lambda: runner(images)


def exported_contenders(args: argparse.Namespace, images: np.ndarray) -> list[Contender]:
    """Inference and latency contenders of every exported runtime and kind; failures are reported."""
    sizes = {"infer": args.batch, "latency": 1}
    contenders = []
    for kind in (k for k in args.kinds if k in sizes):
        for runtime in args.runtimes:
            for export_kind in args.export_kinds:
                name, count = f"{runtime} {export_kind}", sizes[kind]
                model = jax_model(args.alpha, "conv", "float32")
                try:
                    contenders.append(Contender(name, kind, count, exported_runner(runtime, export_kind, model,
                                                                                   images[:count])))
                except Exception as e:  # noqa: BLE001 - a failing export is reported, not fatal
                    contenders.append(Contender(name, kind, count, lambda: None, error=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"))
    return contenders


def build_contenders(args: argparse.Namespace) -> list[Contender]:
    """Train, batch inference and batch-1 latency contenders for every JAX variant and PyTorch."""
    images, labels = random_batch(args.batch, args.resolution)
    makers: dict[str, tuple[int, Callable[[Any], Callable[[], Any]]]] = {
        "train": (args.batch, lambda m: pick(m, jax_train, torch_train)(m, images, labels)),
        "infer": (args.batch, lambda m: pick(m, jax_infer, torch_infer)(m, images)),
        "latency": (1, lambda m: pick(m, jax_infer, torch_infer)(m, images[:1])),
    }
    factories: dict[str, Callable[[], Any]] = {
        f"jax {impl} {dtype}": functools.partial(jax_model, args.alpha, impl, dtype)
        for dtype in args.dtypes
        for impl in args.impls
    }
    factories.update(torch_models(args.alpha, not args.skip_torch_compile))
    return [
        Contender(name, kind, makers[kind][0], makers[kind][1](factory()))
        for kind in args.kinds
        for name, factory in factories.items()
    ] + exported_contenders(args, images)


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


def table(results: list[dict[str, Any]]) -> str:
    """A plain-text table: throughput, spread, compile time and the speed ratio to PyTorch eager.

    "vs eager" is the ratio of the median throughputs; "per round" is the median (min-max) of
    the ratios taken round by round (`ratios_per_round`), the figure to trust on a machine
    whose speed drifts.
    """
    eager = {r["kind"]: r for r in results if r["name"] == "torch eager" and "error" not in r}
    lines = [
        f"{'kind':8} {'contender':24} {'img/s':>8} {'ms/call':>9} {'min-max ms':>17} {'compile s':>9} "
        f"{'vs eager':>8} {'per round (min-max)':>20}"
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['kind']:8} {r['name']:24} {r['error']}")
            continue
        base = eager.get(r["kind"])
        ratio, per_round = "-", "-"
        if base:
            ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x"
            rounds = ratios_per_round(r, base)
            per_round = f"{statistics.median(rounds):.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"
        spread = f"{r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}"
        compile_s = f"{r['compile_s']:.1f}" if r["name"].startswith("jax") or "compile" in r["name"] else "-"
        lines.append(
            f"{r['kind']:8} {r['name']:24} {r['images_per_s']:8.2f} {r['median_s'] * 1e3:9.1f} {spread:>17} "
            f"{compile_s:>9} {ratio:>8} {per_round:>20}"
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure, print the table and optionally write the JSON record."""
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    env = environment(args)
    print(f"{env['cpu']}, {env['cpu_count']} cores, torch threads {env['torch_threads']}, jax {jax.__version__}")
    contenders = build_contenders(args)
    measure(contenders, args.steps, args.repeats)
    results = [c.summary() for c in contenders]
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
