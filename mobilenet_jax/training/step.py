"""The training and evaluation steps: pure functions of (state, batch[, rng]).

Both are written once for a named batch axis. With `axis_name=None` they run on one device;
`mesh.py` maps them over devices with `jax.pmap` or `jax.jit` + `jax.shard_map`, and then
gradients, metrics and (synchronised) BatchNorm statistics are averaged over that axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mobilenet_jax.data.spec import check_normalization, normalize
from mobilenet_jax.inference import predict
from mobilenet_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """How the train step treats its batch; see `train_step`."""

    label_smoothing: float = 0.0
    sync_batch_stats: bool = True
    skip_nonfinite_updates: bool = False
    freeze_batch_stats: bool = False
    # None: batch images are the model's input; a convention name: they are 0..255 pixels
    # (uint8, as the input pipeline sends them), normalised on the device.
    normalization: str | None = None

    def __post_init__(self) -> None:
        if self.normalization is not None:
            check_normalization(self.normalization)
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels and optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _mean_over(axis_name: str | None, tree: Any) -> Any:
    """Average `tree` over the mapped axis, or return it as it is on one device."""
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def model_input(images: jax.Array, normalization: str | None) -> jax.Array:
    """The model's input from batch images: as they are, or 0..255 pixels normalised in float32
    (the model casts them to its compute dtype)."""
    return images if normalization is None else normalize(images.astype(jnp.float32), normalization)


def _all_finite(tree: Any) -> jax.Array:
    """Whether every element of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    axis_name: str | None = None,
    label_smoothing: float = 0.0,
    sync_batch_stats: bool = True,
    skip_nonfinite_updates: bool = False,
    freeze_batch_stats: bool = False,
    normalization: str | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimizer step on `batch` ({"image": NHWC, "label": int}; see `StepOptions.normalization`).

    `rng` is the run's dropout key: it is folded with the step (and the device index) here.
    With `sync_batch_stats=False` each device normalises with its own batch statistics (the
    model must then have `bn_axis_name=None`) and the running averages are averaged afterwards,
    so the state stays identical on every device. With `skip_nonfinite_updates` a step whose
    loss or gradients are not finite leaves the state unchanged except the step counters.
    With an EMA (`state.ema_decay` > 0) the average is updated after the optimizer step.
    With `freeze_batch_stats` the model runs in inference mode, as Keras fine-tunes: BatchNorm
    normalises with its running statistics, which stay as they are, and dropout is off.
    """
    rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
    images = model_input(batch["image"], normalization)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if freeze_batch_stats:
            logits, batch_stats = state.apply_fn(variables, images, train=False), state.batch_stats
        else:
            logits, updates = state.apply_fn(
                variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
            )
            batch_stats = updates["batch_stats"]
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = _mean_over(axis_name, grads)
    if not sync_batch_stats:
        batch_stats = _mean_over(axis_name, batch_stats)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    loss, accuracy = _mean_over(axis_name, (loss, accuracy))

    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    ).update_ema()

    finite = jnp.isfinite(loss) & _all_finite(grads)
    if skip_nonfinite_updates:
        new_state = _keep_finite(finite, new_state, state)
    metrics = {
        "train_loss": loss,
        "train_accuracy": accuracy,
        "grad_norm": optax.global_norm(grads),
        "finite": finite,
    }
    return new_state, metrics


def _keep_finite(finite: jax.Array, new: TrainState, old: TrainState) -> TrainState:
    """`new` if `finite`, else `old` with only the step counters advanced: the state's step and
    the optimizer's schedule counts, so that the learning rate stays the one logged for the step."""
    pick = lambda a, b: jnp.where(finite, a, b)
    is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)
    opt_state = jax.tree.map(
        lambda n, o: n if is_schedule(n) else pick(n, o), new.opt_state, old.opt_state, is_leaf=is_schedule
    )
    kept = jax.tree.map(pick, new.replace(opt_state=None), old.replace(step=new.step, opt_state=None))
    return kept.replace(opt_state=opt_state)


def _sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
    """Loss, top-1 and top-5 hits summed over the examples where `mask` is 1."""
    top5 = lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": jnp.sum(cross_entropy(logits, labels) * mask),
        "top1": jnp.sum((top5[:, 0] == labels) * mask),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
    }


def eval_step(
    state: TrainState, batch: Batch, *, axis_name: str | None = None, normalization: str | None = None
) -> Metrics:
    """Sums over the real (mask True) examples of `batch`: loss, top-1 and top-5 hits, count.

    With an EMA these are the EMA variables' and the raw ones' come as `loss_raw`, `top1_raw`,
    `top5_raw`, from the same batch. Sums rather than means, so that padded final batches and
    uneven shards count exactly.
    """
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    images = model_input(batch["image"], normalization)
    raw = _sums(predict(state.apply_fn, state.variables(), images), labels, mask)
    if state.ema is None:
        sums = raw
    else:
        sums = _sums(predict(state.apply_fn, state.variables(ema=True), images), labels, mask)
        sums.update({f"{name}_raw": value for name, value in raw.items()})
    sums["count"] = jnp.sum(mask)
    return sums if axis_name is None else lax.psum(sums, axis_name)
