"""The train and eval steps under jit + shard_map, under pmap, and on one device agree."""

from __future__ import annotations

import chex
import jax
import numpy as np
import optax
import pytest

from mobilenet_jax import MobileNetV1
from mobilenet_jax.data.spec import normalize
from mobilenet_jax.training import mesh, step as steps
from mobilenet_jax.training.state import create_train_state

pytestmark = pytest.mark.skipif(jax.device_count() != 8, reason="needs 8 (simulated) devices")


MODEL = MobileNetV1(num_classes=10, alpha=0.25)


def fresh_state(model: MobileNetV1 = MODEL, ema_decay: float = 0.9):
    return create_train_state(jax.random.key(0), model, optax.sgd(0.1, momentum=0.9), 32, ema_decay=ema_decay)


def random_batch(seed: int, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((size, 32, 32, 3), dtype=np.float32),
        "label": rng.integers(0, 10, size).astype(np.int32),
        "mask": np.arange(size) < size - 3,
    }


def parallel_run(kind: str, batch, sync_batch_stats: bool = True):
    """One train step and one eval step mapped over the 8 devices with `kind`."""
    runner = mesh.make_parallel(kind, MODEL, steps.StepOptions(sync_batch_stats=sync_batch_stats))
    assert runner.model.bn_axis_name == (mesh.AXIS if sync_batch_stats else None)
    state = runner.from_global(fresh_state(runner.model))
    state, metrics = runner.train_step(state, runner.put_batch(batch), jax.random.key(1))
    sums = runner.eval_step(state, runner.put_batch(batch))
    # Through the checkpoint form and back, as a resumed run would see it.
    state = runner.from_global(runner.to_global(state))
    return runner.fetch(state), runner.fetch(metrics), runner.fetch(sums)


@pytest.fixture(scope="module")
def runs():
    batch = random_batch(0)
    single_state, single_metrics = jax.jit(steps.train_step)(fresh_state(), batch, jax.random.key(1))
    single_sums = jax.jit(steps.eval_step)(single_state, batch)
    return {
        "single": jax.device_get((single_state, single_metrics, single_sums)),
        "jit": parallel_run("jit", batch),
        "pmap": parallel_run("pmap", batch),
    }


def test_pmap_and_shard_map_steps_are_identical(runs):
    # The same step function compiled twice: XLA may order a reduction differently, so allow
    # float32 rounding (measured: at most 1 ulp), nothing more.
    same = lambda a, b: chex.assert_trees_all_close(a, b, rtol=2e-7, atol=1e-7)
    (state_jit, metrics_jit, sums_jit), (state_pmap, metrics_pmap, sums_pmap) = runs["jit"], runs["pmap"]
    same(state_jit.params, state_pmap.params)
    same(state_jit.batch_stats, state_pmap.batch_stats)
    same(state_jit.opt_state, state_pmap.opt_state)
    same(state_jit.ema, state_pmap.ema)
    same(metrics_jit, metrics_pmap)
    chex.assert_trees_all_equal(sums_jit, sums_pmap)


def test_eight_devices_equal_one_device_on_the_global_batch(runs):
    state_jit, metrics_jit, sums_jit = runs["jit"]
    state_one, metrics_one, sums_one = runs["single"]
    assert int(state_jit.step) == int(state_one.step) == 1
    # Synchronised BatchNorm and averaged gradients make 8 x 2 images one batch of 16.
    chex.assert_trees_all_close(state_jit.params, state_one.params, rtol=1e-4, atol=1e-4)
    chex.assert_trees_all_close(state_jit.batch_stats, state_one.batch_stats, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(metrics_jit["train_loss"], metrics_one["train_loss"], rtol=1e-5)
    chex.assert_trees_all_close(sums_jit, sums_one, rtol=1e-4)
    assert float(sums_one["count"]) == 13.0
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state_one.params, fresh_state().params)
    assert min(jax.tree.leaves(moved)) > 0


def test_per_device_statistics_differ_from_synchronised_ones(runs):
    state_local, _, _ = parallel_run("jit", random_batch(0), sync_batch_stats=False)
    state_sync, _, _ = runs["jit"]
    diff = np.abs(state_local.params["stem"]["conv"]["kernel"] - state_sync.params["stem"]["conv"]["kernel"]).max()
    assert diff > 1e-4, "per-device BatchNorm normalised with the global statistics"


@pytest.mark.parametrize("kind", mesh.PARALLELISMS)
def test_uint8_batches_normalised_on_the_device_equal_the_float32_path(kind):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels, mask = rng.integers(0, 10, 16).astype(np.int32), np.arange(16) < 13
    host_normalised = normalize(pixels.astype(np.float32), "inception")

    def run(images: np.ndarray, normalization: str | None):
        runner = mesh.make_parallel(kind, MODEL, steps.StepOptions(normalization=normalization))
        state = runner.from_global(fresh_state(runner.model))
        batch = runner.put_batch({"image": images, "label": labels, "mask": mask})
        state, metrics = runner.train_step(state, batch, jax.random.key(1))
        return runner.fetch((state.params, state.batch_stats, metrics, runner.eval_step(state, batch)))

    chex.assert_trees_all_equal(run(pixels, "inception"), run(host_normalised, None))
