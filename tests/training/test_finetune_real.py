"""End to end with real ImageNet weights: configs/finetune.py as it is, on a set it was not tuned on.

The weights are the real TF-Slim MobileNet v1 1.0-224 graph (tests/real_weights.py), named to
`init_from` as its frozen `.pb`; the set is `faces` of benchmarks.transfer_sets (scikit-image's
LFW subset, faces against non-faces), which played no part in choosing the recipe. The run is
measured exactly as `benchmarks.finetune_recipes` measures it, against the same linear-probe
ceiling, and must meet the fine-tuning target of docs/fine-tuning.md.
"""

from __future__ import annotations

import math

import pytest

from benchmarks import finetune_recipes, transfer_sets
from mobilenet_jax import weights
from tiny_runs import one_device_env

pytestmark = pytest.mark.slow

HELD_OUT_SET = "faces"
CLASSES = 2


def test_the_default_recipe_reaches_the_linear_probe_ceiling_on_a_held_out_set(real_graph, tmp_path):
    folder = transfer_sets.write_set(tmp_path, HELD_OUT_SET)
    ceiling = finetune_recipes.probe_accuracy(str(real_graph), folder)
    env = one_device_env(tmp_path / "xla_cache")
    result = finetune_recipes.finetune(str(real_graph), folder, {}, tmp_path / "run", env)
    print(f"{HELD_OUT_SET}: linear-probe ceiling {ceiling:.3f}, default recipe {result}")
    assert result["first_loss"] == pytest.approx(math.log(CLASSES), abs=1e-3)  # the zero classifier
    assert result["eval_accuracy"] >= ceiling - 0.02
    assert ceiling < 1 or result["eval_accuracy"] >= 0.95
    assert weights.load_class_names(str(tmp_path / "run" / weights.MODEL_FILE)) == ("face", "other")
