"""The speed benchmark's arithmetic: throughput and the ratios to PyTorch eager."""

from __future__ import annotations

from benchmarks.speed import Contender, ratios_per_round, table


def timed(name: str, seconds: list[float]) -> dict:
    contender = Contender(name=name, kind="train", images=32, run=lambda: None, first_call_s=5.0)
    contender.seconds = seconds
    return contender.summary()


def test_ratios_are_taken_round_by_round_and_of_the_medians():
    # The machine slows down in round 2 for both, then JAX alone is slow in round 3.
    jax_result = timed("jax shifted float32", [1.0, 3.0, 2.0])
    eager = timed("torch eager", [2.0, 4.5, 2.0])
    assert ratios_per_round(jax_result, eager) == [2.0, 1.5, 1.0]
    assert jax_result["images_per_s"] == 16.0 and jax_result["compile_s"] == 3.0
    row = next(line for line in table([jax_result, eager]).splitlines() if line.startswith("train    jax"))
    # Medians 2.0 s vs 2.0 s give 1.00x; the rounds give 1.50x (1.00-2.00).
    assert row.split()[-3:] == ["1.00x", "1.50x", "(1.00-2.00)"]
