"""The speed benchmark's arithmetic: throughput, ratios to the peers, the ceiling, peak memory."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks import memory
from benchmarks.speed import Contender, ratios_per_round, table


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
