"""The training loop: `train_and_evaluate(config, workdir)`.

config -> data -> model -> step -> loop -> checkpoints and metrics. Rerunning the same command
on the same workdir resumes from the latest checkpoint, with the input at the same position.
A workdir belongs to one run at a time (`lock`), and a finished run's model is always written
into its workdir, whatever becomes of `export_path` (`model_files`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mobilenet_jax.data.spec import DataSpec
from mobilenet_jax.interop.preprocessing import for_run
from mobilenet_jax.paths import to_path
from mobilenet_jax.training import checkpoint, init, lock, mesh, optim, run_record
from mobilenet_jax.training.config import Experiment, resolve
from mobilenet_jax.training.metrics import METRICS_FILE, MetricWriter, read_metrics
from mobilenet_jax.training.model_files import ModelFiles, exported_variables
from mobilenet_jax.training.preemption import PreemptionWatch
from mobilenet_jax.training.prefetch import DevicePrefetch
from mobilenet_jax.training.state import TrainState, create_train_state

# Per-step metrics of a run stopped between two log rows, for its next row after the resume.
UNLOGGED_FILE = "unlogged_steps.json"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def evaluate(runner: mesh.Parallel, state: Any, source: Any, spec: DataSpec) -> dict[str, float]:
    """Top-1, top-5 and loss over every example of the eval split, each counted exactly once.

    With an EMA, `eval_accuracy`, `eval_top5` and `eval_loss` are the EMA variables' and
    `eval_accuracy_raw`, `eval_top5_raw` and `eval_loss_raw` the raw ones'.
    """
    from mobilenet_jax.data import pipeline  # TensorFlow, imported on use

    batches = pipeline.eval_batches(source, spec, process_index=jax.process_index(), process_count=jax.process_count())
    totals = None
    with DevicePrefetch(batches, runner.put_batch) as device_batches:
        for batch in device_batches:
            sums = runner.eval_step(state, batch)
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = runner.fetch(totals)
    count = float(totals["count"])
    names = {"top1": "eval_accuracy", "top5": "eval_top5", "loss": "eval_loss"}
    result = {}
    for suffix in ("", "_raw") if "top1_raw" in totals else ("",):
        result.update({names[key] + suffix: float(totals[key + suffix]) / count for key in names})
    return {**result, "eval_examples": int(count)}


def _host_metrics(runner: mesh.Parallel, pending: list[tuple[int, dict]], allow_nonfinite: bool) -> list[dict]:
    """The pending per-step metrics on the host, each with its step; raise at the first non-finite step."""
    host = [{"step": step, **metrics} for (step, _), metrics in zip(pending, runner.fetch([m for _, m in pending]))]
    for record in host:
        if not record["finite"] and not allow_nonfinite:
            raise NonFiniteLossError(
                f"non-finite loss or gradients at step {record['step']}; the run stops and its last checkpoint is "
                "kept. Lower the learning rate, check the input data, or set --config.skip_nonfinite_updates=True."
            )
    return host


def _summarise(host: list[dict]) -> dict[str, float]:
    """The mean of the finite steps' metrics, and how many steps were skipped."""
    finite = [record for record in host if record["finite"]]
    keys = ("train_loss", "train_accuracy", "grad_norm")
    summary = {k: float(np.mean([float(r[k]) for r in finite] or [np.nan])) for k in keys}
    summary["skipped_steps"] = len(host) - len(finite)
    return summary


def _hold_unlogged(workdir: str, host: list[dict]) -> None:
    """Keep the metrics of steps run since the last log row for the resumed run's next row."""
    if jax.process_index() == 0:
        plain = [{k: np.asarray(v).item() for k, v in record.items()} for record in host]
        (to_path(workdir) / UNLOGGED_FILE).write_text(json.dumps(plain))


def _held_unlogged(workdir: str, start: int) -> list[dict]:
    """The metrics `_hold_unlogged` kept when they end at step `start`, else []."""
    path = to_path(workdir) / UNLOGGED_FILE
    held = json.loads(path.read_text()) if path.exists() else []
    return held if held and held[-1]["step"] == start else []


def _initial_state(
    experiment: Experiment, tx: optax.GradientTransformation, runner: mesh.Parallel, checkpoints: checkpoint.Checkpoints
) -> TrainState:
    """A fresh state (from config.init_from's weights when set, read here once), or the latest
    checkpoint's, as replicated global arrays (a resumed run reads no init_from weights)."""

    def fresh(rng: jax.Array, variables: dict[str, Any] | None) -> TrainState:
        state = create_train_state(rng, runner.model, tx, experiment.data.image_size, experiment.loop.ema_decay)
        return state if variables is None else init.start_from(state, variables, experiment.loop.new_classifier_init)

    # One compiled program: initialising op by op compiles hundreds of small ones.
    initialise = jax.jit(fresh, out_shardings=jax.sharding.NamedSharding(runner.mesh, jax.sharding.PartitionSpec()))
    resume = bool(checkpoints.all_steps())
    initial = init.load_variables(experiment.config.init_from) if experiment.initial and not resume else None
    state = initialise(jax.random.key(experiment.loop.seed), initial)
    return checkpoints.restore(state) if resume else state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (or, with `eval_only`, evaluate) the model that `config` describes.

    Resumes from `workdir/checkpoints` when it holds a checkpoint, if the checkpoint's run record
    fits the config. The workdir is locked while the run uses it (`lock.held`): a second run on it
    is refused in one line. Returns the last evaluation's metrics and `step`, the step reached; a
    run that reaches its last step writes the model (see `ModelFiles`) and adds `model_path` and
    `model_variables` ("ema" or "raw", see `exported_variables`); a run stopped by SIGTERM adds
    `stopped` and `checkpoint_dir`; rerunning a finished run trains nothing, writes its model
    where a model file is missing, and returns its final evaluation with `finished_before`.
    """
    experiment = resolve(config)
    mesh.check_batch_size(experiment.data.batch_size)
    mesh.check_batch_size(experiment.data.eval_batch_size, "eval_batch_size")
    loop = experiment.loop
    _check_workdir(workdir)
    from mobilenet_jax.data import pipeline, sources  # TensorFlow, once the config and workdir pass

    source = sources.open_source(experiment.data)
    steps_per_epoch = source.info.num_train_examples // experiment.data.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size {experiment.data.batch_size} exceeds the {source.info.num_train_examples} training "
            "examples; lower it"
        )
    total_steps = optim.total_train_steps(experiment.optimizer, steps_per_epoch)
    tx, schedule = optim.create_optimizer(experiment.optimizer, steps_per_epoch)
    model = experiment.create_model(source.info.num_classes)
    record = run_record.run_record(experiment.config.to_dict(), source.info.num_classes)
    run_record.check_resumable(workdir, record)
    runner = mesh.make_parallel(loop.parallelism, model, experiment.step)
    model_files = ModelFiles(
        workdir, loop.export_path, model, source.info.class_names,
        for_run(experiment.data.image_size, experiment.step.normalization, source.augment.eval_crop_padding),
    )
    evaluate_now = lambda state: evaluate(runner, state, source, experiment.data)
    if loop.eval_only and not checkpoint.has_checkpoints(workdir):
        raise FileNotFoundError(f"eval_only: no checkpoint in {to_path(workdir) / checkpoint.CHECKPOINT_DIR}; train first")
    # eval_only locks too: its metrics row must not land among a training run's, nor its checkpoint
    # vanish under that run's retention; on a read-only workdir it writes nothing and needs no lock.
    with (
        lock.held(workdir, needs_writing=not loop.eval_only),
        checkpoint.Checkpoints(
            workdir, keep=loop.keep_checkpoints, keep_best=loop.keep_best_checkpoint, read_only=loop.eval_only,
            record=record,
        ) as checkpoints,
    ):
        state = _initial_state(experiment, tx, runner, checkpoints)
        start = int(state.step.addressable_data(0))
        if loop.eval_only:
            result = evaluate_now(runner.from_global(state))
            _record_evaluation(workdir, start, result)
            return {**result, "step": start}
        if start >= total_steps:
            final = _final_evaluation(workdir, start) or evaluate_now(runner.from_global(state))
            if model_files.missing():
                variables, _ = exported_variables(runner.fetch(runner.from_global(state)), final)
                model_files.write(variables, missing_only=True)
            return {**final, "step": start, "finished_before": True, "model_path": model_files.paths()[-1]}
        run_record.save_record(workdir, record)  # only now: a refused or unrestorable run leaves it
        writer = MetricWriter(workdir, enabled=jax.process_index() == 0, total_steps=total_steps, initial_step=start)
        try:
            batches = pipeline.train_batches(
                source,
                experiment.data,
                seed=loop.seed,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
                start_step=start,
            )
            with DevicePrefetch(batches, runner.put_batch) as device_batches:
                state, result = _train(experiment, runner, runner.from_global(state), device_batches, start,
                                       total_steps, schedule, checkpoints, writer, evaluate_now, workdir)
        finally:
            writer.close()
        state = runner.fetch(state)
        step = int(state.step)
        if step < total_steps:
            return {**result, "step": step, "stopped": True, "checkpoint_dir": str(checkpoints.directory)}
        variables, which = exported_variables(state, result)
        return {**result, "step": step, "model_path": model_files.write(variables), "model_variables": which}



def _check_workdir(workdir: str) -> None:
    """Raise a NotADirectoryError when `workdir` exists and is not a directory."""
    path = to_path(workdir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"workdir {workdir} is a file; pass a directory (new or a run's) as --workdir")


def _final_evaluation(workdir: str, step: int) -> dict[str, Any]:
    """The evaluation metrics.jsonl records at `step`, or {} when there is none."""
    if not (to_path(workdir) / METRICS_FILE).exists():
        return {}
    records = [r for r in read_metrics(workdir) if r["step"] == step and "eval_accuracy" in r]
    return {k: v for k, v in records[-1].items() if k != "step"} if records else {}


def _record_evaluation(workdir: str, step: int, result: dict[str, float]) -> None:
    """Append an eval_only evaluation to the workdir's metrics; a read-only workdir only gets a note."""
    try:
        writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    except OSError as error:
        print(f"workdir {workdir} is not writable ({error}); the evaluation is printed, not recorded", file=sys.stderr)
        return
    try:
        writer.write(step, result)
    finally:
        writer.close()


def _train(
    experiment: Experiment,
    runner: mesh.Parallel,
    state: TrainState,
    batches: Iterator,  # device batches
    start: int,
    total_steps: int,
    schedule: optax.Schedule,
    checkpoints: checkpoint.Checkpoints,
    writer: MetricWriter,
    evaluate_now: Callable[[TrainState], dict[str, float]],
    workdir: str,
) -> tuple[TrainState, dict[str, float]]:
    """Steps `start + 1 .. total_steps`, with logging, evaluation, checkpoints and preemption.

    Log rows fall on the same steps and average the same steps whether or not the run was
    stopped and resumed in between: a stop between two rows holds its steps' metrics for the
    next row.
    """
    loop = experiment.loop
    dropout_rng = jax.random.fold_in(jax.random.key(loop.seed), 1)
    watch = PreemptionWatch()
    pending: list[tuple[int, dict]] = []
    held = _held_unlogged(workdir, start)
    result: dict[str, float] = {}
    interval_start, interval_steps = time.perf_counter(), 0
    try:
        for step in range(start + 1, total_steps + 1):
            state, metrics = runner.train_step(state, next(batches), dropout_rng)
            pending.append((step, metrics))
            interval_steps += 1
            writer.advance(1)
            last = step == total_steps
            evaluate_step = last or step % loop.eval_every_steps == 0
            save_now = last or evaluate_step or step % loop.checkpoint_every_steps == 0
            log_now = save_now or step % loop.log_every_steps == 0
            stop = watch.should_stop(step)
            if not (log_now or stop):
                continue
            # Fetching the metrics is the only host synchronisation, and it precedes every save:
            # a non-finite state is never checkpointed.
            host = held + _host_metrics(runner, pending, experiment.step.skip_nonfinite_updates)
            pending, held = [], []
            if log_now:
                elapsed = time.perf_counter() - interval_start
                summary = _summarise(host)
                summary.update(
                    learning_rate=float(schedule(step - 1)),
                    images_per_second=interval_steps * experiment.data.batch_size / elapsed,
                )
                writer.write(step, summary)
                interval_steps = 0
            else:
                _hold_unlogged(workdir, host)
            eval_metrics = evaluate_now(state) if evaluate_step else None
            if eval_metrics:
                writer.write(step, eval_metrics)
                result = eval_metrics
            if save_now or stop:
                checkpoints.save(runner.to_global(state), eval_metrics)
            if stop:
                checkpoints.wait()
                break
            interval_start = time.perf_counter()
    finally:
        watch.close()
    checkpoints.wait()
    return state, result
