"""Data parallelism over every device of every process, with `jax.jit` + `shard_map` or `jax.pmap`.

Both wrap the same step functions (`step.py`) with a named batch axis, and `make_parallel` pairs
the model's BatchNorm axis with the step's `sync_batch_stats`, so the two cannot disagree. The state is replicated:
on the mesh as global arrays with a fully replicated sharding, under pmap with a leading device
axis. Checkpoints always see the mesh form (`to_global` / `from_global`), so a run can resume
under either.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mobilenet_jax.choices import check_choice
from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.training import step as steps
from mobilenet_jax.training.state import TrainState

AXIS = "data"
PARALLELISMS = ("jit", "pmap")


def global_mesh() -> jax.sharding.Mesh:
    """A one-axis mesh over all devices of all processes."""
    return jax.make_mesh((jax.device_count(),), (AXIS,))


def check_batch_size(batch_size: int, name: str = "batch_size") -> None:
    """Raise a ValueError unless the global `batch_size` splits evenly over processes and devices."""
    devices = jax.device_count()
    if batch_size <= 0 or batch_size % devices:
        raise ValueError(
            f"{name} must be a positive multiple of the device count {devices} "
            f"({jax.process_count()} processes x {jax.local_device_count()} local devices), got {batch_size}"
        )


@dataclasses.dataclass(frozen=True)
class Parallel:
    """Step functions mapped over devices, and the transfers they need."""

    kind: str
    mesh: jax.sharding.Mesh
    model: MobileNetV1  # the model the mapped steps need: build the train state from it
    train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]]
    eval_step: Callable[[Any, dict], dict]

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's part of a global batch, as arrays split over the devices."""
        if self.kind == "pmap":
            n = jax.local_device_count()
            stacked = {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in local_batch.items()}
            return jax.device_put(stacked, _local_stack_sharding())
        sharding = NamedSharding(self.mesh, P(AXIS))
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}

    def from_global(self, state: TrainState) -> TrainState:
        """The step functions' form of a state held as replicated global arrays."""
        if self.kind == "jit":
            return jax.device_put(state, NamedSharding(self.mesh, P()))
        n = jax.local_device_count()
        sharding = _local_stack_sharding()
        return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(_local(x), (n, *np.shape(x))), sharding), state)

    def to_global(self, state: TrainState) -> TrainState:
        """Replicated global arrays on the mesh (what checkpoints store) from the step functions' form."""
        if self.kind == "jit":
            return state
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, _local(x)[0]), state)

    def fetch(self, tree: Any) -> Any:
        """Replicated device values as host numpy, without the pmap device axis."""
        tree = jax.tree.map(_local, tree)
        return jax.tree.map(lambda x: x[0], tree) if self.kind == "pmap" else tree


def _local_stack_sharding() -> NamedSharding:
    """pmap's layout: a leading axis over this process's devices, one entry each."""
    return NamedSharding(jax.make_mesh((jax.local_device_count(),), (AXIS,), devices=jax.local_devices()), P(AXIS))


def _local(x: Any) -> np.ndarray:
    """A replicated (or pmap-stacked) array's value as this process sees it.

    Across processes only this process's first shard is read: a replicated array's shard is the
    whole value, a pmap-stacked one's is one replica with its leading device axis of length 1.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def data_parallel_model(model: MobileNetV1, sync_batch_stats: bool) -> MobileNetV1:
    """`model` as the mapped train step needs it: BatchNorm synchronised over AXIS, or per device."""
    return model.clone(bn_axis_name=AXIS if sync_batch_stats else None)


def make_parallel(kind: str, model: MobileNetV1, options: steps.StepOptions = steps.StepOptions()) -> Parallel:
    """The train and eval steps mapped over all devices with `kind` ("jit" or "pmap").

    Build the train state from the returned `Parallel.model`. The train step donates its
    input state.
    """
    check_choice("parallelism", kind, PARALLELISMS)
    train = functools.partial(steps.train_step, axis_name=AXIS, **dataclasses.asdict(options))
    evaluate = functools.partial(steps.eval_step, axis_name=AXIS, normalization=options.normalization)
    mesh = global_mesh()
    if kind == "pmap":
        return Parallel(
            kind,
            mesh,
            data_parallel_model(model, options.sync_batch_stats),
            jax.pmap(train, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=0),
            jax.pmap(evaluate, axis_name=AXIS),
        )
    # check_vma=False keeps pmap's semantics: with it on, JAX would already sum the gradients of
    # the replicated parameters over devices, and the step's own pmean would scale them again.
    shard = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)
    return Parallel(
        kind,
        mesh,
        data_parallel_model(model, options.sync_batch_stats),
        jax.jit(shard(train, in_specs=(P(), P(AXIS), P()), out_specs=(P(), P())), donate_argnums=0),
        jax.jit(shard(evaluate, in_specs=(P(), P(AXIS)), out_specs=P())),
    )
