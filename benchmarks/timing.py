"""Timing shared by the benchmarks: contenders timed in interleaved rounds in one process, and the
project's own train step and inference as contenders. Needs neither PyTorch nor TensorFlow."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mobilenet_jax import MobileNetV1, predict
from mobilenet_jax.training.state import create_train_state
from mobilenet_jax.training.step import train_step

NUM_CLASSES = 1000
LEARNING_RATE = 0.01
MOMENTUM = 0.9


@dataclasses.dataclass
class Contender:
    """One thing to time: `run()` does one call and waits for its result."""

    name: str
    kind: str  # "train", "infer" or "latency"
    images: int  # images per call
    run: Callable[[], Any]
    first_call_s: float = 0.0
    seconds: list[float] = dataclasses.field(default_factory=list)  # per call, one per round
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """Median, min and max seconds per call, images/s and the warm-up excess."""
        if self.error:
            return {"name": self.name, "kind": self.kind, "error": self.error}
        med = statistics.median(self.seconds)
        return {
            "name": self.name,
            "kind": self.kind,
            "images_per_call": self.images,
            "median_s": med,
            "min_s": min(self.seconds),
            "max_s": max(self.seconds),
            "images_per_s": self.images / med,
            "compile_s": max(self.first_call_s - med, 0.0),
            "seconds": self.seconds,
        }


def warm_up(contender: Contender) -> None:
    """Make the first call (compilation for JAX), recording its time or the failure reason."""
    start = time.perf_counter()
    try:
        contender.run()
    except Exception as e:  # noqa: BLE001 - a failing backend is reported, not fatal
        contender.error = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    contender.first_call_s = time.perf_counter() - start


def measure(contenders: list[Contender], steps: int, repeats: int) -> None:
    """Time `steps` calls of every working contender per round, interleaved over `repeats` rounds."""
    for contender in contenders:
        warm_up(contender)
        print(f"  warm-up {contender.name}: {contender.first_call_s:.1f}s {contender.error or ''}", flush=True)
    live = [c for c in contenders if not c.error]
    for _ in range(repeats):
        for contender in live:
            start = time.perf_counter()
            for _ in range(steps):
                contender.run()
            contender.seconds.append((time.perf_counter() - start) / steps)


def random_batch(batch: int, resolution: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NHWC float32 images and integer labels."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, resolution, resolution, 3), dtype=np.float32)
    return images, rng.integers(0, NUM_CLASSES, batch).astype(np.int32)


def jax_train(model: MobileNetV1, images: np.ndarray, labels: np.ndarray) -> Callable[[], Any]:
    """The project's jitted train step (SGD momentum, donated state) as a no-argument call."""
    tx = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
    state = [jax.jit(create_train_state, static_argnums=(1, 2, 3))(jax.random.key(0), model, tx, images.shape[1])]
    step = jax.jit(train_step, donate_argnums=0)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    rng = jax.random.key(1)

    def run() -> None:
        state[0], metrics = step(state[0], batch, rng)
        metrics["train_loss"].block_until_ready()

    return run


def jax_infer(model: MobileNetV1, images: np.ndarray, images_per_chunk: int | None | str = "auto") -> Callable[[], Any]:
    """The project's jitted eval-mode forward pass (`inference.predict`), as a no-argument call."""
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
    forward = jax.jit(lambda v, x: predict(model.apply, v, x, images_per_chunk=images_per_chunk))
    x = jnp.asarray(images)
    return lambda: forward(variables, x).block_until_ready()


def matmul_gflops(size: int = 2048, calls: int = 10) -> float:
    """XLA's best float32 matrix-product rate here (`size`^3, jitted): the ceiling figures are scaled by."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    product = jax.jit(lambda a: a @ a)
    product(a).block_until_ready()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
