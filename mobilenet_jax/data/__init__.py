"""Input pipelines: TFDS datasets, a folder of images and the offline digits set, as numpy batches.

`spec` (TensorFlow-free) says what is wanted; `sources` opens a dataset once per run;
`preprocess` crops, resizes and normalises single images; `pipeline` batches, shards, seeds and
resumes. Only `spec` can be imported without TensorFlow.
"""

import importlib

from mobilenet_jax.data.spec import MIN_IMAGE_SIZE, NORMALIZATIONS, DatasetInfo, DataSpec  # noqa: F401

_TF_MODULES = ("pipeline", "preprocess", "sources")


def __getattr__(name: str):
    """The TensorFlow-backed names, imported on first use so that specs stay TF-free."""
    for module_name in _TF_MODULES:
        module = importlib.import_module(f"mobilenet_jax.data.{module_name}")
        if name == module_name:
            return module
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module 'mobilenet_jax.data' has no attribute {name!r}")
