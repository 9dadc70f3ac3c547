"""Throughput of the ImageNet preprocessing (`mobilenet_jax.data`) on synthetic JPEGs, per host core.

    python -m benchmarks.input_pipeline --images 256 --repeats 3 --json input.json

The JPEGs are smooth random images of ImageNet's typical size (500 x 375), encoded once with
`tf.io.encode_jpeg`. Each measurement maps the preprocessing over them with `tf.data` on a
private thread pool of 1 thread (the per-core rate) and of every core, batching like training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from mobilenet_jax import data


def synthetic_jpegs(count: int, height: int = 375, width: int = 500, seed: int = 0) -> list[bytes]:
    """Smooth random RGB images (upsampled noise, like natural-image statistics) as JPEG bytes."""
    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (height // 16, width // 16, 3)).astype(np.float32)
        image = tf.image.resize(coarse, (height, width), method="bicubic")
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        jpegs.append(tf.io.encode_jpeg(image, quality=90).numpy())
    return jpegs


def pipeline(jpegs: list[bytes], fn: Callable, threads: int, batch: int) -> tf.data.Dataset:
    """`fn(jpeg, index)` mapped over the JPEGs on a private pool of `threads`, then batched."""
    ds = tf.data.Dataset.from_tensor_slices((jpegs, tf.range(len(jpegs), dtype=tf.int64)))
    ds = ds.map(fn, num_parallel_calls=threads, deterministic=False).batch(batch)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options).prefetch(1)


def images_per_second(ds: tf.data.Dataset, count: int, repeats: int) -> list[float]:
    """Images/s of full passes over `ds`, after one warm-up pass."""
    for _ in ds:
        pass
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in ds:
            pass
        rates.append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    """Measure train and eval preprocessing at 1 thread and at every core; print and save."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    jpegs = synthetic_jpegs(args.images)
    size = args.resolution
    fns = {
        "train": lambda jpeg, i: data.preprocess_for_train(jpeg, tf.stack([i, tf.constant(0, tf.int64)]), size),
        "eval": lambda jpeg, i: data.preprocess_for_eval(jpeg, size),
    }
    cores = os.cpu_count() or 1
    results = []
    for name, fn in fns.items():
        for threads in sorted({1, cores}):
            rates = images_per_second(pipeline(jpegs, fn, threads, args.batch), args.images, args.repeats)
            med = statistics.median(rates)
            results.append(
                {"preprocess": name, "threads": threads, "images_per_s": med, "per_core": med / threads,
                 "min": min(rates), "max": max(rates), "rates": rates}
            )
            print(f"{name:5} threads {threads}: {med:8.1f} img/s ({med / threads:.1f} per core; "
                  f"min {min(rates):.1f}, max {max(rates):.1f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "cpu_count": cores, "tensorflow": tf.__version__, "results": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
