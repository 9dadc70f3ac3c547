"""The one table of per-backend kernel defaults that every "auto" choice resolves through.

A row names, for one JAX backend, the form of each operation that has more than one: how the
3x3 depthwise convolution is computed, whether train-mode BatchNorm uses its hand-written
gradient, how the stem convolution is computed, and how many images eval-mode inference
computes at a time. Every form gives the same numbers (the tests prove it); only the speed
differs. A backend gets a tuned row only after it was measured there (BENCHMARKS.md, and
`python -m benchmarks.kernel_choices` measures it on any backend); every other backend gets
the canonical row: XLA's own convolutions and autodiff.
"""

from __future__ import annotations

import dataclasses

import jax

from mobilenet_jax.choices import check_choice

DEPTHWISE_FORMS = ("conv", "shifted")
BATCH_NORM_FORMS = ("autodiff", "fused")
STEM_FORMS = ("conv", "matmul")
# What a model's `<operation>_impl` field may be: "auto" or one of the operation's forms.
IMPLS = {
    "depthwise": ("auto", *DEPTHWISE_FORMS),
    "batch_norm": ("auto", *BATCH_NORM_FORMS),
    "stem": ("auto", *STEM_FORMS),
}


@dataclasses.dataclass(frozen=True)
class KernelDefaults:
    """The forms one backend uses when a model says "auto"."""

    depthwise: str
    batch_norm: str
    stem: str
    inference_images_per_chunk: int | None  # None: the whole batch at once
    # The shifted form's kernel gradient, summed over chunks of this many images (None: at once).
    depthwise_grad_images_per_chunk: int | None


CANONICAL = KernelDefaults(
    depthwise="conv",
    batch_norm="autodiff",
    stem="conv",
    inference_images_per_chunk=None,
    depthwise_grad_images_per_chunk=None,
)

# Measured rows only. CPU: 2-core Intel Xeon (family 6 model 207, AVX-512, AMX), MobileNet 1.0-224, batch 32
# (BENCHMARKS.md, "What auto picks").
BACKEND_DEFAULTS: dict[str, KernelDefaults] = {
    "cpu": KernelDefaults(
        depthwise="shifted",
        batch_norm="fused",
        stem="matmul",
        inference_images_per_chunk=4,
        depthwise_grad_images_per_chunk=2,
    ),
}


def kernel_defaults(backend: str | None = None) -> KernelDefaults:
    """The row for `backend` (default: JAX's default backend); unmeasured backends are canonical."""
    return BACKEND_DEFAULTS.get(backend or jax.default_backend(), CANONICAL)


def resolve(field: str, value: str, backend: str | None = None) -> str:
    """The form that `value` stands for: itself, or for "auto" the backend's default."""
    check_choice(f"{field}_impl", value, IMPLS[field])
    return getattr(kernel_defaults(backend), field) if value == "auto" else value


def model_impls(defaults: KernelDefaults) -> dict[str, str]:
    """The MobileNetV1 fields that fix every layer to the forms of `defaults` (e.g. CANONICAL)."""
    return dict(depthwise_impl=defaults.depthwise, batch_norm_impl=defaults.batch_norm, stem_impl=defaults.stem)


# Named sets of forms, for reports and benchmarks that compare them.
KERNEL_SETS = {"canonical": CANONICAL, "cpu": BACKEND_DEFAULTS["cpu"]}
