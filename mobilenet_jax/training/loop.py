"""The training loop: `train_and_evaluate(config, workdir)`.

config -> data -> model -> step -> loop -> checkpoints and metrics. Rerunning the same command
on the same workdir resumes from the latest checkpoint, with the input at the same position.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mobilenet_jax import data, weights
from mobilenet_jax.paths import to_path
from mobilenet_jax.training import checkpoint, init, mesh, optim
from mobilenet_jax.training.config import Experiment, resolve
from mobilenet_jax.training.metrics import MetricWriter
from mobilenet_jax.training.preemption import PreemptionWatch
from mobilenet_jax.training.state import TrainState, create_train_state



class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def evaluate(runner: mesh.Parallel, state: Any, source: Any, spec: data.DataSpec) -> dict[str, float]:
    """Top-1, top-5 and loss over every example of the eval split, each counted exactly once."""
    batches = data.eval_batches(source, spec, process_index=jax.process_index(), process_count=jax.process_count())
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


def _summarise(runner: mesh.Parallel, pending: list[tuple[int, dict]], allow_nonfinite: bool) -> dict[str, float]:
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


def _initial_state(
    experiment: Experiment, tx: optax.GradientTransformation, runner: mesh.Parallel, checkpoints: checkpoint.Checkpoints
) -> TrainState:
    """A fresh state (from config.init_from's weights when set), or the latest checkpoint's, as
    replicated global arrays."""

    def fresh(rng: jax.Array, variables: dict[str, Any] | None) -> TrainState:
        state = create_train_state(rng, runner.model, tx, experiment.data.image_size, experiment.loop.ema_decay)
        return state if variables is None else init.start_from(state, variables)

    # One compiled program: initialising op by op compiles hundreds of small ones.
    initialise = jax.jit(fresh, out_shardings=jax.sharding.NamedSharding(runner.mesh, jax.sharding.PartitionSpec()))
    initial = experiment.initial.variables if experiment.initial else None
    state = initialise(jax.random.key(experiment.loop.seed), initial)
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(state)
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train (or, with `eval_only`, evaluate) the model that `config` describes; return the last
    evaluation's metrics. Resumes from `workdir/checkpoints` when it holds a checkpoint."""
    experiment = resolve(config)
    mesh.check_batch_size(experiment.data.batch_size)
    mesh.check_batch_size(experiment.data.eval_batch_size, "eval_batch_size")
    loop = experiment.loop
    source = data.open_source(experiment.data)
    steps_per_epoch = source.info.num_train_examples // experiment.data.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size {experiment.data.batch_size} exceeds the {source.info.num_train_examples} training "
            "examples; lower it"
        )
    total_steps = optim.total_train_steps(experiment.optimizer, steps_per_epoch)
    tx, schedule = optim.create_optimizer(experiment.optimizer, steps_per_epoch)
    model = experiment.create_model(source.info.num_classes)
    checkpoint.check_resumable(workdir, experiment.config.to_dict(), record=not loop.eval_only)
    runner = mesh.make_parallel(loop.parallelism, model, experiment.step)
    checkpoints = checkpoint.Checkpoints(workdir, keep=loop.keep_checkpoints, keep_best=loop.keep_best_checkpoint)
    state = _initial_state(experiment, tx, runner, checkpoints)
    start = int(state.step.addressable_data(0))
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0, total_steps=total_steps, initial_step=start)
    evaluate_now = lambda state: evaluate(runner, state, source, experiment.data)
    try:
        if loop.eval_only:
            if checkpoints.latest_step() is None:
                raise FileNotFoundError(f"eval_only: no checkpoint in {checkpoints.directory}")
            result = evaluate_now(runner.from_global(state))
            writer.write(start, result)
            return result
        batches = data.train_batches(
            source,
            experiment.data,
            seed=loop.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_step=start,
        )
        state, result = _train(experiment, runner, runner.from_global(state), batches, start, total_steps,
                               schedule, checkpoints, writer, evaluate_now)
        state = runner.fetch(state)
        if int(state.step) == total_steps and jax.process_index() == 0:
            path = loop.export_path or str(to_path(workdir) / weights.MODEL_FILE)
            weights.save_model(path, model, {"params": state.eval_params(), "batch_stats": state.batch_stats})
        return result
    finally:
        checkpoints.close()
        writer.close()


def _train(
    experiment: Experiment,
    runner: mesh.Parallel,
    state: TrainState,
    batches: Iterator,
    start: int,
    total_steps: int,
    schedule: optax.Schedule,
    checkpoints: checkpoint.Checkpoints,
    writer: MetricWriter,
    evaluate_now: Callable[[TrainState], dict[str, float]],
) -> tuple[TrainState, dict[str, float]]:
    """Steps `start + 1 .. total_steps`, with logging, evaluation, checkpoints and preemption."""
    loop = experiment.loop
    dropout_rng = jax.random.fold_in(jax.random.key(loop.seed), 1)
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
            evaluate_step = last or step % loop.eval_every_steps == 0
            save_now = last or evaluate_step or step % loop.checkpoint_every_steps == 0
            log_now = save_now or step % loop.log_every_steps == 0
            stop = watch.should_stop(at_sync_point=log_now)
            if not (log_now or stop):
                continue
            # Fetching the metrics is the only host synchronisation, and it precedes every save:
            # a non-finite state is never checkpointed.
            summary = _summarise(runner, pending, experiment.step.skip_nonfinite_updates)
            elapsed = time.perf_counter() - interval_start
            summary.update(
                learning_rate=float(schedule(step - 1)),
                images_per_second=interval_steps * experiment.data.batch_size / elapsed,
            )
            writer.write(step, summary)
            pending, interval_start, interval_steps = [], time.perf_counter(), 0
            eval_metrics = evaluate_now(state) if evaluate_step else None
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
