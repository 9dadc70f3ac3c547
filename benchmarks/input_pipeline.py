"""The host input pipeline of training, end to end, per host core, on a TFDS set of real photographs.

    python -m benchmarks.input_pipeline --data-dir /tmp/photos_tfds --trees e402558,HEAD --json input.json

1. Builds once, under `--data-dir`, a TFDS image-classification set (`photos.ImagenetLikePhotos`,
   TFDS's TFRecord shards) of JPEGs cut from the colour photographs that scikit-image and
   scikit-learn ship: random crops of each photograph (its class), resized to ImageNet's sizes
   (mostly 500x375 and 375x500), with optional sensor-like grain (`--grain`) so the files carry
   ImageNet's bytes per pixel, encoded by PIL at quality 90 (4:2:0). Prints their mean size.
2. Times `mobilenet_jax.data.pipeline.create_train_iterator` on it (TFRecord read, shuffle, crop fused
   with JPEG decoding, antialiased resize, flip, batch, numpy) for each code tree in `--trees`
   (git revisions exported with `git archive`, or `.` for the working tree) on one core and on
   all cores. Each contender runs in a process of its own, pinned with `taskset`, which is
   also what sizes tf.data's thread pools; contenders alternate order round by round, with a
   pause between them, and each waits for the machine to be quiet first.
3. Times the host-to-device copy of a batch, uint8 against float32, with
   `jax.make_array_from_process_local_data` onto 8 simulated CPU devices (as
   `Parallel.put_batch` does).
4. Splits one core's time per image into stages (record read, JPEG decode, crop, resize,
   normalise) with the last tree's preprocessing.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import time
from typing import Any

from benchmarks.machine import QuietGate, machine_line
from benchmarks.photos import build_dataset, dataset_dir, dataset_stats, describe
from benchmarks.pipeline_probes import measure_pipeline, measure_stages, measure_transfer

RESULT_PREFIX = "RESULT "
REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Tree:
    """A version of the code: a label and the folder that holds its `mobilenet_jax`."""

    label: str
    root: pathlib.Path


def export_tree(revision: str, cache: pathlib.Path) -> Tree:
    """The working tree for ".", else `mobilenet_jax/` of a git revision, exported once into `cache`."""
    if revision == ".":
        return Tree("working tree", REPO)
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=7", revision], check=True,
                         capture_output=True, text=True).stdout.strip()
    root = cache / sha
    if not (root / "mobilenet_jax").is_dir():
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", sha, "mobilenet_jax"],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
    return Tree(f"{revision} ({sha})" if revision != sha else sha, root)


def run_child(task: dict[str, Any], tree_root: pathlib.Path, cpus: list[int] | None, extra_env: dict[str, str]) -> Any:
    """Runs `task` in a fresh Python that imports `mobilenet_jax` from `tree_root`, pinned to `cpus`."""
    env = {**os.environ, "PYTHONPATH": f"{tree_root}{os.pathsep}{REPO}", "TF_CPP_MIN_LOG_LEVEL": "2", **extra_env}
    # -P: neither the working directory nor this file's folder goes before PYTHONPATH.
    command = [sys.executable, "-P", "-m", "benchmarks.input_pipeline", "--child", json.dumps(task)]
    if cpus is not None:
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd="/")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode or not lines:
        raise RuntimeError(f"child {task['kind']} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def child_main(task: dict[str, Any]) -> None:
    """Entry point of a child process: one measurement, printed as one JSON line."""
    kind = task.pop("kind")
    measure = {"pipeline": measure_pipeline, "stages": measure_stages, "transfer": measure_transfer}[kind]
    print(RESULT_PREFIX + json.dumps(measure(**task)), flush=True)


def pipeline_table(rows: list[dict[str, Any]], trees: list[str], core_counts: list[int]) -> str:
    """Median img/s per (tree, cores) over rounds, per core and bytes per image; then every later
    tree against the first, as the ratio of medians and the range of the per-round ratios."""
    lines = ["| code | yields | cores | img/s (min-max) | img/s per core | bytes / image "
             "| busy cores before (1-min load) |", "|---|---|---|---|---|---|---|"]
    medians: dict[tuple[str, int], float] = {}
    for cores in core_counts:
        for tree in trees:
            mine = [r for r in rows if r["tree"] == tree and r["cores"] == cores]
            if not mine:
                continue
            rates = [r["images_per_s"] for r in mine]
            medians[tree, cores] = median = statistics.median(rates)
            quiet = ", ".join(f"{r['busy_cores']:.2f} ({r['load1']:.2f})" for r in mine)
            lines.append(f"| {tree} | {mine[0]['dtype']} | {cores} | {median:.0f} ({min(rates):.0f}-{max(rates):.0f}) "
                         f"| {median / cores:.0f} | {mine[0]['bytes_per_image']:,.0f} | {quiet} |")
    base = trees[0]
    for tree in trees[1:]:
        lines.append("")
        for cores in core_counts:
            if (base, cores) not in medians or (tree, cores) not in medians:
                continue
            per_round = [after["images_per_s"] / before["images_per_s"]
                         for after in rows if after["tree"] == tree and after["cores"] == cores
                         for before in rows if before["tree"] == base and before["cores"] == cores
                         and before["round"] == after["round"]]
            lines.append(f"{tree} / {base} on {cores} core(s): {medians[tree, cores] / medians[base, cores]:.2f}x "
                         f"(per round {min(per_round):.2f}-{max(per_round):.2f}x)")
        size = {name: next(r["bytes_per_image"] for r in rows if r["tree"] == name) for name in (base, tree)}
        lines.append(f"bytes per yielded image: {size[tree]:,.0f} / {size[base]:,.0f} = {size[tree] / size[base]:.2f}x")
    return "\n".join(lines)


def transfer_table(results: list[dict[str, Any]], batch: int) -> str:
    """The host-to-device copies as a table, with the float32 / uint8 time ratio."""
    lines = [f"| batch of {batch} | MB | ms (median, min) | MB/s | img/s |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['dtype']} onto {r['devices']} devices | {r['megabytes']:.1f} | {r['median_ms']:.1f}, "
                     f"{r['min_ms']:.1f} | {r['mb_per_s']:,.0f} | {r['images_per_s']:,.0f} |")
    by_dtype = {r["dtype"]: r for r in results}
    ratio = by_dtype["float32"]["median_ms"] / by_dtype["uint8"]["median_ms"]
    return "\n".join(lines) + f"\n\nfloat32 takes {ratio:.1f}x the time of uint8 per batch"


def stages_table(stages: dict[str, list[float]]) -> str:
    """Milliseconds per image of each stage on one thread: median and fastest pass."""
    lines = ["| stage (one thread) | ms / image: median (min) | img/s (median) |", "|---|---|---|"]
    for name, passes in stages.items():
        median = statistics.median(passes)
        lines.append(f"| {name} | {median:.2f} ({min(passes):.2f}) | {1e3 / median:,.0f} |")
    return "\n".join(lines)



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="where the dataset (and exported code trees) are kept; required")
    parser.add_argument("--examples", type=int, default=4096, help="training examples in the dataset")
    parser.add_argument("--grain", type=float, default=30.0, help="std of the grain added to each JPEG's pixels")
    parser.add_argument("--shards", type=int, default=16, help="TFRecord shards per split")
    parser.add_argument("--trees", default="e402558,HEAD",
                        help="git revisions (or '.' for the working tree) to compare; the first is the baseline")
    parser.add_argument("--cores", default="1,all", help="core counts to pin each contender to ('all': every core)")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="batches before timing")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per contender")
    parser.add_argument("--rounds", type=int, default=2,
                        help="times each contender runs, in alternating order (0: skip the pipelines)")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between contenders")
    parser.add_argument("--quiet-below", type=float, default=0.5, help="busy cores allowed before a contender starts")
    parser.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for a quiet machine, in all")
    parser.add_argument("--stage-images", type=int, default=384, help="JPEGs for the per-stage split (0: skip)")
    parser.add_argument("--stage-repeats", type=int, default=5, help="passes per stage, taking turns")
    parser.add_argument("--transfer-repeats", type=int, default=10, help="timed copies per dtype (0: skip)")
    parser.add_argument("--json", default=None, help="write every result here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.data_dir is None and args.child is None:
        parser.error("--data-dir is required: a folder for the dataset, e.g. --data-dir /tmp/photos_tfds")
    return args


def time_pipelines(args: argparse.Namespace, data_dir: pathlib.Path, trees: list[Tree], gate: QuietGate) -> list[dict]:
    """Every (tree, core count) contender, `args.rounds` times in alternating order, one process each."""
    cpus = sorted(os.sched_getaffinity(0))
    core_counts = [len(cpus) if count == "all" else int(count) for count in args.cores.split(",")]
    task = {"kind": "pipeline", "data_dir": str(data_dir), "image_size": args.resolution, "batch": args.batch,
            "warmup": args.warmup, "batches": args.batches}
    order = [(cores, tree) for cores in core_counts for tree in trees]
    rows = []
    for round_index in range(args.rounds):
        for cores, tree in order if round_index % 2 == 0 else order[::-1]:
            time.sleep(args.pause)
            quiet = gate.wait()
            result = run_child(task, tree.root, cpus[:cores], {})
            rows.append({"tree": tree.label, "round": round_index, **quiet, **result})
            print(f"round {round_index} {tree.label:24} {result['dtype']:7} {cores} core(s): "
                  f"{result['images_per_s']:7.1f} img/s ({result['per_core']:.1f} per core), "
                  f"busy before {quiet['busy_cores']:.2f} cores, load {quiet['load1']:.2f}, "
                  f"waited {quiet['waited_s']:.0f} s  [{result['package']}]", flush=True)
    print(f"\nTraining input pipeline, {args.resolution}x{args.resolution}, batch {args.batch}, {args.batches} "
          f"timed batches, {args.rounds} rounds\n\n"
          f"{pipeline_table(rows, [tree.label for tree in trees], core_counts)}", flush=True)
    return rows


def time_transfer(args: argparse.Namespace, gate: QuietGate) -> dict[str, Any]:
    """uint8 and float32 batches copied onto 8 simulated devices, in a process of its own."""
    quiet = gate.wait()
    copies = run_child({"kind": "transfer", "batch": args.batch, "image_size": args.resolution,
                        "repeats": args.transfer_repeats}, REPO, None,
                       {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    print(f"\nHost to device (`jax.make_array_from_process_local_data`, all cores; busy cores before: "
          f"{quiet['busy_cores']:.2f})\n\n{transfer_table(copies, args.batch)}", flush=True)
    return {"copies": copies, **quiet}


def time_stages(args: argparse.Namespace, data_dir: pathlib.Path, tree: Tree, gate: QuietGate) -> dict[str, Any]:
    """One core's time per image in each stage, with `tree`'s preprocessing."""
    quiet = gate.wait()
    task = {"kind": "stages", "data_dir": str(data_dir), "image_size": args.resolution, "images": args.stage_images,
            "repeats": args.stage_repeats}
    stages = run_child(task, tree.root, sorted(os.sched_getaffinity(0))[:1], {})
    print(f"\nOne core's time per image, by stage ({tree.label}; busy cores before: {quiet['busy_cores']:.2f})"
          f"\n\n{stages_table(stages)}", flush=True)
    return {"ms_per_image": stages, **quiet}


def main(argv: list[str] | None = None) -> None:
    """Build the set, time every contender, print the tables (and save them with --json)."""
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    report: dict[str, Any] = {"machine": machine_line(), "config": vars(args)}
    print(report["machine"], flush=True)
    data_dir = dataset_dir(args.data_dir, args.examples, args.grain)
    build_dataset(data_dir, args.examples, args.grain, args.shards)
    report["dataset"] = dataset_stats(data_dir)
    print(f"dataset {data_dir}: {describe(report['dataset'])}", flush=True)
    trees = [export_tree(revision.strip(), pathlib.Path(args.data_dir) / "trees") for revision in args.trees.split(",")]
    gate = QuietGate(args.quiet_below, args.max_wait)
    if args.rounds:
        report["pipeline"] = time_pipelines(args, data_dir, trees, gate)
    if args.transfer_repeats:
        time.sleep(args.pause if args.rounds else 0)
        report["transfer"] = time_transfer(args, gate)
    if args.stage_images:
        time.sleep(args.pause)
        report["stages"] = time_stages(args, data_dir, trees[-1], gate)
    report["finished"] = machine_line()
    print(f"\nfinished: {report['finished']}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
