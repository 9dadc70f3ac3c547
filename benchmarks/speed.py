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
import functools
import json
import os
import sys

import jax
import torch

from benchmarks import memory
from benchmarks.speed_contenders import plan
from benchmarks.speed_report import environment, flops_per_image, table
from benchmarks.timing import matmul_gflops, measure


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
