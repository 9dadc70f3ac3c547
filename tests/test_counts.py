"""Parameter and mult-add counts against FACTS: the paper's tables and the model itself."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from mobilenet_jax import VARIANTS, MobileNetV1
from mobilenet_jax.counts import count

# Mult-adds (millions, classifier included) and trainable parameters with 1001 classes.
PAPER_TABLE_1001 = {
    1.0: ((568.7, 418.1, 290.7, 186.4), 4_233_001),
    0.75: ((325.4, 239.3, 166.4, 106.8), 2_586_329),
    0.5: ((149.5, 110.0, 76.5, 49.2), 1_332_105),
    0.25: ((41.0, 30.2, 21.1, 13.6), 470_329),
}


def test_counts_of_mobilenet_1_0_224_with_1000_classes():
    c = count(alpha=1.0, resolution=224, num_classes=1000)
    assert c.params == 4_231_976
    assert c.conv_params == 3_185_088
    assert c.bn_params == 21_888
    assert c.classifier_params == 1_025_000
    assert c.conv_mult_adds == 567_716_352
    assert c.classifier_mult_adds == 1_024_000
    assert c.mult_adds == 568_740_352


@pytest.mark.parametrize("alpha", sorted(PAPER_TABLE_1001))
def test_paper_table_with_1001_classes(alpha):
    mult_adds, params = PAPER_TABLE_1001[alpha]
    for size, expected in zip((224, 192, 160, 128), mult_adds):
        assert round(count(alpha, size, 1001).mult_adds / 1e6, 1) == expected
    assert count(alpha, 224, 1001).params == params


@pytest.mark.parametrize("alpha,num_classes", [(1.0, 1000), (0.5, 1001), (0.3, 10), (0.25, 0)])
def test_parameter_count_equals_the_models_variables(alpha, num_classes):
    variables = jax.eval_shape(
        MobileNetV1(alpha=alpha, num_classes=num_classes).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    )
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == count(alpha, 224, num_classes).params
    assert sum(x.size for x in jax.tree.leaves(variables["batch_stats"])) == count(alpha, 224, num_classes).bn_params


@pytest.mark.parametrize("output_stride", [None, 16, 8])
def test_mult_adds_equal_xla_flops_of_the_convolutions(output_stride):
    # XLA counts 2 flops per multiply-add of a dot; count() must agree on the GEMM layers.
    model = MobileNetV1(alpha=0.25, num_classes=10, depthwise_impl="conv", output_stride=output_stride)
    x = jnp.zeros((1, 64, 64, 3))
    variables = model.init(jax.random.key(0), x)
    cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    expected = count(0.25, 64, 10, output_stride=output_stride).mult_adds
    # Elementwise work (BatchNorm, ReLU, pooling) adds a few percent on top of 2 x mult-adds.
    assert 2 * expected <= cost["flops"] <= 2.2 * expected


def test_atrous_counts_keep_the_feature_maps_at_the_output_stride():
    # Past the output stride every layer keeps the size: blocks 12-13 at 14x14 instead of 7x7.
    paper, atrous = count(1.0, 224, 1000), count(1.0, 224, 1000, output_stride=16)
    block12, block13 = 9 * 512 + 512 * 1024, 9 * 1024 + 1024 * 1024
    assert atrous.mult_adds - paper.mult_adds == (14 * 14 - 7 * 7) * (block12 + block13)
    assert atrous.params == paper.params
    assert count(1.0, 224, 1000, output_stride=32) == paper


def test_counts_command_prints_the_16_variants():
    out = subprocess.run([sys.executable, "-m", "mobilenet_jax.counts"], capture_output=True, text=True, check=True).stdout
    for name in VARIANTS:
        assert name in out
    assert "568.7" in out and "4,233,001" in out and "13.6" in out
