"""Measured agreement between MobileNetV1 and the PyTorch reference on random weights.

`python -m mobilenet_jax.tools.equivalence` prints the table quoted in docs/equivalence.md. Every
check draws random weights with perturbed BatchNorm statistics, converts them with
`torch_to_flax`, and compares float32 results. Needs the `torch` extra.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import traverse_util

from mobilenet_jax.interop.torch_weights import torch_to_flax
from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.ops import backends
from mobilenet_jax.interop.torch_reference import random_reference


@dataclasses.dataclass(frozen=True)
class Case:
    """One comparison: model width, input size, activation, the set of kernel forms (ops.backends)."""

    alpha: float
    size: int
    activation: str = "relu"
    forms: str = "cpu"
    num_classes: int = 1000
    batch: int = 2
    seed: int = 0


def random_images(seed: int, batch: int, height: int, width: int | None = None) -> np.ndarray:
    """NHWC float32 standard-normal images."""
    return np.random.default_rng(seed).standard_normal((batch, height, width or height, 3), dtype=np.float32)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """NHWC numpy images as an NCHW torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def relative_errors(ours, reference) -> dict[str, float]:
    """||ours - reference|| / ||reference|| per leaf of two trees of equal structure."""
    flat_ours, flat_ref = traverse_util.flatten_dict(ours), traverse_util.flatten_dict(reference)
    if flat_ours.keys() != flat_ref.keys():
        raise ValueError(f"trees differ: {sorted(set(flat_ours) ^ set(flat_ref))}")
    return {
        "/".join(path): float(np.linalg.norm(np.asarray(flat_ours[path]) - flat_ref[path]) / np.linalg.norm(flat_ref[path]))
        for path in flat_ref
    }


def _setup(case: Case, train: bool):
    """The reference in the right mode, the matching Flax model, its variables and images."""
    reference = random_reference(case.seed, alpha=case.alpha, activation=case.activation, num_classes=case.num_classes)
    reference.train(train)
    model = MobileNetV1(
        alpha=case.alpha,
        activation=case.activation,
        num_classes=case.num_classes,
        **backends.model_impls(backends.KERNEL_SETS[case.forms]),
    )
    variables = torch_to_flax(reference.state_dict(), model)
    return reference, model, variables, random_images(case.seed + 1, case.batch, case.size)


def eval_difference(case: Case) -> tuple[float, float]:
    """Max |logits - reference logits| in eval mode, and max |reference logits| for scale."""
    reference, model, variables, images = _setup(case, train=False)
    with torch.no_grad():
        expected = reference(to_nchw(images)).numpy()
    logits = jax.jit(model.apply)(variables, jnp.asarray(images))
    return float(np.abs(logits - expected).max()), float(np.abs(expected).max())


def train_difference(case: Case) -> tuple[float, float]:
    """One train-mode forward: max |logits difference| and max relative error of the updated
    running statistics (PyTorch stores the unbiased variance; so does MobileNetV1's BatchNorm)."""
    reference, model, variables, images = _setup(case, train=True)
    expected = reference(to_nchw(images)).detach().numpy()
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    logits, updates = forward(variables, jnp.asarray(images))
    stats = torch_to_flax(reference.state_dict(), model)["batch_stats"]
    return float(np.abs(logits - expected).max()), max(relative_errors(updates["batch_stats"], stats).values())


def cross_entropy_loss(model: MobileNetV1, batch_stats, images, labels):
    """The mean cross-entropy of a train-mode forward, as a function of the parameters."""

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates["batch_stats"]

    return loss_fn


def gradient_errors(case: Case, reference_dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Relative error of d(mean cross-entropy)/d(parameter) against PyTorch, per parameter.

    The reference runs in float64 by default: through 27 train-mode BatchNorms PyTorch's own
    float32 CPU gradients drift up to ~1e-3 from their float64 values, more than ours do.
    """
    reference, model, variables, images = _setup(case, train=True)
    reference.to(reference_dtype)
    labels = np.arange(case.batch) % case.num_classes
    logits = reference(to_nchw(images).to(reference_dtype))
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
    grads = {name: p.grad for name, p in reference.named_parameters()}
    expected = torch_to_flax({**reference.state_dict(), **grads}, model)["params"]
    loss_fn = cross_entropy_loss(model, variables["batch_stats"], jnp.asarray(images), labels)
    ours, _ = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])
    return relative_errors(ours, expected)


# Gradients are compared where no float32 rounding of a ReLU input to the other side of zero
# changes them (seeds 0 and 1 have such an input: 1.4e-2 on an AVX2 CPU, for either set of forms).
GRADIENT_SEED = 2

REPORT_CASES = [
    Case(1.0, 224, "relu"), Case(0.75, 192, "relu6"), Case(0.5, 160, "relu"), Case(0.25, 128, "relu6"), Case(1.0, 97),
]


def report(kernel_sets: tuple[str, ...] = tuple(backends.KERNEL_SETS)) -> str:
    """The equivalence table as Markdown."""
    rows = ["| check | alpha | size | activation | kernels | max abs diff (logits) | other |",
            "|---|---|---|---|---|---|---|"]
    for forms in kernel_sets:
        for case in REPORT_CASES:
            case = dataclasses.replace(case, forms=forms)
            diff, scale = eval_difference(case)
            rows.append(f"| eval | {case.alpha} | {case.size} | {case.activation} | {forms} | {diff:.1e} | "
                        f"max abs logit {scale:.2f} |")
        case = Case(0.5, 96, forms=forms, batch=4, num_classes=10, seed=GRADIENT_SEED)
        diff, stats = train_difference(case)
        rows.append(f"| train forward | 0.5 | 96 | relu | {forms} | {diff:.1e} | running stats rel err {stats:.1e} |")
        for dtype in (torch.float64, torch.float32):
            errors = gradient_errors(case, dtype)
            rows.append(f"| gradients vs PyTorch {str(dtype)[6:]} | 0.5 | 96 | relu | {forms} | | max rel err over "
                        f"{len(errors)} params {max(errors.values()):.1e} |")
    return "\n".join(rows)


def main() -> None:
    """Print the report for the kernel sets named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kernels", default=",".join(backends.KERNEL_SETS), help="comma-separated kernel sets of ops.backends"
    )
    print(report(tuple(parser.parse_args().kernels.split(","))))


if __name__ == "__main__":
    main()
