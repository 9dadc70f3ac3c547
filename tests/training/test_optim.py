"""Learning-rate schedules, the weight-decay mask and the optimizers against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from mobilenet_jax.training import config as config_gate
from mobilenet_jax.training import optim
from mobilenet_jax.model import BLOCKS, MobileNetV1


def optimizer_spec(config) -> optim.OptimizerSpec:
    """The OptimizerSpec the config gate builds from `config`."""
    return config_gate.resolve(config).optimizer


def make_config(**overrides) -> optim.OptimizerSpec:
    """The default recipe's optimizer with `overrides`; no warm-up, rate floor, weight decay or EMA unless asked."""
    config = default.get_config()
    config.update(dict(warmup_epochs=0.0, lr_floor=0.0, weight_decay=0.0, ema_decay=0.0))
    config.update(overrides)
    return optimizer_spec(config)


def lr_at(schedule, *steps):
    """The schedule's learning rates at `steps`, as floats."""
    return [float(schedule(step)) for step in steps]


# ---------------------------------------------------------------------------------------------
# Learning rate.


def test_learning_rate_scales_linearly_with_batch_size():
    assert optim.scaled_learning_rate(make_config(learning_rate=0.1, batch_size=256)) == pytest.approx(0.1)
    assert optim.scaled_learning_rate(make_config(learning_rate=0.1, batch_size=1024)) == pytest.approx(0.4)
    # The default recipe: 0.165 per 256 images, 0.66 at batch 1024, the Cloud TPU reference.
    assert optim.scaled_learning_rate(optimizer_spec(default.get_config())) == pytest.approx(0.66)
    small = optim.create_learning_rate_schedule(make_config(lr_schedule="constant", batch_size=128), 10)
    large = optim.create_learning_rate_schedule(make_config(lr_schedule="constant", batch_size=512), 10)
    assert lr_at(large, 7)[0] == pytest.approx(4 * lr_at(small, 7)[0])


def test_warmup_is_linear_from_zero_to_the_peak():
    config = make_config(lr_schedule="constant", learning_rate=0.1, batch_size=256, warmup_epochs=2.0)
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose(
        lr_at(schedule, 0, 5, 10, 15, 20, 35), [0, 0.025, 0.05, 0.075, 0.1, 0.1], rtol=1e-6
    )


def test_exponential_is_a_staircase_counted_from_step_zero():
    # 0.165 peak, x0.94 every 3 epochs of 100 steps: constant within each 300-step stair.
    config = make_config(
        lr_schedule="exponential", learning_rate=0.165 / 4, batch_size=1024, lr_decay_epochs=3.0
    )
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=100)
    expected = [0.165, 0.165, 0.165 * 0.94, 0.165 * 0.94, 0.165 * 0.94**2, 0.165 * 0.94**3]
    np.testing.assert_allclose(lr_at(schedule, 0, 299, 300, 599, 600, 900), expected, rtol=1e-6)


def test_exponential_fractional_decay_epochs():
    # TF-Slim's 2.5 epochs: 250 steps a stair at 100 steps an epoch.
    config = make_config(lr_schedule="exponential", learning_rate=0.045, batch_size=256, lr_decay_epochs=2.5)
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=100)
    np.testing.assert_allclose(
        lr_at(schedule, 249, 250, 500), [0.045, 0.045 * 0.94, 0.045 * 0.94**2], rtol=1e-6
    )


def test_warmup_reaches_the_decayed_rate_without_a_jump():
    # Warm-up of 5 epochs ends inside the second stair (epochs 3..6): it ramps to 0.165 * 0.94.
    config = make_config(
        lr_schedule="exponential", learning_rate=0.165 / 4, batch_size=1024, warmup_epochs=5.0
    )
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=100)
    top = 0.165 * 0.94
    np.testing.assert_allclose(
        lr_at(schedule, 0, 250, 499, 500, 599, 600),
        [0, top / 2, top * 499 / 500, top, top, top * 0.94],
        rtol=1e-6,
    )


def test_cosine_decays_to_zero_at_the_end_of_the_run():
    config = make_config(lr_schedule="cosine", learning_rate=0.1, batch_size=256, num_epochs=10.0)
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=20)
    np.testing.assert_allclose(lr_at(schedule, 0, 100, 200, 250), [0.1, 0.05, 0.0, 0.0], rtol=1e-6, atol=1e-9)


def test_num_train_steps_overrides_num_epochs():
    config = make_config(lr_schedule="cosine", learning_rate=0.1, batch_size=256, num_train_steps=50)
    assert optim.total_train_steps(config, steps_per_epoch=20) == 50
    assert lr_at(optim.create_learning_rate_schedule(config, 20), 50) == pytest.approx([0.0], abs=1e-9)
    assert optim.total_train_steps(make_config(num_epochs=2.5), steps_per_epoch=20) == 50


def test_a_warmup_longer_than_the_run_is_cut_to_its_first_half(caplog):
    config = make_config(lr_schedule="constant", learning_rate=0.1, batch_size=256, warmup_epochs=20.0, num_epochs=10.0)
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose(lr_at(schedule, 0, 25, 50, 99), [0, 0.05, 0.1, 0.1], rtol=1e-6)
    assert "warmup_epochs=20.0 is 200 steps, longer than the run's 100: warming up over its first half" in caplog.text


def test_the_rate_never_falls_below_the_floor():
    config = make_config(lr_schedule="cosine", learning_rate=0.1, batch_size=256, num_epochs=10.0, lr_floor=1e-2)
    schedule = optim.create_learning_rate_schedule(config, steps_per_epoch=10)
    np.testing.assert_allclose(lr_at(schedule, 0, 50, 99, 100), [0.1, 0.05, 1e-3, 1e-3], rtol=1e-5)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(optimizer="lamb"), r"^optimizer must be one of \('rmsprop', 'sgd', 'adamw'\), got 'lamb'$"),
        (dict(lr_schedule="step"), r"^lr_schedule must be one of \('exponential', 'cosine', 'constant'\), got 'step'$"),
        (dict(learning_rate=-0.1), r"learning_rate must be >= 0, got -0.1"),
        (dict(weight_decay=-1e-5), r"weight_decay must be >= 0"),
        (dict(lr_decay_epochs=0.0), r"lr_decay_epochs must be > 0.*got 0.0.*--config.lr_decay_epochs"),
    ],
)
def test_bad_settings_raise_with_the_fix(overrides, match):
    with pytest.raises(ValueError, match=match):
        optim.create_optimizer(make_config(**overrides), steps_per_epoch=10)


# ---------------------------------------------------------------------------------------------
# Weight-decay mask.


@pytest.fixture(scope="module")
def params():
    model = MobileNetV1(alpha=0.25, num_classes=10)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]


@pytest.mark.parametrize("decay_depthwise", [False, True])
def test_weight_decay_mask_on_mobilenet(params, decay_depthwise):
    mask = optim.weight_decay_mask(params, decay_depthwise=decay_depthwise)
    flat = {
        "/".join(str(k.key) for k in path): value for path, value in jax.tree_util.tree_leaves_with_path(mask)
    }
    num_blocks = len(BLOCKS)
    assert flat["stem/conv/kernel"] and flat["classifier/kernel"]
    assert not flat["classifier/bias"]
    for index in range(1, num_blocks + 1):
        assert flat[f"block{index}/pointwise/conv/kernel"]
        assert flat[f"block{index}/depthwise/conv/kernel"] == decay_depthwise
    batchnorm = [name for name in flat if "/bn/" in name]
    assert len(batchnorm) == 2 * (1 + 2 * num_blocks) and not any(flat[name] for name in batchnorm)
    depthwise = [name for name in flat if name.endswith("depthwise/conv/kernel")]
    assert len(depthwise) == 13
    # Decayed: the stem, 13 pointwise and the classifier kernel, plus 13 depthwise when asked.
    assert sum(flat.values()) == 15 + 13 * decay_depthwise
    assert len(flat) == 28 + 2 * (1 + 2 * num_blocks) + 1


# ---------------------------------------------------------------------------------------------
# Optimizers.


def run_updates(config, grads, params, steps_per_epoch=1):
    """The parameters after applying the optimizer of `config` to each gradient in turn."""
    tx, _ = optim.create_optimizer(config, steps_per_epoch)
    state = tx.init(params)
    history = []
    for grad in grads:
        updates, state = tx.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def test_rmsprop_matches_tensorflow_on_two_steps():
    # TF1 RMSPropOptimizer (tensorflow/tpu's MobileNet optimizer), decay d, momentum m, eps e:
    #   ms_0 = 1, mom_0 = 0
    #   ms_t = d * ms_{t-1} + (1 - d) * g_t^2
    #   mom_t = m * mom_{t-1} + lr_t * g_t / sqrt(ms_t + e)
    #   w_t = w_{t-1} - mom_t
    # The rate lr_t enters the momentum each step, so it is made to change between the steps
    # (x0.94 after every 1-step epoch) to tell that apart from lr * momentum-of-gradients.
    d, m, e = 0.9, 0.9, 1.0
    lr = [0.2, 0.2 * 0.94]
    g = [2.0, -1.0]
    ms1 = d * 1.0 + (1 - d) * g[0] ** 2
    mom1 = lr[0] * g[0] / math.sqrt(ms1 + e)
    ms2 = d * ms1 + (1 - d) * g[1] ** 2
    mom2 = m * mom1 + lr[1] * g[1] / math.sqrt(ms2 + e)
    w0 = 0.5
    expected = [w0 - mom1, w0 - mom1 - mom2]

    config = make_config(
        optimizer="rmsprop", learning_rate=0.2, batch_size=256, lr_schedule="exponential", lr_decay_epochs=1.0
    )
    assert (config.rmsprop_decay, config.momentum, config.rmsprop_epsilon) == (d, m, e)
    history = run_updates(config, [jnp.array(x) for x in g], jnp.array(w0))
    np.testing.assert_allclose([float(w) for w in history], expected, rtol=1e-6)


def test_sgd_nesterov_differs_from_plain_momentum():
    g = [1.0, 1.0]
    lr, m = 0.1, 0.9
    # Momentum: v_t = m v_{t-1} + g_t, w -= lr v_t. Nesterov: w -= lr (g_t + m v_t).
    plain = [-lr * 1.0, -lr * 1.0 - lr * (m * 1.0 + 1.0)]
    nesterov = [-lr * (1.0 + m * 1.0), -lr * (1.0 + m) - lr * (1.0 + m * (m + 1.0))]
    for flag, expected in ((False, plain), (True, nesterov)):
        config = make_config(
            optimizer="sgd", nesterov=flag, lr_schedule="constant", learning_rate=lr, batch_size=256
        )
        history = run_updates(config, [jnp.array(x) for x in g], jnp.array(0.0))
        np.testing.assert_allclose([float(w) for w in history], expected, rtol=1e-6)


TINY = {
    "stem": {
        "conv": {"kernel": jnp.full((3, 3, 3, 2), 2.0)},
        "bn": {"scale": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)},
    },
    "block1": {"depthwise": {"conv": {"kernel": jnp.full((3, 3, 1, 2), 2.0)}}},
}


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "adamw"])
@pytest.mark.parametrize("decay_depthwise", [False, True])
def test_weight_decay_moves_kernels_only(optimizer, decay_depthwise):
    config = make_config(
        optimizer=optimizer,
        lr_schedule="constant",
        learning_rate=0.1,
        batch_size=256,
        weight_decay=0.01,
        weight_decay_depthwise=decay_depthwise,
    )
    zeros = jax.tree.map(jnp.zeros_like, TINY)
    (after,) = run_updates(config, [zeros], TINY)
    assert float(after["stem"]["conv"]["kernel"][0, 0, 0, 0]) < 2.0
    assert float(after["stem"]["bn"]["scale"][0]) == 2.0 and float(after["stem"]["bn"]["bias"][0]) == 2.0
    moved = float(after["block1"]["depthwise"]["conv"]["kernel"][0, 0, 0, 0]) < 2.0
    assert moved == decay_depthwise
    if optimizer == "sgd":
        # L2: the gradient gains wd * w = 0.02, then momentum SGD's first step takes lr times it.
        assert float(after["stem"]["conv"]["kernel"][0, 0, 0, 0]) == pytest.approx(2.0 - 0.1 * 0.02)
    if optimizer == "adamw":
        # Decoupled: w -= lr * wd * w, untouched by Adam's scaling of the zero gradient.
        assert float(after["stem"]["conv"]["kernel"][0, 0, 0, 0]) == pytest.approx(2.0 - 0.1 * 0.01 * 2.0)


def test_gradient_clipping_bounds_the_global_norm():
    config = make_config(
        optimizer="sgd",
        momentum=0.0,
        lr_schedule="constant",
        learning_rate=1.0,
        batch_size=256,
        grad_clip_norm=0.5,
    )
    grads = {"a": jnp.array([30.0, 40.0])}
    (after,) = run_updates(config, [grads], {"a": jnp.zeros(2)})
    np.testing.assert_allclose(after["a"], [-0.3, -0.4], rtol=1e-6)
