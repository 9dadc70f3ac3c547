"""What the speed benchmark reports: the machine and versions it ran on, and the table of rates,
compile times, peak memory and ratios to the peers."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import flax
import jax
import jaxlib
import optax
import torch

from benchmarks.machine import cpu_model
from benchmarks.timing import NUM_CLASSES
from mobilenet_jax.counts import count


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
    return {
        "cpu": cpu_model(),
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
