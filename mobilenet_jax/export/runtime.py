"""Optional frameworks of the exporters, imported on use with a one-line error when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

# Import name -> pip requirement.
PACKAGES = {
    "tensorflow": "tensorflow-cpu",
    "tf2onnx": "tf2onnx",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "ai_edge_litert": "ai-edge-litert",
}


class MissingRuntimeError(ImportError):
    """An export or check needs a framework that is not installed."""


def require(module: str) -> ModuleType:
    """`import module`, or MissingRuntimeError naming the package and the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = PACKAGES[module.split(".")[0]]
        raise MissingRuntimeError(
            f"{module} is not installed and this export needs it: pip install {package} "
            "(or pip install 'mobilenet-jax[export]')"
        ) from error
