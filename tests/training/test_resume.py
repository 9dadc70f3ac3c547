"""Runs that survive: checkpoints, resume after SIGTERM and SIGKILL, NaN guard, config checks, export.

Every run is a real `python train.py` subprocess on one CPU device with a tiny digits config;
a persistent compilation cache shared by the module keeps the later runs short.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from mobilenet_jax import weights
from mobilenet_jax.data.pipeline import create_eval_iterator
from mobilenet_jax.data.preprocess import normalize_images
from mobilenet_jax.training import checkpoint
from mobilenet_jax.training.metrics import read_metrics
from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.training.state import create_train_state
from test_checkpoint import small_disk  # noqa: F401 - a fixture: a 4 MiB tmpfs
from tiny_runs import ROOT, one_device_env, start_training, tiny_flags

pytestmark = pytest.mark.slow

STEPS = 16
# A log row every 3 steps (and at every checkpoint, every 4): a stop can fall between two rows.
LOG_EVERY = 3
TINY = (*tiny_flags(STEPS), "--config.keep_checkpoints=10", f"--config.log_every_steps={LOG_EVERY}")
LOG_STEPS = sorted({*range(LOG_EVERY, STEPS + 1, LOG_EVERY), *range(4, STEPS + 1, 4)})
TIMEOUT = 300
# A line of the progress bar: "  25%|██▌       | 4/16 [00:05<...".
PROGRESS = re.compile(r"\| *\d+/\d+ \[")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """One CPU device and a compilation cache shared by every run of the module."""
    return one_device_env(tmp_path_factory.mktemp("xla_cache"))


def start(workdir: pathlib.Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    """`python train.py` with the tiny config and `overrides`, in the background."""
    return start_training(workdir, env, (*TINY, *overrides))


def run(workdir: pathlib.Path, env: dict[str, str], *overrides: str, ok: bool = True) -> str:
    """Run to the end; return the output, checking the exit status is 0 (`ok`) or not."""
    process = start(workdir, env, *overrides)
    output = process.communicate(timeout=TIMEOUT)[0]
    assert (process.returncode == 0) == ok, output[-3000:]
    return output


def wait_for_checkpoint(workdir: pathlib.Path, step: int, process: subprocess.Popen) -> None:
    """Poll until the finished checkpoint folder of `step` exists (Orbax renames it into place)."""
    folder = workdir / checkpoint.CHECKPOINT_DIR / str(step)
    deadline = time.monotonic() + TIMEOUT
    while not folder.is_dir():
        assert process.poll() is None, f"run ended before checkpoint {step}:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint {step} after {TIMEOUT}s"
        time.sleep(0.02)


def steps_on_disk(workdir: pathlib.Path) -> list[int]:
    """The finished checkpoint steps in the workdir, sorted."""
    return sorted(int(p.name) for p in (workdir / checkpoint.CHECKPOINT_DIR).iterdir() if p.name.isdigit())


def restore(workdir: pathlib.Path, step: int | None = None) -> dict:
    """A checkpoint's arrays as host numpy, restored without the training code's templates."""
    step = steps_on_disk(workdir)[-1] if step is None else step
    path = workdir / checkpoint.CHECKPOINT_DIR / str(step) / "default"
    with ocp.StandardCheckpointer() as checkpointer:
        return jax.tree.map(np.asarray, checkpointer.restore(path))


def assert_trees_equal(actual, expected) -> None:
    """Bit-identical leaves and the same structure."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(np.testing.assert_array_equal, actual, expected)


def train_losses(workdir: pathlib.Path) -> dict[int, float]:
    """The logged train loss of every step."""
    return {r["step"]: r["train_loss"] for r in read_metrics(str(workdir)) if "train_loss" in r}


def train_rows(workdir: pathlib.Path) -> list[dict]:
    """The logged train rows without their timing."""
    return [
        {k: v for k, v in r.items() if k != "images_per_second"} for r in read_metrics(str(workdir)) if "train_loss" in r
    ]


def copy_run(source: pathlib.Path, target: pathlib.Path, keep_steps: int | None = None) -> pathlib.Path:
    """A copy of a workdir, optionally without the checkpoints after `keep_steps`."""
    shutil.copytree(source, target)
    for step in steps_on_disk(target):
        if keep_steps is not None and step > keep_steps:
            shutil.rmtree(target / checkpoint.CHECKPOINT_DIR / str(step))
    return target


def snapshot(directory: pathlib.Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file below `directory`."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, env) -> pathlib.Path:
    """The uninterrupted run every other run is compared with."""
    workdir = tmp_path_factory.mktemp("baseline") / "run"
    run(workdir, env)
    assert steps_on_disk(workdir) == [4, 8, 12, 16]
    assert sorted(train_losses(workdir)) == LOG_STEPS
    return workdir


def test_sigterm_checkpoints_exits_cleanly_and_resumes_bit_identically(baseline, tmp_path, env):
    workdir = tmp_path / "run"
    process = start(workdir, env)
    wait_for_checkpoint(workdir, 4, process)
    # Paused, the run cannot finish before the signal lands; it sees SIGTERM when it continues.
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    output = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode == 0, output[-3000:]
    last_line = output.strip().splitlines()[-1]
    stopped = int(re.fullmatch(r"Stopped by SIGTERM after step (\d+); checkpoint saved in .*", last_line)[1])
    assert 4 <= stopped < STEPS
    assert steps_on_disk(workdir)[-1] == stopped
    assert not (workdir / "mobilenet_v1.msgpack").exists()  # only a finished run exports

    last_line = run(workdir, env).strip().splitlines()[-1]
    assert re.fullmatch(rf"Finished at step {STEPS}: eval_accuracy=.*; model \(raw variables\) written to .*", last_line)
    # The same rows on the same steps, each averaging the same steps, as the uninterrupted run.
    assert train_rows(workdir) == train_rows(baseline), stopped
    assert_trees_equal(restore(workdir), restore(baseline))
    assert_trees_equal(
        weights.load_variables(str(workdir / "mobilenet_v1.msgpack")),
        weights.load_variables(str(baseline / "mobilenet_v1.msgpack")),
    )


def test_sigkill_resumes_from_the_last_periodic_checkpoint_past_a_torn_write(baseline, tmp_path, env):
    workdir = tmp_path / "run"
    process = start(workdir, env)
    wait_for_checkpoint(workdir, 4, process)
    process.kill()
    process.communicate(timeout=TIMEOUT)
    last = steps_on_disk(workdir)[-1]
    assert last < STEPS
    # What a kill during the next save leaves: Orbax's temporary folder, half written.
    torn = workdir / checkpoint.CHECKPOINT_DIR / f"{last + 4}.orbax-checkpoint-tmp-1"
    shutil.copytree(workdir / checkpoint.CHECKPOINT_DIR / str(last), torn)
    shutil.rmtree(torn / "default" / "d")
    checkpoints = checkpoint.Checkpoints(str(workdir))
    assert checkpoints.latest_step() == last
    checkpoints.close()

    run(workdir, env)
    assert not torn.exists()  # the manager removes unfinished folders when it opens the directory
    assert train_losses(workdir) == train_losses(baseline)
    assert_trees_equal(restore(workdir), restore(baseline))


KILL_MID_SAVE = textwrap.dedent(
    """
    import os, signal, sys, time
    import jax.numpy as jnp
    from mobilenet_jax.training import checkpoint
    from mobilenet_jax.training.state import TrainState

    def state(step, value):
        params = {f"w{i}": jnp.full((4096, 4096), value, jnp.float32) for i in range(4)}
        return TrainState(step=jnp.asarray(step), params=params, batch_stats={}, opt_state={},
                          ema=None, apply_fn=None, tx=None)

    checkpoints = checkpoint.Checkpoints(sys.argv[1])
    checkpoints.save(state(1, 1.0))
    checkpoints.wait()
    checkpoints.save(state(2, 2.0))
    os.kill(os.getpid(), signal.SIGKILL)  # while the asynchronous write of step 2 runs
    """
)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path, env):
    process = subprocess.run(
        [sys.executable, "-c", KILL_MID_SAVE, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    folders = [p.name for p in (tmp_path / checkpoint.CHECKPOINT_DIR).iterdir()]
    assert "1" in folders and "2" not in folders
    checkpoints = checkpoint.Checkpoints(str(tmp_path))
    assert checkpoints.latest_step() == 1
    restored = restore(tmp_path, 1)
    assert int(restored["step"]) == 1
    np.testing.assert_array_equal(restored["params"]["w3"], np.ones((4096, 4096), np.float32))
    checkpoints.close()


def test_nonfinite_loss_stops_naming_the_step_and_checkpoints_nothing_after_it(tmp_path, env):
    workdir = tmp_path / "run"
    output = run(workdir, env, "--config.learning_rate=1e30", ok=False)
    assert "Traceback" not in output
    bad = int(re.search(r"non-finite loss or gradients at step (\d+)", output)[1])
    assert "skip_nonfinite_updates" in output
    assert all(step < bad for step in steps_on_disk(workdir))

    # skip_nonfinite_updates may change on a resume.
    run(workdir, env, "--config.learning_rate=1e30", "--config.skip_nonfinite_updates=True")
    records = [r for r in read_metrics(str(workdir)) if "skipped_steps" in r]
    skipped = [r["step"] for r in records if r["skipped_steps"]]
    assert skipped[-1] == STEPS
    assert steps_on_disk(workdir)[-1] == STEPS


def test_resume_with_a_state_changing_config_is_refused_untouched(baseline, tmp_path, env):
    workdir = copy_run(baseline, tmp_path / "run")
    before = snapshot(workdir)
    changes = {
        "model.alpha": ("0.5", "0.25, config has 0.5"),
        "optimizer": ("adamw", "'sgd', config has 'adamw'"),
        "model.activation": ("relu6", "'relu', config has 'relu6'"),
        "model.padding": ("same", "'torch', config has 'same'"),
        "batch_size": ("32", "16, config has 32"),
        "momentum": ("0.5", "0.9, config has 0.5"),
        "weight_decay": ("0.001", "5e-05, config has 0.001"),
    }
    output = run(workdir, env, *(f"--config.{field}={value}" for field, (value, _) in changes.items()), ok=False)
    for field, (_, message) in changes.items():
        assert f"{field}: checkpoint has {message}" in output
    assert "Use a new --workdir" in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert snapshot(workdir) == before  # config.json included


def test_eval_only_and_the_export_reproduce_the_final_evaluation(baseline, tmp_path, env):
    workdir = copy_run(baseline, tmp_path / "run")
    before = snapshot(workdir)
    expected = read_metrics(str(baseline))[-1]
    assert "eval_accuracy" in expected and expected["step"] == STEPS
    # Rerunning the finished run trains and writes nothing, and says where it ended.
    last_line = run(workdir, env).strip().splitlines()[-1]
    assert last_line.startswith(f"The run in {workdir} already finished at step {STEPS}: ")
    assert f"eval_accuracy={expected['eval_accuracy']:.4f}" in last_line and "mobilenet_v1.msgpack" in last_line
    assert snapshot(workdir) == before

    output = run(workdir, env, "--config.eval_only=True")
    assert read_metrics(str(workdir))[-1] == expected
    assert f"eval_accuracy={expected['eval_accuracy']:.4f}" in output
    assert snapshot(workdir / checkpoint.CHECKPOINT_DIR) == snapshot(baseline / checkpoint.CHECKPOINT_DIR)

    # The export alone: no train state, no optimizer, only the model's fields and the variables.
    path = str(baseline / "mobilenet_v1.msgpack")
    with open(path + ".json") as f:
        model = MobileNetV1(**json.load(f))
    config = json.loads((baseline / weights.CONFIG_FILE).read_text())
    pixels = next(create_eval_iterator(_Config(config), process_index=0, process_count=1))["image"]
    images = normalize_images(pixels, config["normalization"])
    apply = jax.jit(functools.partial(model.apply, train=False))
    logits = apply(weights.load_variables(path), images)
    state = restore(baseline)  # ema_decay is 0 in the digits config: the raw parameters are evaluated
    expected_logits = apply({"params": state["params"], "batch_stats": state["batch_stats"]}, images)
    np.testing.assert_array_equal(logits, expected_logits)


def as_reader_only(command: list[str]) -> list[str]:
    """`command` run by a user who may read every file but write none of the test's (root's) files."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop the right to write")
    caps = "+dac_read_search"  # read and search everything, like the owner; writing still needs ownership
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps={caps}",
            f"--ambient-caps={caps}", *command]


def test_eval_only_on_a_read_only_workdir_prints_the_evaluation_and_changes_nothing(baseline, tmp_path, env):
    workdir = copy_run(baseline, tmp_path / "run")
    if os.geteuid() != 0:
        for path in (workdir, *workdir.rglob("*")):
            path.chmod(path.stat().st_mode & ~0o222)
    before = snapshot(workdir)
    expected = read_metrics(str(baseline))[-1]
    command = as_reader_only([sys.executable, "train.py", *TINY, "--config.eval_only=True", f"--workdir={workdir}"])
    reader_env = {k: v for k, v in env.items() if not k.startswith("JAX_")} | {"JAX_PLATFORMS": "cpu", "HOME": "/tmp"}
    process = subprocess.run(command, cwd=ROOT, env=reader_env, capture_output=True, text=True, timeout=TIMEOUT)
    output = process.stdout + process.stderr
    assert process.returncode == 0, output[-3000:]
    assert "Traceback" not in output and not re.search(r"^W\d{4} ", output, re.MULTILINE)  # no logged warnings
    assert re.search(rf"workdir {workdir} is not writable \(.*\); the evaluation is printed, not recorded", output)
    assert f"eval_accuracy={expected['eval_accuracy']:.4f}" in output
    assert snapshot(workdir) == before


class _Config(dict):
    """The flat config.json as the attribute access the data module reads."""

    def __getattr__(self, name: str):
        return self[name]


def test_keeps_the_last_k_and_the_most_accurate_checkpoint(tmp_path, env):
    workdir = tmp_path / "run"
    run(
        workdir,
        env,
        "--config.keep_checkpoints=2",
        "--config.keep_best_checkpoint=True",
        "--config.eval_every_steps=2",
        "--config.checkpoint_every_steps=2",
        "--config.learning_rate=3.0",
    )
    accuracy = {r["step"]: r["eval_accuracy"] for r in read_metrics(str(workdir)) if "eval_accuracy" in r}
    assert sorted(accuracy) == list(range(2, STEPS + 1, 2))
    kept = steps_on_disk(workdir)
    # The last two, plus the most accurate when it is older (ties may leave it among the last two).
    assert kept[-2:] == [STEPS - 2, STEPS] and len(kept) <= 3
    assert max(accuracy[step] for step in kept) == max(accuracy.values()), (accuracy, kept)


def test_retention_keeps_the_most_accurate_older_checkpoint(tmp_path):
    state = create_train_state(jax.random.key(0), MobileNetV1(num_classes=3, alpha=0.25), optax.sgd(0.1), 32)
    accuracies = {2: 0.5, 4: 0.9, 6: 0.6, 8: 0.4, 10: 0.3, 12: 0.2, 14: 0.1, 16: 0.15}
    manager = checkpoint.Checkpoints(str(tmp_path), keep=2, keep_best=True)
    for step, accuracy in accuracies.items():
        manager.save(state.replace(step=jax.numpy.asarray(step)), {"eval_accuracy": accuracy})
        manager.wait()
    assert manager.all_steps() == [4, 14, 16]
    manager.close()


def test_a_damaged_newest_checkpoint_is_skipped_by_name_and_kept(baseline, tmp_path, env):
    workdir = copy_run(baseline, tmp_path / "run", keep_steps=12)
    (workdir / checkpoint.CHECKPOINT_DIR / "12" / "default" / "_METADATA").unlink()
    for array_file in (workdir / checkpoint.CHECKPOINT_DIR / "8" / "default").rglob("d/*"):
        os.truncate(array_file, array_file.stat().st_size // 2)
    before = (workdir / weights.CONFIG_FILE).read_text()
    output = run(workdir, env)
    # The failed read's echoes (TensorStore's "Event loop is closed", asyncio's task errors) are silenced.
    assert "Traceback" not in output and "Event loop is closed" not in output and "never retrieved" not in output
    assert re.search(r"^checkpoint 8 in .* is damaged and left as it is", output, re.MULTILINE)  # not glued to the bar
    assert re.search(r"checkpoint 12 in .* does not restore \(ValueError: .*\); skipped and left on disk", output)
    assert re.search(r"checkpoint 8 in .* does not restore \(.*\); skipped and left on disk", output)
    assert (workdir / checkpoint.CHECKPOINT_DIR / "12" / "default").is_dir()  # not deleted
    assert "checkpoint 8 in" in output and "is damaged and left as it is" in output
    assert train_rows(workdir)[-1] == train_rows(baseline)[-1]  # resumed from step 4, same result
    assert (workdir / weights.CONFIG_FILE).read_text() == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--config.bogus=1",), r"unknown config field 'bogus' in --config.bogus=1; check its spelling"),
        (("--config=configs/nope.py",), r"--config file 'configs/nope.py' cannot be loaded: .*No such file"),
        (("--config.num_train_steps=0",), r"num_train_steps must be > 0, or -1 to train num_epochs, got 0"),
        (("--config.eval_every_steps=0",), r"eval_every_steps must be >= 1, got 0"),
        (("--config.checkpoint_every_steps=0",), r"checkpoint_every_steps must be >= 1, got 0"),
        (("--config.num_train_steps=abc",), r"flag --config.num_train_steps=abc: invalid literal for int"),
        (("--config.eval_only=True",), r"eval_only: no checkpoint in .*; train first"),
        (("--config.quantization=bogus",), r"quantization must be one of \('int8',\) or None .*, got 'bogus'"),
    ],
)
def test_mistakes_end_in_one_line_naming_the_field(tmp_path, env, flags, message):
    output = run(tmp_path / "run", env, *flags, ok=False)
    assert output.strip().splitlines() == [output.strip()], output
    assert re.fullmatch(rf"train\.py: error: {message}.*", output.strip()), output


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, env):
    (tmp_path / "run").write_text("")
    output = run(tmp_path / "run", env, ok=False).strip()
    assert output == f"train.py: error: workdir {tmp_path / 'run'} is a file; pass a directory (new or a run's) as --workdir"


def test_a_full_disk_ends_the_run_in_one_line(small_disk, env):
    (small_disk / "filler").write_bytes(bytes(15 * 2**18))  # 256 KiB left: less than a checkpoint
    output = run(small_disk / "run", env, ok=False)
    lines = [line for line in re.split(r"[\r\n]", output) if line.strip() and not PROGRESS.search(line)]
    assert len(lines) == 1, output[-3000:]
    assert re.fullmatch(r"train\.py: error: cannot write .*: no space left on device; free space there.*", lines[0],
                        re.IGNORECASE), lines
