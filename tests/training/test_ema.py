"""The parameter and BatchNorm-statistics EMA, evaluation through it, and skipped steps."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.training import step as steps
from mobilenet_jax.training.state import create_train_state, ema_decay_at

MODEL = MobileNetV1(num_classes=10, alpha=0.25)


def batch(seed: int = 0, size: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((size, 32, 32, 3), dtype=np.float32),
        "label": rng.integers(0, 10, size).astype(np.int32),
        "mask": np.ones(size, bool),
    }


def test_the_decay_is_tf_num_updates_warm_up():
    # min(decay, (1 + n) / (10 + n)): 2/11 on the first update, decay from n = 1,790 on for 0.995.
    np.testing.assert_allclose(
        [float(ema_decay_at(0.995, n)) for n in (1, 10, 90, 1789, 1790, 10**6)],
        [2 / 11, 11 / 20, 91 / 100, 1790 / 1799, 0.995, 0.995],
        rtol=1e-6,
    )


@pytest.mark.parametrize("decay", [0.995, 0.9999])
def test_after_500_steps_the_average_holds_under_a_tenth_of_the_initial_weights(decay):
    # Weights that jump from 0 to 1 on the first step: the share of the initial value left in the
    # average after 500 updates. A fixed decay 0.9999 would leave 95 %.
    share = np.prod([float(ema_decay_at(decay, n)) for n in range(1, 501)])
    assert share < 0.1
    assert 0.9999**500 > 0.95


# One state layout and one compiled step for every test: a rate that grows with optax's count,
# an EMA, and skipping of non-finite steps (which leaves finite steps alone).
TX = optax.sgd(lambda count: 0.1 * (count + 1))
TRAIN = jax.jit(lambda state, b: steps.train_step(state, b, jax.random.key(1), skip_nonfinite_updates=True))
EVAL = jax.jit(steps.eval_step)


def fresh_state():
    return create_train_state(jax.random.key(0), MODEL, TX, 32, ema_decay=0.9)


def test_a_train_step_averages_parameters_and_batch_statistics():
    state = fresh_state()
    before = state.variables()
    new, _ = TRAIN(state, batch())
    decay = 2 / 11  # the first update
    expected = jax.tree.map(lambda old, now: decay * old + (1 - decay) * now, before, new.variables())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new.variables(ema=True), expected)
    moved = new.ema["batch_stats"]["stem"]["bn"]["mean"] - before["batch_stats"]["stem"]["bn"]["mean"]
    assert np.abs(moved).max() > 0


def test_evaluation_reports_the_ema_and_the_raw_weights_from_one_pass():
    state = fresh_state()
    for seed in range(3):
        state, _ = TRAIN(state, batch(seed))
    sums = EVAL(state, batch(7))
    # The EMA variables evaluated as if they were the raw ones.
    swapped = EVAL(state.replace(**state.variables(ema=True)), batch(7))
    for key in ("loss", "top1", "top5"):
        np.testing.assert_allclose(sums[key], swapped[f"{key}_raw"], rtol=1e-6)
    assert float(sums["loss"]) != float(sums["loss_raw"])
    assert float(sums["count"]) == 8


def test_a_skipped_step_keeps_the_schedule_in_step_with_the_logged_rate():
    # A count rolled back with the skipped step would use the rate of step 1 again on step 2
    # while the log says step 2's.
    state = fresh_state()
    skipped, metrics = TRAIN(state, dict(batch(), image=np.full((8, 32, 32, 3), np.nan, np.float32)))
    assert not bool(metrics["finite"]) and int(skipped.step) == 1
    jax.tree.map(np.testing.assert_array_equal, skipped.variables(), state.variables())
    jax.tree.map(np.testing.assert_array_equal, skipped.ema, state.ema)
    is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)
    counts = [int(n.count) for n in jax.tree.leaves(skipped.opt_state, is_leaf=is_schedule) if is_schedule(n)]
    assert counts == [1]
