"""The one place where the exporters import project code that is being reorganised.

Everything else in `mobilenet_jax.export` imports these names from here, so a move of the
kernels, the data pipeline or the training loop changes one line each.
"""

from __future__ import annotations

from typing import Any

from mobilenet_jax.layers import conv_padding


def data_module() -> Any:
    """The data pipeline (`create_eval_iterator`, `create_train_iterator`, `preprocess_for_eval`).

    Imported on use: it imports TensorFlow, which `import mobilenet_jax` must not.
    """
    from mobilenet_jax import data

    return data


def train_and_evaluate(config: Any, workdir: str) -> dict[str, float]:
    """Train the model `config` describes into `workdir` (writes `mobilenet_v1.msgpack`)."""
    from mobilenet_jax.train import train_and_evaluate as train

    return train(config, workdir)


def load_pretrained(name: str) -> Any:
    """Pretrained weights by name, through `mobilenet_jax.interop.pretrained.load_pretrained`."""
    try:
        from mobilenet_jax.interop.pretrained import load_pretrained as load
    except ImportError as error:
        raise ValueError(
            f"--weights {name!r} is neither a model file nor a run directory, and pretrained names "
            "need mobilenet_jax.interop.pretrained, which this installation lacks; pass a "
            "mobilenet_v1.msgpack path or a workdir"
        ) from error
    return load(name)


__all__ = ["conv_padding", "data_module", "load_pretrained", "train_and_evaluate"]
