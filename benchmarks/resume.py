"""Time and bytes to the first training batch after a resume, at two positions in an epoch.

    python -m benchmarks.resume --data-dir /tmp/photos_tfds [--tree /path/to/another/checkout]

Uses the set of `benchmarks.photos` (JPEGs of ImageNet's sizes cut from real
photographs, in TFDS TFRecord shards; built once under `--data-dir`). Each measurement is a fresh
process that opens the dataset, then builds `train_batches(start_step=k)` and takes one batch:
the seconds from building the iterator to the batch, and the bytes the process read meanwhile
(`rchar` of /proc/self/io, page cache included). Positions alternate, with a pause between
measurements; the medians are printed. A resume that replays its epoch reads more the later
its position; one that reads only its shuffle group reads the same at any position.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks.input_pipeline import REPO
from benchmarks.machine import machine_line
from benchmarks.photos import build_dataset, dataset_dir

def first_batch(data_dir: str, start_step: int, batch: int, shuffle_buffer: int) -> dict[str, float]:
    """Seconds and MB read from building the iterator at `start_step` to its first batch."""
    from mobilenet_jax.data import pipeline, sources
    from mobilenet_jax.data.spec import DataSpec

    spec = DataSpec(dataset="imagenet_like_photos", data_dir=data_dir, image_size=224, batch_size=batch,
                    shuffle_buffer=shuffle_buffer)
    source = sources.open_source(spec)
    before, clock = _bytes_read(), time.perf_counter()
    next(pipeline.train_batches(source, spec, seed=0, process_index=0, process_count=1, start_step=start_step))
    return {"seconds": time.perf_counter() - clock, "mb_read": (_bytes_read() - before) / 1e6}


def _bytes_read() -> int:
    """Bytes this process has read through read system calls."""
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar")).split()[1])


def measure(tree: str, data_dir: str, start_step: int, batch: int, shuffle_buffer: int) -> dict[str, float]:
    """`first_batch` in a process of its own, with `mobilenet_jax` imported from the code tree `tree`."""
    code = (f"import json, sys; from benchmarks.resume import first_batch; sys.path.insert(0, {tree!r}); "
            f"print(json.dumps(first_batch({data_dir!r}, {start_step}, {batch}, {shuffle_buffer})))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--grain", type=float, default=30.0)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shuffle-buffer", type=int, default=1024)
    parser.add_argument("--positions", default="0.1,0.9", help="fractions of an epoch")
    parser.add_argument("--tree", default=str(REPO), help="the code tree whose mobilenet_jax is measured")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pause", type=float, default=2.0)
    args = parser.parse_args()
    data_dir = dataset_dir(args.data_dir, args.examples, args.grain)
    build_dataset(data_dir, args.examples, args.grain, args.shards)
    steps_per_epoch = args.examples // args.batch
    positions = [float(p) for p in args.positions.split(",")]
    runs: dict[float, list[dict[str, float]]] = {p: [] for p in positions}
    for _ in range(args.repeats):
        for position in positions:
            runs[position].append(measure(args.tree, str(data_dir), round(position * steps_per_epoch), args.batch,
                                          args.shuffle_buffer))
            time.sleep(args.pause)
    print(machine_line())
    print(f"{args.tree}: {args.examples} JPEGs in {args.shards} shards, batch {args.batch}, shuffle_buffer "
          f"{args.shuffle_buffer}, medians of {args.repeats}")
    print("| resume at | step | seconds to first batch | MB read |\n|---|---|---|---|")
    for position, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        mb = statistics.median(r["mb_read"] for r in results)
        print(f"| {position:.0%} of epoch 1 | {round(position * steps_per_epoch)} | {seconds:.2f} | {mb:.0f} |")


if __name__ == "__main__":
    main()
