"""Every export against the Flax model on the same images: the fidelity table.

Float kinds are compared logit by logit: the largest |exported - Flax| over all images relative
to the largest |Flax logit|, against a tolerance (float32 1e-4, float16 1e-2). The same ratio
taken per image (each image's own largest logit) is reported beside it as the worst image: it
is larger where an image's logits are all small. Int8 kinds change predictions by design, so
against the Flax model they are measured rather than passed: top-1 agreement and, with labels,
the accuracy drop. Each "int8" kind is also compared with the JAX int8 model (`quantize`),
which every int8 format computes: the share of logits within one step of the logits' grid,
and top-1 agreement. A quantization-aware model (`quantization="int8"`) is compared as what each
export computes: its float kinds with its float arithmetic (quantization off: the folded float
weights), its int8 kinds with the model as trained (fake-quantized). The int8 kinds of any other
model are calibrated once, on `calibration`, and all take those ranges.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Iterable, Sequence

import jax
import numpy as np

from mobilenet_jax.export.exporters import FORMATS, export, load_exported
from mobilenet_jax.export.quantize import int8_forward, int8_model, output_grid, with_calibrated_ranges
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.inference import predict

TOLERANCES = {"float32": 1e-4, "float16": 1e-2}
ALL_EXPORTS: tuple[tuple[str, str], ...] = tuple((name, kind) for name, f in FORMATS.items() for kind in f.kinds.names)


@dataclasses.dataclass(frozen=True)
class Fidelity:
    """How closely one export reproduces the Flax model on the checked images."""

    format: str
    kind: str
    max_relative_diff: float  # max |exported - Flax| / max |Flax logit|, over all images
    worst_image_diff: float  # the same ratio per image, the worst image
    agreement: float  # fraction of images with the same top-1 class as the Flax model
    accuracy: float | None = None  # with labels
    reference_accuracy: float | None = None
    within_int8_step: float | None = None  # "int8" kinds: share of logits within one step of the JAX int8 model's
    int8_agreement: float | None = None  # "int8" kinds: top-1 agreement with the JAX int8 model

    @property
    def tolerance(self) -> float | None:
        """The bound on `max_relative_diff` for float kinds; None for int8 (measured only)."""
        return TOLERANCES.get(self.kind)

    @property
    def passed(self) -> bool | None:
        """Whether a float export is within its tolerance; None for int8 kinds."""
        return None if self.tolerance is None else self.max_relative_diff <= self.tolerance

    @property
    def accuracy_drop(self) -> float | None:
        """Flax accuracy minus the export's, in points of fraction (0.01 = 1 %)."""
        return None if self.accuracy is None else self.reference_accuracy - self.accuracy


def reference_logits(deployable: Deployable, images: np.ndarray, quantized: bool = True) -> np.ndarray:
    """Logits of the Flax model itself (eval mode, BatchNorm not folded); with `quantized=False`
    a quantization-aware model's float arithmetic (what its float exports compute)."""
    model = deployable.model if quantized else deployable.model.clone(quantization=None)
    forward = jax.jit(lambda x: predict(model.apply, deployable.variables, x))
    return np.asarray(forward(images))


def fidelity(
    format_name: str, kind: str, reference: np.ndarray, outputs: np.ndarray, labels: np.ndarray | None
) -> Fidelity:
    """Compare an export's `outputs` with the Flax model's `reference` logits."""
    diff, scale = np.max(np.abs(outputs - reference), axis=-1), np.max(np.abs(reference), axis=-1)
    per_image = diff / np.where(scale > 0, scale, 1.0)
    top1, ref_top1 = outputs.argmax(-1), reference.argmax(-1)
    accuracy = reference_accuracy = None
    if labels is not None:
        accuracy, reference_accuracy = float(np.mean(top1 == labels)), float(np.mean(ref_top1 == labels))
    return Fidelity(format_name, kind, float(diff.max() / max(scale.max(), 1e-30)), float(per_image.max()),
                    float(np.mean(top1 == ref_top1)), accuracy, reference_accuracy)


def int8_comparison(int8_logits: np.ndarray, step: float, outputs: np.ndarray) -> dict[str, float]:
    """How closely `outputs` reproduce the JAX int8 model's logits on the grid of step `step`."""
    within = np.abs(outputs - int8_logits) <= step * (1 + 1e-4)  # a step, give or take float32 rounding
    return {"within_int8_step": float(np.mean(within)),
            "int8_agreement": float(np.mean(outputs.argmax(-1) == int8_logits.argmax(-1)))}


def check_exports(
    deployable: Deployable,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    calibration: Iterable[np.ndarray] | None = None,
    exports: Sequence[tuple[str, str]] = ALL_EXPORTS,
    directory: str | None = None,
) -> list[Fidelity]:
    """Export `deployable` in each (format, kind), run it on `images` and compare with Flax.

    Int8 kinds need `calibration` batches, but for a quantization-aware model with trained
    ranges. Exports are written to `directory` (a temporary one by default).
    """
    reference = reference_logits(deployable, images)
    float_reference = reference_logits(deployable, images, quantized=False) if deployable.model.quantization else reference
    calibration = None if calibration is None else list(calibration)
    quantized = deployable
    if any(kind == "int8" for _, kind in exports):
        model, variables = with_calibrated_ranges(deployable.model, deployable.variables, calibration)
        quantized = dataclasses.replace(deployable, model=model, variables=variables)
        int8 = int8_model(model, variables)
        int8_logits = np.asarray(jax.jit(functools.partial(int8_forward, model, int8))(images))
        int8_step = float(output_grid(int8)["scale"])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for format_name, kind in exports:
            path = os.path.join(directory or tmp, f"model_{kind}{FORMATS[format_name].suffix}")
            export(quantized if kind == "int8" else deployable, format_name, path, kind=kind, calibration=calibration)
            outputs = load_exported(format_name, path)(images)
            expected = reference if "int8" in kind else float_reference
            result = fidelity(format_name, kind, expected, outputs, labels)
            if kind == "int8":
                result = dataclasses.replace(result, **int8_comparison(int8_logits, int8_step, outputs))
            results.append(result)
    return results


def format_table(results: Sequence[Fidelity]) -> str:
    """The results as a plain-text table, one row per export."""
    lines = [f"{'format':11} {'kind':13} {'max rel diff':>12} {'worst image':>11} {'tolerance':>9} {'pass':>5} "
             f"{'top-1 agree':>11} {'accuracy':>8} {'drop':>7} {'int8 <=1 step':>13} {'int8 top-1':>10}"]
    for r in results:
        tolerance = "-" if r.tolerance is None else f"{r.tolerance:.0e}"
        passed = "-" if r.passed is None else ("yes" if r.passed else "NO")
        accuracy = "-" if r.accuracy is None else f"{100 * r.accuracy:.2f}%"
        drop = "-" if r.accuracy_drop is None else f"{100 * r.accuracy_drop:+.2f}"
        within = "-" if r.within_int8_step is None else f"{100 * r.within_int8_step:.2f}%"
        int8_top1 = "-" if r.int8_agreement is None else f"{100 * r.int8_agreement:.2f}%"
        lines.append(f"{r.format:11} {r.kind:13} {r.max_relative_diff:12.2e} {r.worst_image_diff:11.2e} "
                     f"{tolerance:>9} {passed:>5} "
                     f"{100 * r.agreement:10.2f}% {accuracy:>8} {drop:>7} {within:>13} {int8_top1:>10}")
    return "\n".join(lines)
