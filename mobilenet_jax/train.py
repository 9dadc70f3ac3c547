"""The training loop: `train_and_evaluate(config, workdir)`.

config -> data -> model -> step -> loop -> checkpoints and metrics. Rerunning the same command
on the same workdir resumes from the latest checkpoint, with the input at the same position.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mobilenet_jax import checkpoint, data, optim, parallel, weights
from mobilenet_jax.config_utils import resolve_config
from mobilenet_jax.metrics import MetricWriter
from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.train_state import TrainState, create_train_state


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> MobileNetV1:
    """The MobileNetV1 that `config` describes, for `num_classes` classes."""
    return MobileNetV1(
        num_classes=num_classes,
        dtype=jnp.bfloat16 if config.half_precision else None,
        bn_axis_name=parallel.AXIS if config.sync_batch_stats else None,
        **config.model,
    )


class PreemptionWatch:
    """Turns SIGTERM (how Cloud TPU and batch schedulers preempt) into a request to stop cleanly."""

    def __init__(self) -> None:
        self._requested = threading.Event()
        self._previous = signal.signal(signal.SIGTERM, lambda *_: self._requested.set())

    def should_stop(self, at_sync_point: bool) -> bool:
        """Whether to checkpoint and stop now; every process must agree, so with several
        processes the flags are combined only at `at_sync_point` steps."""
        if jax.process_count() == 1:
            return self._requested.is_set()
        if not at_sync_point:
            return False
        flags = multihost_utils.process_allgather(np.array(self._requested.is_set()))
        return bool(np.any(flags))

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def evaluate(runner: parallel.Parallel, state: Any, config: ml_collections.ConfigDict) -> dict[str, float]:
    """Top-1, top-5 and loss over every example of the eval split, each counted exactly once."""
    batches = data.create_eval_iterator(config, process_index=jax.process_index(), process_count=jax.process_count())
    totals = None
    for batch in batches:
        sums = runner.eval_step(state, runner.put_batch(batch))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = runner.fetch(totals)
    count = float(totals["count"])
    return {
        "eval_accuracy": float(totals["top1"]) / count,
        "eval_top5": float(totals["top5"]) / count,
        "eval_loss": float(totals["loss"]) / count,
        "eval_examples": int(count),
    }


def _summarise(runner: parallel.Parallel, pending: list[tuple[int, dict]], allow_nonfinite: bool) -> dict[str, float]:
    """Average the pending per-step metrics on the host; raise at the first non-finite step."""
    steps = [step for step, _ in pending]
    host = runner.fetch([metrics for _, metrics in pending])
    finite = [bool(m["finite"]) for m in host]
    if not all(finite) and not allow_nonfinite:
        bad = steps[finite.index(False)]
        raise NonFiniteLossError(
            f"non-finite loss or gradients at step {bad}; the run stops and its last checkpoint is kept. "
            "Lower the learning rate, check the input data, or set --config.skip_nonfinite_updates=True."
        )
    keys = ("train_loss", "train_accuracy", "grad_norm")
    summary = {k: float(np.mean([m[k] for m, ok in zip(host, finite) if ok] or [np.nan])) for k in keys}
    summary["skipped_steps"] = finite.count(False)
    return summary


def _initial_state(config, model, tx, runner, checkpoints) -> TrainState:
    """A fresh state, or the latest checkpoint's, as replicated global arrays."""
    # One compiled program: initialising op by op compiles hundreds of small ones.
    init = jax.jit(
        lambda rng: create_train_state(rng, model, tx, config.image_size, config.ema_decay),
        out_shardings=jax.sharding.NamedSharding(runner.mesh, jax.sharding.PartitionSpec()),
    )
    state = init(jax.random.key(config.seed))
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(state)
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train (or, with `eval_only`, evaluate) the model that `config` describes; return the last
    evaluation's metrics. Resumes from `workdir/checkpoints` when it holds a checkpoint."""
    config = resolve_config(config)
    parallel.check_batch_size(config.batch_size)
    parallel.check_batch_size(config.eval_batch_size, "eval_batch_size")
    info = data.get_dataset_info(config)
    steps_per_epoch = info.num_train_examples // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {info.num_train_examples} training examples; lower it"
        )
    total_steps = optim.total_train_steps(config, steps_per_epoch)
    tx, schedule = optim.create_optimizer(config, steps_per_epoch)
    model = create_model(config, info.num_classes)
    checkpoint.check_resumable(workdir, config.to_dict(), record=not config.eval_only)
    runner = parallel.make_parallel(
        config.parallelism,
        label_smoothing=config.label_smoothing,
        sync_batch_stats=config.sync_batch_stats,
        skip_nonfinite_updates=config.skip_nonfinite_updates,
    )
    checkpoints = checkpoint.Checkpoints(
        workdir, keep=config.keep_checkpoints, keep_best=config.keep_best_checkpoint
    )
    state = _initial_state(config, model, tx, runner, checkpoints)
    start = int(state.step.addressable_data(0))
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, total_steps=total_steps, initial_step=start)
    try:
        if config.eval_only:
            if checkpoints.latest_step() is None:
                raise FileNotFoundError(f"eval_only: no checkpoint in {checkpoints.directory}")
            result = evaluate(runner, runner.from_global(state), config)
            writer.write(start, result)
            return result
        batches = data.create_train_iterator(
            config,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_step=start,
        )
        state, result = _train(config, runner, runner.from_global(state), batches, start, total_steps,
                               schedule, checkpoints, writer)
        state = runner.fetch(state)
        if int(state.step) == total_steps:
            _export(config, workdir, model, state)
        return result
    finally:
        checkpoints.close()
        writer.close()


def _train(config, runner, state, batches: Iterator, start: int, total_steps: int, schedule, checkpoints, writer):
    """Steps `start + 1 .. total_steps`, with logging, evaluation, checkpoints and preemption."""
    dropout_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    watch = PreemptionWatch()
    pending: list[tuple[int, dict]] = []
    result: dict[str, float] = {}
    interval_start, interval_steps = time.perf_counter(), 0
    try:
        for step in range(start + 1, total_steps + 1):
            state, metrics = runner.train_step(state, runner.put_batch(next(batches)), dropout_rng)
            pending.append((step, metrics))
            interval_steps += 1
            writer.advance(1)
            last = step == total_steps
            evaluate_now = last or step % config.eval_every_steps == 0
            save_now = last or evaluate_now or step % config.checkpoint_every_steps == 0
            log_now = save_now or step % config.log_every_steps == 0
            stop = watch.should_stop(at_sync_point=log_now)
            if not (log_now or stop):
                continue
            # Fetching the metrics is the only host synchronisation, and it precedes every save:
            # a non-finite state is never checkpointed.
            summary = _summarise(runner, pending, config.skip_nonfinite_updates)
            elapsed = time.perf_counter() - interval_start
            summary.update(
                learning_rate=float(schedule(step - 1)),
                images_per_second=interval_steps * config.batch_size / elapsed,
            )
            writer.write(step, summary)
            pending, interval_start, interval_steps = [], time.perf_counter(), 0
            eval_metrics = evaluate(runner, state, config) if evaluate_now else None
            if eval_metrics:
                writer.write(step, eval_metrics)
                result = eval_metrics
            if save_now or stop:
                checkpoints.save(runner.to_global(state), eval_metrics)
            if stop:
                checkpoints.wait()
                print(f"Stopped by SIGTERM after step {step}; checkpoint saved in {checkpoints.directory}.")
                break
            interval_start = time.perf_counter()
    finally:
        watch.close()
    checkpoints.wait()
    return state, result


def _export(config, workdir: str, model: MobileNetV1, state: TrainState) -> None:
    """Write the final (EMA) variables and the model's fields for use without the training code."""
    if jax.process_index() == 0:
        path = config.export_path or os.path.join(workdir, "mobilenet_v1.msgpack")
        weights.save_model(path, model, {"params": state.eval_params(), "batch_stats": state.batch_stats})
