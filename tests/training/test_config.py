"""The config files load, resolve and reject bad names with a message that says the fix."""

import importlib

import jax
import jax.numpy as jnp

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from mobilenet_jax.training import config as config_gate
from mobilenet_jax.training import optim

CONFIGS = ["default", "tpu", "gpu", "digits", "finetune"]


def load(name: str, *args: str) -> ml_collections.ConfigDict:
    """get_config(*args) of configs/<name>.py."""
    return importlib.import_module(f"configs.{name}").get_config(*args)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_resolves(name):
    config = config_gate.resolve(load(name)).config
    assert config.optimizer in optim.OPTIMIZERS and config.lr_schedule in optim.SCHEDULES
    assert config.batch_size % 8 == 0 or name == "digits"
    assert "num_classes" not in config.model


@pytest.mark.parametrize("recipe", ["rmsprop", "sgd", "adamw"])
def test_recipes_resolve_and_build_an_optimizer(recipe):
    experiment = config_gate.resolve(load("default", recipe))
    assert experiment.optimizer.optimizer == recipe
    optim.create_optimizer(experiment.optimizer, steps_per_epoch=1251)


def test_default_is_the_cloud_tpu_recipe():
    """tensorflow/tpu models/official/mobilenet/mobilenet.py with mobilenet_v1_arg_scope() defaults."""
    config = load("default")
    experiment = config_gate.resolve(config)
    assert (config.optimizer, config.rmsprop_decay, config.momentum, config.rmsprop_epsilon) == ("rmsprop", 0.9, 0.9, 1.0)
    assert optim.scaled_learning_rate(experiment.optimizer) == pytest.approx(0.66)  # 0.165 * 1024 / 256
    assert (config.lr_schedule, config.lr_decay_rate, config.lr_decay_epochs) == ("exponential", 0.94, 3.0)
    assert (config.warmup_epochs, config.lr_floor) == (0.0, 1e-4)
    assert (config.weight_decay, config.weight_decay_depthwise) == (4e-5, False)
    assert (config.label_smoothing, config.ema_decay) == (0.1, 0.995)
    assert experiment.model_fields["dropout_rate"] == pytest.approx(1 - 0.999)
    assert (config.model.bn_momentum, config.model.bn_epsilon, config.model.init_stddev) == (0.9997, 1e-3, 0.09)
    assert (config.image_size, config.model.alpha) == (224, 1.0)
    schedule = optim.create_learning_rate_schedule(experiment.optimizer, steps_per_epoch=1251)
    assert float(schedule(0)) == pytest.approx(0.66)  # no warm-up
    assert float(schedule(3 * 1251)) == pytest.approx(0.66 * 0.94)
    assert float(schedule(99 * 3 * 1251)) == pytest.approx(0.66 * 0.94**99)  # the 300th epoch: 0.0021 x
    assert float(schedule(200 * 3 * 1251)) == pytest.approx(0.66 * 1e-4)  # 0.94 ** 200 is below the floor


@pytest.mark.parametrize("recipe", ["sgd", "adamw"])
def test_the_alternatives_keep_their_pytorch_style_training(recipe):
    config = load("default", recipe)
    assert (config.warmup_epochs, config.lr_floor, config.label_smoothing, config.ema_decay) == (5.0, 0.0, 0.0, 0.9999)
    assert (config.model.bn_momentum, config.model.bn_epsilon, config.model.init_stddev) == (0.9, 1e-5, 0.0)
    assert config.model.dropout_rate == 1e-3


def test_digits_trains_as_its_readme_figures_were_measured():
    config = load("digits")
    assert (config.optimizer, config.learning_rate, config.lr_schedule, config.warmup_epochs) == ("sgd", 0.4, "cosine", 1.0)
    assert (config.lr_floor, config.label_smoothing, config.ema_decay, config.weight_decay) == (0.0, 0.0, 0.0, 5e-5)
    assert (config.model.bn_momentum, config.model.bn_epsilon, config.model.init_stddev) == (0.9, 1e-5, 0.0)
    assert (config.model.dropout_rate, config.model.alpha, config.image_size) == (0.0, 0.25, 32)


@pytest.mark.parametrize("name, per_device", [("tpu", 128), ("gpu", 256)])
def test_hardware_configs_take_the_batch_from_the_devices(name, per_device):
    devices = jax.device_count()  # 8 simulated CPU devices in the tests
    experiment = config_gate.resolve(load(name))
    assert experiment.data.batch_size == experiment.data.eval_batch_size == per_device * devices
    assert experiment.config.half_precision and experiment.config.learning_rate == load("default").learning_rate
    assert experiment.step.sync_batch_stats == (name == "gpu")


def test_tpu_recipe_is_the_reference_at_1024_and_scales_with_warm_up_above():
    def resolved(batch_size: int) -> optim.OptimizerSpec:
        config = load("tpu")
        config.batch_size = batch_size
        return config_gate.resolve(config).optimizer

    reference, pod = resolved(1024), resolved(8192)
    assert optim.scaled_learning_rate(reference) == pytest.approx(0.66)  # tensorflow/tpu at batch 1024
    assert reference.warmup_epochs == 0
    assert optim.scaled_learning_rate(pod) == pytest.approx(0.66 * 8)
    assert pod.warmup_epochs == config_gate.LARGE_BATCH_WARMUP_EPOCHS == 5
    schedule = optim.create_learning_rate_schedule(pod, steps_per_epoch=100)
    # Half-way up a ramp to the rate of step 500, after one x0.94 staircase decay (epoch 3).
    assert float(schedule(0)) == 0 and float(schedule(250)) == pytest.approx(0.66 * 8 * 0.94 / 2, rel=1e-5)
    config = load("tpu")
    config.warmup_epochs = 1.0  # an explicit value is kept
    assert config_gate.resolve(config).optimizer.warmup_epochs == 1.0


def test_a_batch_from_nothing_is_refused():
    config = load("default")
    config.batch_size = None
    with pytest.raises(ValueError, match="batch_size is None and per_device_batch_size is unset; set one of them"):
        config_gate.resolve(config)
    config.per_device_batch_size = 0
    with pytest.raises(ValueError, match="per_device_batch_size must be >= 1, got 0"):
        config_gate.resolve(config)


def test_variant_sets_alpha_and_image_size():
    config = load("default")
    config.variant = "mobilenet_v1_075_160"
    resolved = config_gate.resolve(config).config
    assert (resolved.model.alpha, resolved.image_size) == (0.75, 160)
    assert (config.model.alpha, config.image_size) == (1.0, 224)  # the input is left alone


def test_resolved_config_is_locked():
    resolved = config_gate.resolve(load("default")).config
    with pytest.raises(AttributeError):
        resolved.batchsize = 512  # a typo must not silently add a field


@pytest.mark.parametrize(
    "field, value, match",
    [
        (
            "variant",
            "mobilenet_v1_033_224",
            r"unknown variant 'mobilenet_v1_033_224'; choose one of .*mobilenet_v1_075_160",
        ),
        ("optimizer", "adam", r"^optimizer must be one of \('rmsprop', 'sgd', 'adamw'\), got 'adam'$"),
        ("lr_schedule", "linear", r"^lr_schedule must be one of \('exponential', 'cosine', 'constant'\), got 'linear'$"),
        ("normalization", "torch", r"normalization must be one of .*'imagenet'.*got 'torch'"),
        ("parallelism", "pjit", r"^parallelism must be one of \('jit', 'pmap'\), got 'pjit'$"),
        ("new_classifier_init", "he", r"^new_classifier_init must be one of \('zeros', 'random'\), got 'he'$"),
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
        ("num_train_steps", 0, r"num_train_steps must be > 0, or -1 to train num_epochs, got 0"),
        ("lr_floor", 2.0, r"lr_floor must be in \[0, 1\]"),
        ("quantization", "bogus", r"quantization must be one of \('int8',\) or None \(float training\), got 'bogus'"),
    ],
)
def test_bad_names_raise_with_the_fix(field, value, match):
    config = load("default")
    config[field] = value
    with pytest.raises(ValueError, match=match):
        config_gate.resolve(config)


def test_bad_model_fields_raise():
    config = load("default")
    config.model.width = 0.5
    with pytest.raises(
        ValueError, match=r"config.model has unknown fields \['width'\]; MobileNetV1 takes .*'alpha'"
    ):
        config_gate.resolve(config)
    config = load("default")
    config.model.alpha = -1.0
    with pytest.raises(ValueError, match="alpha must be > 0"):
        config_gate.resolve(config)


def test_unknown_recipe_raises():
    with pytest.raises(ValueError, match=r"unknown recipe 'lamb'.*\['adamw', 'rmsprop', 'sgd'\]"):
        load("default", "lamb")


def test_command_line_recipe_and_overrides():
    argv = [
        "train.py",
        "--config=configs/default.py:sgd",
        "--config.batch_size=512",
        "--config.variant=mobilenet_v1_050_128",
        "--config.data_dir=/data",
    ]
    flag_values = flags.FlagValues()
    # The override flags are defined from the argv the flag is declared with.
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = config_gate.resolve(flag_values.config).config
    assert (config.optimizer, config.nesterov, config.lr_schedule) == ("sgd", True, "cosine")
    assert (config.batch_size, config.data_dir, config.model.alpha, config.image_size) == (
        512,
        "/data",
        0.5,
        128,
    )


def test_digits_config_fits_the_digits_dataset():
    pipeline = pytest.importorskip("mobilenet_jax.data.pipeline")
    config = config_gate.resolve(load("digits")).config
    info = pipeline.get_dataset_info(config_gate.resolve(config).data)
    assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
    assert config.eval_every_steps == info.num_train_examples // config.batch_size
    assert info.num_eval_examples % config.eval_batch_size == 0


def test_unknown_fields_are_named_before_anything_runs():
    config = load("digits")
    config.unlock()
    config.bogus = 1
    with pytest.raises(ValueError, match=r"config has unknown fields \['bogus'\]"):
        config_gate.resolve(config)


@pytest.mark.parametrize("field", ["eval_every_steps", "checkpoint_every_steps", "log_every_steps"])
def test_zero_intervals_are_refused(field):
    config = load("digits")
    config[field] = 0
    with pytest.raises(ValueError, match=f"{field} must be >= 1, got 0"):
        config_gate.resolve(config)


def test_the_gate_builds_every_spec():
    experiment = config_gate.resolve(load("gpu"))
    assert experiment.data.batch_size == experiment.optimizer.batch_size == 2048
    assert experiment.step.sync_batch_stats and experiment.loop.parallelism == "jit"
    model = experiment.create_model(1000)
    assert model.dtype == jnp.bfloat16 and model.bn_axis_name is None and model.num_classes == 1000


def test_quantization_is_a_gate_field_of_the_model():
    config = load("digits")
    assert config.quantization is None and "quantization" not in config.model
    assert config_gate.resolve(config).create_model(10).quantization is None
    argv = ["train.py", "--config=configs/digits.py", "--config.quantization=int8"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    experiment = config_gate.resolve(flag_values.config)
    assert experiment.config.quantization == "int8" and experiment.create_model(10).quantization == "int8"
    config = load("digits")
    config.model.quantization = "int8"  # one way to set it: the top-level field
    with pytest.raises(ValueError, match=r"config.model has unknown fields \['quantization'\]"):
        config_gate.resolve(config)



def _resolve_with(*overrides: str) -> config_gate.Experiment:
    argv = ["train.py", "--config=configs/digits.py", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    return config_gate.resolve(flag_values.config)


def test_output_stride_goes_through_the_gate_to_the_model():
    assert config_gate.resolve(load("digits")).create_model(10).output_stride is None
    assert _resolve_with("--config.model.output_stride=16").create_model(10).output_stride == 16
    with pytest.raises(ValueError, match=r"^output_stride must be one of \(None, 32, 16, 8\), got 12$"):
        _resolve_with("--config.model.output_stride=12")
