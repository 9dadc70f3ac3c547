"""The speed benchmark's contenders: the Flax model's train step and inference, PyTorch eager and
compiled, and exported models on ONNX Runtime and LiteRT, each planned before it is built."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.timing import LEARNING_RATE, MOMENTUM, NUM_CLASSES, Contender, jax_infer, jax_train, random_batch
from mobilenet_jax.interop.torch_reference import TorchMobileNetV1
from mobilenet_jax.model import MobileNetV1


def jax_model(alpha: float, impl: str, dtype: str) -> MobileNetV1:
    """The Flax model with the given depthwise implementation and computation dtype."""
    return MobileNetV1(num_classes=NUM_CLASSES, alpha=alpha, depthwise_impl=impl, dtype=jnp.dtype(dtype))


def torch_train(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> Callable[[], Any]:
    """One SGD-momentum step of `model` (eager or compiled) on a fixed batch."""
    original = getattr(model, "_orig_mod", model)
    original.train()
    optimizer = torch.optim.SGD(original.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(labels.astype(np.int64))

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    return run


def torch_infer(model: torch.nn.Module, images: np.ndarray) -> Callable[[], Any]:
    """An eval-mode, no-grad forward pass of `model` (eager or compiled)."""
    getattr(model, "_orig_mod", model).eval()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))

    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def torch_models(alpha: float, compiled: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    """Factories of the PyTorch contenders: eager, and `torch.compile` unless skipped."""
    factories = {"torch eager": lambda: TorchMobileNetV1(NUM_CLASSES, alpha)}
    if compiled:
        factories["torch compile"] = lambda: torch.compile(TorchMobileNetV1(NUM_CLASSES, alpha))
    return factories


def exported_model(runtime: str, kind: str, model: MobileNetV1, images: np.ndarray) -> bytes:
    """The JAX benchmark model exported for `runtime` (a LiteRT flatbuffer or an ONNX model)."""
    from mobilenet_jax.export import Deployable
    from mobilenet_jax.export.onnx import export_onnx
    from mobilenet_jax.export.tflite import export_tflite

    deployable = Deployable(model, model.init(jax.random.key(0), images[:1]), images.shape[1])
    calibration = [random_batch(max(8, len(images)), images.shape[1], seed=1)[0]]
    if runtime == "litert":
        return export_tflite(deployable, kind=kind, calibration=calibration)
    if runtime == "onnxruntime":
        return export_onnx(deployable, kind=kind, calibration=calibration, batch_size=len(images))
    raise ValueError(f"unknown runtime {runtime!r}; choose litert or onnxruntime")


def exported_runner(runtime: str, flat: bytes, images: np.ndarray) -> Callable[[], Any]:
    """An exported model on its runtime, called on `images`."""
    from mobilenet_jax.export.onnx import OnnxModel
    from mobilenet_jax.export.tflite import TFLiteModel

    runner = (TFLiteModel if runtime == "litert" else OnnxModel)(flat, os.cpu_count())
    return lambda: runner(images)


@dataclasses.dataclass(frozen=True)
class Planned:
    """A contender not built yet: `make(prepare())` compiles or loads it and returns its call.

    `prepare` holds the work that is not the contender's own (exporting a model), so that a
    memory probe can leave it out.
    """

    name: str
    kind: str
    images: int
    make: Callable[[Any], Callable[[], Any]]
    prepare: Callable[[], Any] = lambda: None

    def build(self, prepared: Any = None) -> Contender:
        """The contender, or one that carries the reason it could not be built."""
        try:
            return Contender(self.name, self.kind, self.images,
                             self.make(self.prepare() if prepared is None else prepared))
        except Exception as e:  # noqa: BLE001 - a failing export or backend is reported, not fatal
            return Contender(self.name, self.kind, self.images, lambda: None,
                             error=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")


def exported_plan(args: argparse.Namespace, images: np.ndarray) -> list[Planned]:
    """Inference and latency contenders of every exported runtime and kind."""
    sizes = {"infer": args.batch, "latency": 1}
    return [
        Planned(f"{runtime} {export_kind}", kind, sizes[kind],
                functools.partial(exported_runner, runtime, images=images[:sizes[kind]]),
                functools.partial(exported_model, runtime, export_kind, jax_model(args.alpha, "conv", "float32"),
                                  images[:sizes[kind]]))
        for kind in args.kinds if kind in sizes
        for runtime in args.runtimes
        for export_kind in args.export_kinds
    ]


def plan(args: argparse.Namespace) -> list[Planned]:
    """Train, batch inference and batch-1 latency contenders for every JAX variant and PyTorch.

    JAX inference is timed twice: through `predict` (the project's path, in chunks where the
    backend table says so) and as plain `jax.jit(model.apply)` on the whole batch (`predict`
    without chunks is exactly that call).
    """
    images, labels = random_batch(args.batch, args.resolution)
    sizes = {"train": args.batch, "infer": args.batch, "latency": 1}
    makers: dict[str, Callable[[Any, np.ndarray], Callable[[], Any]]] = {
        "train": lambda m, x: pick(m, jax_train, torch_train)(m, x, labels[:len(x)]),
        "infer": lambda m, x: pick(m, jax_infer, torch_infer)(m, x),
    }
    makers["latency"] = makers["infer"]
    factories: dict[str, Callable[[], Any]] = {
        f"jax {impl} {dtype}": functools.partial(jax_model, args.alpha, impl, dtype)
        for dtype in args.dtypes
        for impl in args.impls
    }
    factories.update(torch_models(args.alpha, not args.skip_torch_compile))
    planned = []
    for kind in args.kinds:
        x = images[:sizes[kind]]
        for name, factory in factories.items():
            planned.append(Planned(name, kind, len(x), lambda _, f=factory, k=kind, x=x: makers[k](f(), x)))
            if kind != "train" and name.startswith("jax "):
                planned.append(Planned(name.replace("jax ", "jax apply ", 1), kind, len(x),
                                       lambda _, f=factory, x=x: jax_infer(f(), x, images_per_chunk=None)))
    return planned + exported_plan(args, images)


def pick(model: Any, for_jax: Callable, for_torch: Callable) -> Callable:
    """`for_jax` for a Flax model, `for_torch` for a PyTorch one."""
    return for_jax if isinstance(model, MobileNetV1) else for_torch
