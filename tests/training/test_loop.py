"""End to end: the offline digits config trains, evaluates every test image once, and logs."""

from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import pytest

from configs import digits
from mobilenet_jax import MobileNetV1
from mobilenet_jax.weights import load_variables
from mobilenet_jax.training.metrics import read_metrics
from mobilenet_jax.training import train_and_evaluate

pytestmark = pytest.mark.slow

TEST_IMAGES = 360


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A short digits run (8 epochs instead of the quickstart's 40)."""
    workdir = str(tmp_path_factory.mktemp("digits"))
    config = digits.get_config()
    config.num_epochs = 8.0
    config.eval_every_steps = 1000  # only at the end
    config.checkpoint_every_steps = 1000
    return workdir, train_and_evaluate(config, workdir)


def test_digits_reaches_an_accuracy_an_untrained_model_cannot(digits_run):
    _, result = digits_run
    assert result["eval_examples"] == TEST_IMAGES
    assert result["eval_accuracy"] >= 0.8, result  # chance is 0.1
    assert result["eval_top5"] >= result["eval_accuracy"]


def test_metrics_file_has_one_record_per_log_and_eval(digits_run):
    workdir, result = digits_run
    records = read_metrics(workdir)
    train = [r for r in records if "train_loss" in r]
    evals = [r for r in records if "eval_accuracy" in r]
    steps_per_epoch = 1437 // 64
    assert [r["step"] for r in train][:3] == [20, 40, 60]
    assert train[-1]["step"] == evals[-1]["step"] == 8 * steps_per_epoch
    for record in train:
        assert {"train_loss", "train_accuracy", "learning_rate", "images_per_second"} <= record.keys()
        assert np.isfinite(record["train_loss"]) and record["images_per_second"] > 0
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    assert evals[-1]["eval_accuracy"] == pytest.approx(result["eval_accuracy"])
    assert {"eval_top5", "eval_loss"} <= evals[-1].keys()
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))


def test_exported_variables_load_without_the_training_code(digits_run):
    workdir, _ = digits_run
    path = os.path.join(workdir, "mobilenet_v1.msgpack")
    with open(path + ".json") as f:
        model = MobileNetV1(**json.load(f))
    variables = load_variables(path)
    assert model.num_classes == 10 and model.alpha == 0.25
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
    logits = jax.jit(model.apply)(variables, images)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
