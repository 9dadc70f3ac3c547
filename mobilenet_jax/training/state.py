"""The training state: Flax's TrainState plus BatchNorm statistics and the parameter EMA."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state


class TrainState(train_state.TrainState):
    """Everything a training step reads and writes; `apply_fn`, `tx` and `ema_decay` are static."""

    batch_stats: Any = None
    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def eval_params(self) -> Any:
        """The parameters to evaluate and export: the EMA when it is kept, else the raw ones."""
        return self.ema_params if self.ema_decay > 0 else self.params


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_size: int,
    ema_decay: float = 0.0,
) -> TrainState:
    """A fresh state: `model` initialised on one `image_size` x `image_size` RGB image."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0 disables the EMA), got {ema_decay}")
    variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        batch_stats=variables["batch_stats"],
        # A copy: donated steps must not see one buffer twice.
        ema_params=jax.tree.map(jnp.copy, params) if ema_decay > 0 else None,
        ema_decay=ema_decay,
    )
