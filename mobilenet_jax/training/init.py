"""Initial variables for fine-tuning: what `config.init_from` holds, its arrays read once, then merged.

`init_from` is any weights reference `pretrained.resolve_weights` accepts: a registered pretrained
name (`mobilenet_v1_100_224.tf_slim`), a TF-Slim, Keras or timm file, a model file (with its
`.json` fields beside it), or a finished run's workdir, each local or gs://. The config gate
reads only its description (`describe`: model fields, normalisation, activation ranges); the
loop reads its arrays (`load_variables`). The normalisation is the one the weights record (a
run's `config.json`, a registry entry's), None where they record none. The backbone always
comes from these weights; the classifier is kept when its shape matches the dataset's class
count and re-initialised otherwise.
Float weights fine-tuned quantization-aware (`quantization="int8"`) have no activation ranges:
those start fresh and are tracked from the first training batch.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp
from flax import traverse_util

from mobilenet_jax.choices import check_choice
from mobilenet_jax.interop import pretrained
from mobilenet_jax.interop.describe import WeightsInfo, describe_weights
from mobilenet_jax.model import is_activation_range
from mobilenet_jax.training.optim import CLASSIFIER
from mobilenet_jax.training.state import TrainState

# MobileNetV1 fields that decide what the weights compute: fine-tuning takes them from the weights.
ARCHITECTURE_FIELDS = ("alpha", "min_depth", "activation", "padding", "bn_epsilon")
NEW_CLASSIFIER_INITS = ("zeros", "random")
T = TypeVar("T")


def describe(init_from: str) -> WeightsInfo:
    """What the weights `init_from` names hold, their arrays unread (`describe_weights`); a
    ValueError says what it accepts when it names none."""
    return _named(init_from, describe_weights)


def load_variables(init_from: str) -> dict[str, Any]:
    """The variables of the weights `init_from` names (`pretrained.resolve_weights`)."""
    return _named(init_from, lambda reference: pretrained.resolve_weights(reference).variables)


def _named(init_from: str, read: Callable[[str], T]) -> T:
    """`read(init_from)`, a missing file refused as a ValueError that names init_from."""
    try:
        return read(init_from)
    except FileNotFoundError as error:
        raise ValueError(f"init_from={init_from!r}: {error}") from error


def merge(fresh: dict[str, Any], initial: dict[str, Any], collection: str) -> dict[str, Any]:
    """`fresh` (a model's freshly initialised `collection`) with every leaf taken from `initial`,
    except the classifier's when its shape differs (another class count) and the activation
    ranges of a quantization-aware model that float weights lack: those stay fresh.

    Backbone leaves must all be in `initial` with their shapes; a missing or reshaped one raises.
    Leaves of `initial` the model does not have (the ranges of quantization-aware weights
    fine-tuned in float) are left out.
    """
    loaded = traverse_util.flatten_dict(initial.get(collection, {}), sep="/")
    merged = {}
    for path, leaf in traverse_util.flatten_dict(fresh, sep="/").items():
        source = loaded.get(path)
        same = source is not None and tuple(source.shape) == tuple(leaf.shape)
        optional = path.startswith(CLASSIFIER + "/") or (source is None and is_activation_range(path))
        if not same and not optional:
            found = "missing" if source is None else f"shape {tuple(source.shape)}"
            raise ValueError(
                f"init_from weights do not fit the model: {collection} {path} is {found}, the model needs "
                f"{tuple(leaf.shape)}; check config.model against the weights"
            )
        merged[path] = jnp.asarray(source, leaf.dtype) if same else leaf
    return traverse_util.unflatten_dict(merged, sep="/")


def start_from(state: TrainState, variables: dict[str, Any], new_classifier_init: str = "zeros") -> TrainState:
    """`state` (freshly initialised) with the loaded `variables` merged in (see `merge`), and its
    optimizer state and EMA restarted from the result.

    A classifier the weights cannot supply (another class count) starts at zero with
    `new_classifier_init="zeros"`: every class equally likely, a first loss of ln(num_classes),
    and no gradient into the backbone until the classifier has learned something; "random" keeps
    the model's initialiser.
    """
    check_choice("new_classifier_init", new_classifier_init, NEW_CLASSIFIER_INITS)
    fresh = state.params
    if new_classifier_init == "zeros":
        fresh = {**fresh, CLASSIFIER: jax.tree.map(jnp.zeros_like, fresh[CLASSIFIER])}
    params = merge(fresh, variables, "params")
    batch_stats = merge(state.batch_stats, variables, "batch_stats")
    return state.replace(
        params=params,
        batch_stats=batch_stats,
        opt_state=state.tx.init(params),
        ema=jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats}) if state.ema_decay > 0 else None,
    )
