"""The host input pipeline of training, end to end, per host core, on a TFDS set of real photographs.

    python -m benchmarks.input_pipeline --data-dir /tmp/photos_tfds --trees e402558,HEAD --json input.json

1. Builds once, under `--data-dir`, a TFDS image-classification set (`ImagenetLikePhotos`, TFDS's
   TFRecord shards) of JPEGs cut from the colour photographs that scikit-image and scikit-learn
   ship: random crops of each photograph (its class), resized to ImageNet's sizes (mostly
   500x375 and 375x500), with optional sensor-like grain (`--grain`) so the files carry
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
import datetime
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

DATASET = "imagenet_like_photos"
JPEG_QUALITY = 90
RESULT_PREFIX = "RESULT "
REPO = pathlib.Path(__file__).resolve().parents[1]
NORMALIZATION = "imagenet"
# The colour photographs of scikit-image and scikit-learn; each is one class.
CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
           "motorcycle", "china", "flower")


# --- The dataset -------------------------------------------------------------------------------


def photographs() -> dict[str, np.ndarray]:
    """The colour photographs shipped with scikit-image and scikit-learn, by name (uint8 HWC)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    pictures = {name: getattr(data, name)() for name in CLASSES[:7]}
    pictures["motorcycle"] = data.stereo_motorcycle()[0]  # the left view
    pictures.update(zip(("china", "flower"), load_sample_images().images))
    return pictures



def imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width) drawn like ImageNet's training JPEGs: mostly 500x375 or 375x500, some 500x333,
    the rest smaller with aspect 0.6-1."""
    draw = rng.random()
    if draw < 0.45:
        return 375, 500
    if draw < 0.62:
        return 500, 375
    if draw < 0.72:
        return 333, 500
    longer = int(rng.integers(120, 501))
    shorter = round(longer * rng.uniform(0.6, 1.0))
    return (shorter, longer) if rng.random() < 0.7 else (longer, shorter)


def photo_view(photo: np.ndarray, size: tuple[int, int], grain: float, rng: np.random.Generator) -> np.ndarray:
    """A random crop of `photo` with the aspect of `size` (25-100 % of the largest such crop),
    resized to `size`, maybe mirrored, with Gaussian grain of std `grain` levels."""
    from PIL import Image

    height, width = size
    rows, cols = photo.shape[:2]
    crop_h, crop_w = (rows, rows * width / height) if rows * width / height <= cols else (cols * height / width, cols)
    scale = np.sqrt(rng.uniform(0.25, 1.0))
    crop_h, crop_w = max(1, int(crop_h * scale)), max(1, int(crop_w * scale))
    top, left = int(rng.integers(0, rows - crop_h + 1)), int(rng.integers(0, cols - crop_w + 1))
    view = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    pixels = np.asarray(view.resize((width, height), Image.Resampling.BICUBIC), np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if grain:
        pixels = pixels + rng.normal(0.0, grain, pixels.shape).astype(np.float32)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG bytes of an RGB image, 4:2:0 chroma, as PIL (libjpeg) writes it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


class ImagenetLikePhotos(tfds.core.GeneratorBasedBuilder):
    """JPEGs of ImageNet's sizes cut from shipped photographs; the label is the photograph."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS looks for a checksums file beside a builder's module through a package this
    # environment lacks (importlib_resources); this builder downloads nothing.
    code_path = None

    def __init__(self, *, examples: int = 4096, grain: float = 0.0, seed: int = 0, **kwargs: Any):
        self._examples, self._grain, self._seed = examples, grain, seed
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=CLASSES),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager
        validation = max(64, self._examples // 16)  # enough for up to 64 shards
        return {
            "train": self._generate_examples(0, self._examples),
            "validation": self._generate_examples(self._examples, validation),
        }

    def _generate_examples(self, start: int, count: int) -> Iterator[tuple[int, dict[str, Any]]]:
        pictures = photographs()
        for index in range(start, start + count):
            rng = np.random.default_rng([self._seed, index])
            label = index % len(CLASSES)
            pixels = photo_view(pictures[CLASSES[label]], imagenet_like_size(rng), self._grain, rng)
            yield index, {"image": encode_jpeg(pixels), "label": label}


def dataset_dir(root: str | pathlib.Path, examples: int, grain: float) -> pathlib.Path:
    """The TFDS data_dir of one (examples, grain) variant under `root`."""
    return pathlib.Path(root) / f"n{examples}_grain{grain:g}"


def build_dataset(data_dir: pathlib.Path, examples: int, grain: float, shards: int) -> None:
    """Writes the set into `data_dir` unless it is there already."""
    builder = ImagenetLikePhotos(data_dir=str(data_dir), examples=examples, grain=grain)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=shards))


def dataset_stats(data_dir: pathlib.Path) -> dict[str, Any]:
    """Count, shards, mean and median JPEG bytes and mean dimensions of the train split."""
    builder = tfds.builder(DATASET, data_dir=str(data_dir))
    records = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    shapes = records.map(lambda ex: (tf.strings.length(ex["image"]), tf.image.extract_jpeg_shape(ex["image"])))
    sizes, dims = zip(*((int(n), tuple(int(v) for v in s[:2])) for n, s in shapes.as_numpy_iterator()))
    sizes, dims = np.array(sizes), np.array(dims)
    typical = np.mean([tuple(d) in ((375, 500), (500, 375)) for d in dims])
    return {
        "examples": len(sizes),
        "shards": len(builder.info.splits["train"].filenames),
        "classes": builder.info.features["label"].num_classes,
        "mean_kb": sizes.mean() / 1e3,
        "median_kb": float(np.median(sizes)) / 1e3,
        "mean_height": dims[:, 0].mean(),
        "mean_width": dims[:, 1].mean(),
        "share_500x375": typical,
        "bits_per_pixel": 8 * sizes.sum() / (dims[:, 0] * dims[:, 1]).sum(),
    }


# --- What each child process measures ----------------------------------------------------------


def measure_pipeline(data_dir: str, image_size: int, batch: int, warmup: int, batches: int) -> dict[str, Any]:
    """Images/s of the training iterator of the importable `mobilenet_jax`, after `warmup` (>= 1) batches."""
    import mobilenet_jax
    from mobilenet_jax.data.pipeline import create_train_iterator
    from mobilenet_jax.data.spec import DataSpec

    spec = DataSpec(dataset=DATASET, data_dir=data_dir, image_size=image_size, batch_size=batch)
    iterator = create_train_iterator(spec, seed=0, process_index=0, process_count=1)
    first = next(iterator)
    for _ in range(warmup - 1):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    cores = len(os.sched_getaffinity(0))
    rate = batches * batch / seconds
    return {
        "package": str(pathlib.Path(mobilenet_jax.__file__).parent),
        "cores": cores,
        "dtype": str(first["image"].dtype),
        "bytes_per_image": sum(value.nbytes for value in first.values()) / batch,
        "image_bytes": first["image"].nbytes / batch,
        "images": batches * batch,
        "seconds": seconds,
        "images_per_s": rate,
        "per_core": rate / cores,
    }


def _one_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` on a private pool of one thread, without intra-op parallelism."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def _seconds_per_image(dataset: tf.data.Dataset, count: int) -> float:
    """Seconds per element of one pass over `dataset`, consumed in TensorFlow, after a short warm-up."""
    consume = lambda d: d.reduce(tf.constant(0, tf.int64), lambda total, x: total + tf.size(x, tf.int64))  # noqa: E731
    consume(dataset.take(16))
    start = time.perf_counter()
    consume(dataset)
    return (time.perf_counter() - start) / count


def measure_stages(data_dir: str, image_size: int, images: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per image of each step of the training preprocessing on one thread, in each of
    `repeats` passes, the steps taking turns."""
    from mobilenet_jax.data import preprocess

    builder = tfds.builder(DATASET, data_dir=data_dir)
    records = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    total = builder.info.splits["train"].num_examples
    passes: dict[str, Callable[[], float]] = {
        "read and parse a record": lambda: _seconds_per_image(_one_thread(records.map(lambda ex: ex["image"])), total)
    }
    jpegs = [jpeg for jpeg in records.map(lambda ex: ex["image"]).take(images).as_numpy_iterator()]
    keyed = tf.data.Dataset.from_tensor_slices((jpegs, tf.range(len(jpegs), dtype=tf.int64)))

    def seed(index: tf.Tensor) -> tf.Tensor:
        return tf.stack([tf.constant(0, tf.int64), index])

    def crop(jpeg: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        """The training crop window (same sampler settings as `preprocess`), decoded alone."""
        shape = tf.image.extract_jpeg_shape(jpeg)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]), seed=seed(index),
            min_object_covered=0.0, aspect_ratio_range=preprocess.CROP_ASPECT_RANGE, area_range=(0.08, 1.0),
            max_attempts=preprocess.CROP_MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True,
        )
        return tf.image.decode_and_crop_jpeg(jpeg, tf.concat([begin[:2], size[:2]], 0), channels=3)

    def train(jpeg: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        return preprocess.preprocess_for_train(jpeg, seed(index), image_size)

    def train_float32(jpeg: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        return preprocess.normalize_images(train(jpeg, index), NORMALIZATION)

    steps: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
        "decode the whole JPEG": lambda jpeg, index: tf.io.decode_jpeg(jpeg, channels=3),
        "decode the training crop window only": crop,
        "preprocess_for_train: crop, resize, round to uint8, flip": train,
        "... then normalise to float32 (as e402558 yielded)": train_float32,
    }
    for name, step in steps.items():
        passes[name] = lambda step=step: _seconds_per_image(_one_thread(keyed.map(step)), len(jpegs))
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, one_pass in passes.items():
            seconds[name].append(one_pass())
    return {name: [1e3 * value for value in values] for name, values in seconds.items()}


def measure_transfer(batch: int, image_size: int, repeats: int) -> list[dict[str, Any]]:
    """Host-to-device copies of one batch of images, uint8 and float32, onto a mesh of all devices."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    from mobilenet_jax.data.spec import normalize

    pixels = np.random.default_rng(0).integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    batches = {"uint8": pixels, "float32": normalize(pixels.astype(np.float32), NORMALIZATION)}
    seconds: dict[str, list[float]] = {name: [] for name in batches}
    for round_index in range(repeats + 1):  # round 0 warms up
        for name, array in batches.items():
            start = time.perf_counter()
            jax.make_array_from_process_local_data(sharding, array).block_until_ready()
            if round_index:
                seconds[name].append(time.perf_counter() - start)
    results = []
    for name, array in batches.items():
        median = statistics.median(seconds[name])
        results.append({
            "dtype": name, "devices": jax.device_count(), "megabytes": array.nbytes / 1e6, "median_ms": 1e3 * median,
            "min_ms": 1e3 * min(seconds[name]), "mb_per_s": array.nbytes / 1e6 / median,
            "images_per_s": batch / median,
        })
    return results


# --- Running the children ----------------------------------------------------------------------


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


# --- The machine -------------------------------------------------------------------------------


def machine_line() -> str:
    """CPU model and vector flags, usable cores, date and load average."""
    from benchmarks.finetune_recipes import cpu_model

    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, {now}, load average {load}"


def busy_cores(seconds: float = 2.0) -> float:
    """Cores' worth of CPU time spent (by anyone, steal included) over the next `seconds`, from /proc/stat."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


class QuietGate:
    """Waits before each measurement until under `threshold` cores are busy, from a budget of
    `max_wait` seconds for the whole run, and says what load it found.

    The 1-minute load average still carries the previous contender's own work for a minute
    after it ends, so the gate is what all processes use now (`busy_cores`); both are reported.
    """

    def __init__(self, threshold: float, max_wait: float):
        self.threshold, self.budget = threshold, max_wait

    def wait(self) -> dict[str, float]:
        """Blocks until the machine is quiet or the budget is spent; busy cores, load, seconds waited."""
        start = time.monotonic()
        while True:
            busy = busy_cores()
            waited = time.monotonic() - start
            if busy < self.threshold or waited >= self.budget:
                self.budget = max(0.0, self.budget - waited)
                return {"busy_cores": busy, "load1": os.getloadavg()[0], "waited_s": waited}
            time.sleep(10)


# --- The report --------------------------------------------------------------------------------


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


# --- Command line ------------------------------------------------------------------------------


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


def describe(stats: dict[str, Any]) -> str:
    """One line about the dataset's JPEGs."""
    return (f"{stats['examples']} train JPEGs in {stats['shards']} shards, {stats['classes']} classes, "
            f"mean {stats['mean_kb']:.1f} KB (median {stats['median_kb']:.1f}), mean {stats['mean_width']:.0f}x"
            f"{stats['mean_height']:.0f} (WxH), {100 * stats['share_500x375']:.0f} % 500x375 or 375x500, "
            f"{stats['bits_per_pixel']:.2f} bits/pixel")


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
