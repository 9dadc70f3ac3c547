"""Fine-tuning: init_from in the config gate, merged variables, frozen parameters and statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import default, finetune
from mobilenet_jax import weights
from mobilenet_jax.interop import download
from mobilenet_jax.interop.preprocessing import TF_SLIM
from mobilenet_jax.interop.pretrained import Pretrained, save_pretrained
from mobilenet_jax.model import MobileNetV1, is_activation_range
from mobilenet_jax.training import config as config_gate
from mobilenet_jax.training import init, optim, step, train_and_evaluate
from mobilenet_jax.training.state import TrainState

SIZE = 32
# The fields of TF-Slim weights at alpha 0.25: none of them MobileNetV1's defaults.
SLIM_FIELDS = dict(alpha=0.25, activation="relu6", padding="same", bn_epsilon=1e-3)


def random_variables(model: MobileNetV1, seed: int) -> dict:
    """`model`'s variables at random, variances and scales positive (shapes from `jax.eval_shape`:
    nothing is compiled)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    rng = np.random.default_rng(seed)

    def draw(path: tuple[str, ...], x: jax.ShapeDtypeStruct) -> np.ndarray:
        positive = path[-1] in ("var", "scale")
        return (rng.uniform(0.5, 1.5, x.shape) if positive else rng.normal(0, 0.1, x.shape)).astype(np.float32)

    return traverse_util.path_aware_map(draw, dict(shapes))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    """A converted model file (as save_pretrained writes it): TF-Slim conventions, 7 classes."""
    model = MobileNetV1(num_classes=7, **SLIM_FIELDS)
    path = str(tmp_path_factory.mktemp("weights") / "slim_025.msgpack")
    save_pretrained(path, Pretrained(model, random_variables(model, 0), TF_SLIM))
    return path


def finetune_config(init_from: str | None, **overrides):
    """configs/finetune.py on digits at 32 x 32, starting from `init_from`."""
    config = finetune.get_config()
    config.update(dict(dataset="digits", image_size=SIZE, init_from=init_from, **overrides))
    return config


# ---------------------------------------------------------------------------------------------
# The gate: what the weights decide, and what contradicts them.


def test_model_fields_and_normalization_come_from_the_weights(converted):
    experiment = config_gate.resolve(finetune_config(converted))
    assert {k: experiment.model_fields[k] for k in SLIM_FIELDS} == SLIM_FIELDS
    assert experiment.step.normalization == "inception"  # TF-Slim's [-1, 1]
    assert experiment.data.image_size == SIZE  # the config's, not the weights' 224
    assert experiment.config.model.activation == "relu6"  # recorded as resolved


def test_an_explicit_normalization_overrides_the_weights(converted):
    assert config_gate.resolve(finetune_config(converted, normalization="imagenet")).step.normalization == "imagenet"


def test_without_init_from_none_means_the_model_defaults_and_imagenet():
    experiment = config_gate.resolve(finetune_config(None))
    assert experiment.initial is None and experiment.step.normalization == "imagenet"
    assert MobileNetV1(**experiment.model_fields).activation == MobileNetV1().activation


def test_a_contradicting_model_field_is_refused_by_name(converted):
    config = finetune_config(converted)
    config.model.alpha = 0.5
    with pytest.raises(ValueError, match=r"config.model.alpha=0.5 contradicts .* alpha=0.25\); set --config.model.alpha=0.25"):
        config_gate.resolve(config)
    config = default.get_config()  # relu, torch padding, alpha 1.0: alpha is checked first
    config.update(dict(init_from=converted, model=dict(alpha=0.25)))
    with pytest.raises(ValueError, match="config.model.activation='relu' contradicts"):
        config_gate.resolve(config)


def test_init_from_that_names_nothing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'no_such_weights' is neither a registered name nor an existing path"):
        config_gate.resolve(finetune_config("no_such_weights"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a workdir without mobilenet_v1.msgpack"):
        config_gate.resolve(finetune_config(str(tmp_path)))


def test_dropout_is_refused_with_frozen_batch_stats(converted):
    with pytest.raises(ValueError, match="disables dropout_rate=0.1; set --config.model.dropout_rate=0"):
        config_gate.resolve(finetune_config(converted, freeze_batch_stats=True, model=dict(dropout_rate=0.1)))


def refuse_reading(monkeypatch) -> None:
    """Make every read of weights arrays, and every download, fail the test."""

    def refused(*args, **kwargs):
        raise AssertionError("the config gate read weights arrays or downloaded")

    monkeypatch.setattr(weights, "load_variables", refused)
    monkeypatch.setattr(download, "fetch", refused)


def test_the_gate_checks_every_other_field_before_looking_at_the_weights(tmp_path, monkeypatch):
    refuse_reading(monkeypatch)
    with pytest.raises(ValueError, match="log_every_steps must be >= 1, got 0"):  # not: the missing file
        config_gate.resolve(finetune_config(str(tmp_path / "missing.h5"), log_every_steps=0))
    with pytest.raises(ValueError, match="disables dropout_rate=0.1"):  # not: a download
        config_gate.resolve(finetune_config("mobilenet_v1_025_128.tf_slim", freeze_batch_stats=True,
                                            model=dict(dropout_rate=0.1)))


def test_the_gate_reads_the_weights_description_only(converted, monkeypatch):
    refuse_reading(monkeypatch)
    registered = config_gate.resolve(finetune_config("mobilenet_v1_025_128.tf_slim"))  # no download
    assert registered.model_fields["alpha"] == 0.25 and registered.step.normalization == "inception"
    assert registered.initial.fields["num_classes"] == 1001 and not registered.initial.activation_ranges
    model_file = config_gate.resolve(finetune_config(converted))  # the fields beside the file, not its arrays
    assert {k: model_file.model_fields[k] for k in SLIM_FIELDS} == SLIM_FIELDS
    assert model_file.initial.fields["num_classes"] == 7


@pytest.mark.slow
def test_a_run_reads_the_init_from_weights_once_and_a_resumed_run_not_at_all(converted, tmp_path, monkeypatch):
    reads = []
    load_variables = weights.load_variables
    monkeypatch.setattr(weights, "load_variables", lambda path: reads.append(path) or load_variables(path))
    config = finetune_config(converted, batch_size=16, num_train_steps=2, warmup_epochs=0.0, eval_every_steps=1000)
    result = train_and_evaluate(config, str(tmp_path))
    assert result["step"] == 2 and reads == [converted]
    assert train_and_evaluate(config, str(tmp_path))["finished_before"] and reads == [converted]


# ---------------------------------------------------------------------------------------------
# Merging the weights into a fresh state.


@pytest.mark.parametrize("num_classes", [7, 4])
def test_backbone_is_loaded_and_classifier_kept_only_when_the_class_count_matches(converted, num_classes):
    loaded = init.load_variables(converted)
    model = MobileNetV1(num_classes=num_classes, **SLIM_FIELDS)
    fresh = fresh_state(model, optax.sgd(0.1), ema_decay=0.5)
    state = init.start_from(fresh, loaded)
    np.testing.assert_array_equal(state.params["block13"]["pointwise"]["conv"]["kernel"],
                                  loaded["params"]["block13"]["pointwise"]["conv"]["kernel"])
    np.testing.assert_array_equal(state.batch_stats["stem"]["bn"]["mean"], loaded["batch_stats"]["stem"]["bn"]["mean"])
    for name in ("kernel", "bias"):
        expected = loaded["params"]["classifier"][name] if num_classes == 7 else 0.0
        np.testing.assert_array_equal(state.params["classifier"][name], expected)
    random = init.start_from(fresh, loaded, new_classifier_init="random")
    expected = loaded["params"] if num_classes == 7 else fresh.params
    np.testing.assert_array_equal(random.params["classifier"]["kernel"], expected["classifier"]["kernel"])
    np.testing.assert_array_equal(state.ema["params"]["stem"]["conv"]["kernel"], state.params["stem"]["conv"]["kernel"])
    np.testing.assert_array_equal(state.ema["batch_stats"]["stem"]["bn"]["mean"], state.batch_stats["stem"]["bn"]["mean"])


def test_weights_fine_tune_at_output_stride_16_with_the_architecture_they_bring(converted):
    config = finetune_config(converted)
    config.model.output_stride = 16
    model = config_gate.resolve(config).create_model(7)
    assert (model.output_stride, model.alpha, model.padding) == (16, 0.25, "same")
    loaded = init.load_variables(converted)
    state = init.start_from(fresh_state(model, optax.sgd(0.1), ema_decay=0.5), loaded)
    np.testing.assert_array_equal(state.params["block13"]["depthwise"]["conv"]["kernel"],
                                  loaded["params"]["block13"]["depthwise"]["conv"]["kernel"])


def test_float_weights_fine_tuned_quantization_aware_start_with_fresh_ranges(converted):
    assert not init.describe(converted).activation_ranges
    loaded = init.load_variables(converted)
    model = MobileNetV1(num_classes=7, quantization="int8", **SLIM_FIELDS)
    fresh = fresh_state(model, optax.sgd(0.1))
    ranges = {path: 0.0 for path in traverse_util.flatten_dict(fresh.batch_stats, sep="/") if is_activation_range(path)}
    fresh = fresh.replace(batch_stats=traverse_util.unflatten_dict(
        {**traverse_util.flatten_dict(fresh.batch_stats, sep="/"), **ranges}, sep="/"))
    state = init.start_from(fresh, loaded)
    merged = traverse_util.flatten_dict(state.batch_stats, sep="/")
    assert len(ranges) == 30 * 3 and all(float(merged[path]) == 0.0 for path in ranges)  # untracked
    np.testing.assert_array_equal(merged["stem/bn/mean"], loaded["batch_stats"]["stem"]["bn"]["mean"])
    # And back: quantization-aware weights fine-tuned in float leave their ranges behind.
    tracked = {path: 1.0 for path in ranges}
    qat_weights = {**state.variables(), "batch_stats": traverse_util.unflatten_dict({**merged, **tracked}, sep="/")}
    plain = init.start_from(fresh_state(MobileNetV1(num_classes=7, **SLIM_FIELDS), optax.sgd(0.1)), qat_weights)
    assert not any(is_activation_range(p) for p in traverse_util.flatten_dict(plain.batch_stats, sep="/"))


def test_quantization_with_frozen_batch_stats_needs_trained_ranges(converted):
    with pytest.raises(ValueError, match="quantization tracks activation ranges in train mode, which freeze_batch"):
        config_gate.resolve(finetune_config(converted, quantization="int8", freeze_batch_stats=True))
    experiment = config_gate.resolve(finetune_config(converted, quantization="int8"))  # train mode: allowed
    assert experiment.create_model(10).quantization == "int8"


def test_weights_of_another_width_are_refused_naming_the_variable(converted):
    model = MobileNetV1(num_classes=7, **dict(SLIM_FIELDS, alpha=0.5))
    fresh = fresh_state(model, optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"do not fit the model: params \S+ is shape \(.*\), the model needs \("):
        init.start_from(fresh, init.load_variables(converted))


# ---------------------------------------------------------------------------------------------
# Freezing parameters.


def optimizer(**fields) -> optax.GradientTransformation:
    """SGD without momentum at a constant rate 0.1 (batch 256), with `fields`."""
    spec = optim.OptimizerSpec(optimizer="sgd", learning_rate=0.1, batch_size=256, lr_schedule="constant",
                               momentum=0.0, **fields)
    return optim.create_optimizer(spec, steps_per_epoch=10)[0]


def fresh_state(model: MobileNetV1, tx: optax.GradientTransformation, ema_decay: float = 0.0) -> TrainState:
    """A TrainState of `model` with random variables (seed 1), as `create_train_state` builds it."""
    variables = random_variables(model, 1)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables["batch_stats"],
        ema=variables if ema_decay else None, ema_decay=ema_decay,
    )


def random_grads(params, index: int):
    """Standard normal gradients shaped as `params`, the same for the same `index`."""
    rng = np.random.default_rng(index)
    return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), params)


def run_updates(tx: optax.GradientTransformation, steps: int) -> list:
    """Parameters after each of `steps` updates with random gradients, starting from a fresh model."""
    params = random_variables(MobileNetV1(num_classes=5, alpha=0.25), 0)["params"]
    state, history = tx.init(params), [params]

    @jax.jit
    def update(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for index in range(steps):
        params, state = update(params, state, random_grads(params, index))
        history.append(params)
    return history


def moved(before, after, group: str) -> list[bool]:
    """Whether each parameter of `group` ("classifier" or "backbone") differs between the two."""
    groups = optim.parameter_groups(before)
    flags = jax.tree.map(lambda g, a, b: None if g != group else bool(jnp.any(a != b)), groups, before, after)
    return jax.tree.leaves(flags)


def test_parameters_outside_trainable_never_move_even_with_weight_decay():
    history = run_updates(optimizer(trainable="classifier/.*", weight_decay=0.1), steps=3)
    assert not any(moved(history[0], history[-1], "backbone"))
    assert all(moved(history[0], history[-1], "classifier"))
    groups = jax.tree.leaves(optim.parameter_groups(history[0], trainable="block1[0-3]/.*"))
    assert groups.count("backbone") == 4 * 6 and "classifier" not in groups  # 4 blocks of 6 tensors


def test_backbone_waits_freeze_backbone_steps_then_takes_the_multiplied_rate():
    history = run_updates(optimizer(freeze_backbone_steps=2, backbone_lr_multiplier=0.1, weight_decay=0.1), steps=3)
    for index in (1, 2):
        assert not any(moved(history[index - 1], history[index], "backbone"))
        assert all(moved(history[index - 1], history[index], "classifier"))
    # Step 3: a tenth of what the plain optimizer (same decay, no momentum) does from the same point.
    plain = optimizer(weight_decay=0.1)
    updates, _ = jax.jit(plain.update)(random_grads(history[2], 2), plain.init(history[2]), history[2])
    kernel = lambda tree: tree["block5"]["pointwise"]["conv"]["kernel"]
    np.testing.assert_allclose(kernel(history[3]) - kernel(history[2]), 0.1 * kernel(updates), rtol=1e-4, atol=1e-7)


def test_a_bad_trainable_pattern_is_refused():
    with pytest.raises(ValueError, match=r"trainable='classifier/\(' is not a regular expression"):
        optim.OptimizerSpec(trainable="classifier/(")


# ---------------------------------------------------------------------------------------------
# Frozen BatchNorm statistics.


def test_freeze_batch_stats_keeps_the_statistics_and_normalises_with_them(converted):
    model = MobileNetV1(num_classes=7, **SLIM_FIELDS)
    state = init.start_from(fresh_state(model, optax.sgd(0.0)), init.load_variables(converted))
    batch = {"image": jax.random.normal(jax.random.key(1), (4, SIZE, SIZE, 3)), "label": jnp.arange(4)}
    train = jax.jit(lambda *args: step.train_step(*args, freeze_batch_stats=True))
    new, metrics = train(state, batch, jax.random.key(2))
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new.batch_stats, state.batch_stats)))
    # Normalised with the running statistics: the loss is the inference-mode loss (in train mode,
    # batch statistics of 4 random images give another).
    eval_logits = jax.jit(model.apply)({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
    eval_loss = step.cross_entropy(eval_logits, batch["label"]).mean()
    assert float(metrics["train_loss"]) == pytest.approx(float(eval_loss), rel=1e-5)
