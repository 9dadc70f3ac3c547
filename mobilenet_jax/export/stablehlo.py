"""StableHLO export: `jax.export` with a symbolic batch dimension, serialized to one file.

The file holds the folded model with its weights as constants; `load_stablehlo(path)` gives a
function callable at any batch size, on any platform the export was lowered for. Kind "int8" is
the JAX int8 model of `quantize` (integer convolutions with int32 accumulation): on the trained
activation ranges of a quantization-aware model, else calibrated (post-training quantization).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mobilenet_jax.export.folding import inference_fn
from mobilenet_jax.export.quantize import int8_inference_fn
from mobilenet_jax.export.source import Deployable
from mobilenet_jax.export.writer import Kinds, written

KINDS = Kinds("StableHLO", ("float32", "int8"))


def export_stablehlo(
    deployable: Deployable,
    path: str | None = None,
    *,
    kind: str = "float32",
    calibration: Iterable[np.ndarray] | None = None,
    platforms: Sequence[str] | None = None,
) -> bytes:
    """Serialized `jax.export.Exported` of the folded model on (b, S, S, 3) float32 images.

    Kind "int8" needs `calibration` (float32 NHWC image batches), except for a quantization-aware
    model with trained ranges, which uses those and ignores `calibration`. `platforms` (e.g.
    ("cpu", "cuda", "tpu")) defaults to the current backend. The bytes are also written to `path`.
    """
    KINDS.check(deployable, kind, calibration)
    model, variables = deployable.model, deployable.variables
    size = deployable.image_size
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    forward = jax.jit(
        inference_fn(model, variables) if kind == "float32" else int8_inference_fn(model, variables, calibration)
    )
    exported = jax.export.export(forward, platforms=platforms)(spec)
    return written(exported.serialize(), path)


def load_stablehlo(path: str) -> Callable[[jax.Array], jax.Array]:
    """The exported function in `path`, callable on float32 NHWC images at any batch size."""
    return jax.export.deserialize(bytearray(epath.Path(path).read_bytes())).call
