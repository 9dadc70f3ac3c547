"""The benchmarks' arithmetic: throughput, ratios to the peers, the ceiling, peak memory; the dilated forms."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from benchmarks import memory
from benchmarks.dilated_depthwise import FORMS, dilated_layers
from benchmarks.speed_report import ratios_per_round, table
from benchmarks.timing import Contender
from mobilenet_jax.ops.conv import conv_padding


def timed(name: str, seconds: list[float], kind: str = "train") -> dict:
    contender = Contender(name=name, kind=kind, images=32, run=lambda: None, first_call_s=5.0)
    contender.seconds = seconds
    return contender.summary()


def test_ratios_are_taken_round_by_round_against_both_peers_and_the_ceiling_share():
    # The machine slows down in round 2 for all, then JAX alone is slow in round 3.
    jax_result = timed("jax shifted float32", [1.0, 3.0, 2.0], "infer")
    eager = timed("torch eager", [2.0, 4.5, 2.0], "infer")
    ort = timed("onnxruntime float32", [0.5, 1.5, 1.0], "infer")
    assert ratios_per_round(jax_result, eager) == [2.0, 1.5, 1.0]
    assert jax_result["images_per_s"] == 16.0 and jax_result["compile_s"] == 3.0
    rows = table([jax_result, eager, ort], ceiling_gflops=64.0, flops=lambda kind: 1e9).splitlines()
    row = next(line for line in rows if line.startswith("infer    jax")).split()
    # 16 img/s x 1 GFLOP = 16 GFLOP/s of a 64 GFLOP/s ceiling; rounds 2.0/1.5/1.0 and 0.5/0.5/0.5.
    assert row[-5:] == ["25%", "1.50x", "(1.00-2.00)", "0.50x", "(0.50-0.50)"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_peak_of_a_call_counts_what_it_allocates_and_frees():
    baseline = memory.settled_resident_mb()
    peak = memory.peak_of_call_mb(lambda: np.ones(300 * 2**20 // 8).sum(), baseline)
    assert 290 < peak < 400


def test_input_pipeline_builds_imagenet_like_jpegs_and_times_the_training_iterator(tmp_path):
    from benchmarks import photos, pipeline_probes

    data_dir = photos.dataset_dir(tmp_path, examples=16, grain=30)
    photos.build_dataset(data_dir, examples=16, grain=30, shards=2)
    stats = photos.dataset_stats(data_dir)
    assert stats["examples"] == 16 and stats["shards"] == 2 and stats["classes"] == 10
    assert 120 <= stats["mean_height"] <= 500 and 120 <= stats["mean_width"] <= 500

    result = pipeline_probes.measure_pipeline(str(data_dir), image_size=32, batch=8, warmup=1, batches=1)
    # The current code yields uint8 pixels and int32 labels: 32 * 32 * 3 + 4 bytes per image.
    assert result["dtype"] == "uint8" and result["bytes_per_image"] == 32 * 32 * 3 + 4
    assert result["images"] == 8 and result["images_per_s"] > 0

    from benchmarks import resume

    first = resume.first_batch(str(data_dir), start_step=1, batch=8, shuffle_buffer=8)
    assert first["seconds"] > 0 and first["mb_read"] > 0


def test_input_pipeline_table_compares_the_last_tree_with_the_first_round_by_round():
    from benchmarks.input_pipeline import pipeline_table

    def row(tree: str, round_index: int, rate: float, dtype: str, size: int) -> dict:
        return dict(tree=tree, round=round_index, cores=1, images_per_s=rate, dtype=dtype, bytes_per_image=size,
                    busy_cores=0.1, load1=0.5)

    rows = [row("old", 0, 100.0, "float32", 602116), row("new", 0, 150.0, "uint8", 150532),
            row("old", 1, 80.0, "float32", 602116), row("new", 1, 100.0, "uint8", 150532)]
    lines = pipeline_table(rows, ["old", "new"], [1]).splitlines()
    # Medians 90 and 125 img/s; per round 1.50x and 1.25x.
    assert "new / old on 1 core(s): 1.39x (per round 1.25-1.50x)" in lines
    assert "bytes per yielded image: 150,532 / 602,116 = 0.25x" in lines


def test_dilated_depthwise_benchmark_takes_the_atrous_layers_and_its_space_to_batch_form_is_exact():
    assert dilated_layers(16, 224, 1.0) == [(14, 1024, 2)]
    assert dilated_layers(8, 224, 1.0) == [(28, 512, 2)] * 6 + [(28, 1024, 4)]
    x = jax.random.normal(jax.random.key(0), (2, 13, 10, 8))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 8))
    for dilation in (2, 3):
        for padding in ("same", "torch"):
            pad = conv_padding((13, 10), 3, 1, padding, dilation)
            want = FORMS["conv"](x, kernel, 1, pad, dilation)
            for name in ("space-to-batch", "space-to-batch shifted"):
                np.testing.assert_allclose(FORMS[name](x, kernel, 1, pad, dilation), want, rtol=1e-5, atol=1e-5)
