"""The training state: Flax's TrainState plus BatchNorm statistics and their moving average (EMA)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state


def ema_decay_at(decay: float, updates: jax.typing.ArrayLike) -> jax.Array:
    """The decay TF's `ExponentialMovingAverage(decay, num_updates=global_step)` uses:
    `min(decay, (1 + n) / (10 + n))`, n = `updates`.

    In the reference the average is applied after the optimizer step, which has already
    incremented global_step, so the first update sees n = 1 (decay 2/11) and the average follows
    the weights closely early on; `decay` is reached after (10 * decay - 1) / (1 - decay) steps
    (1,790 for 0.995, 89,990 for 0.9999).
    """
    n = jnp.asarray(updates, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


class TrainState(train_state.TrainState):
    """Everything a training step reads and writes; `apply_fn`, `tx` and `ema_decay` are static.

    `ema` is {"params", "batch_stats"}, the moving average of both the trainable parameters and
    the BatchNorm moving statistics (as the reference averages `tf.moving_average_variables()`
    too), or None when `ema_decay` is 0.
    """

    batch_stats: Any = None
    ema: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def variables(self, ema: bool = False) -> dict[str, Any]:
        """The model variables: the EMA ones when `ema` (the state must keep an EMA), else the raw ones."""
        if ema:
            if self.ema is None:
                raise ValueError("this state keeps no EMA (ema_decay is 0)")
            return dict(self.ema)
        return {"params": self.params, "batch_stats": self.batch_stats}

    def update_ema(self) -> TrainState:
        """The state with its EMA moved towards the current variables, after `self.step` updates."""
        if self.ema is None:
            return self
        decay = ema_decay_at(self.ema_decay, self.step)
        ema = jax.tree.map(lambda avg, new: decay * avg + (1.0 - decay) * new, self.ema, self.variables())
        return self.replace(ema=ema)


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_size: int,
    ema_decay: float = 0.0,
) -> TrainState:
    """A fresh state: `model` initialised on one `image_size` x `image_size` RGB image."""
    variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=tx.init(params),
        batch_stats=batch_stats,
        # Copies: donated steps must not see one buffer twice.
        ema=jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats}) if ema_decay > 0 else None,
        ema_decay=ema_decay,
    )
