"""A pod slice's faults on loopback: two `train.py` processes (gloo, one CPU device each) on a
real TFDS dataset built in the test, each reading its own share of it.

- SIGTERM to one process: both save the same step and exit 0, and the resumed run equals an
  uninterrupted one bit for bit.
- A checkpoint that one process cannot read: every process stops at once, naming it, and none
  trains on.
- An input error on one process: the other stops within seconds (not the runtime's 100 s
  heartbeat timeout) with the failing process's message.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mobilenet_jax.training import checkpoint
from mobilenet_jax.training.metrics import METRICS_FILE, read_metrics
from tiny_runs import ROOT, communicate, distributed_flags, finish, gloo_env, start_training, tiny_flags

pytestmark = pytest.mark.slow

STEPS = 40
PROCESSES = 2
TIMEOUT = 400
# The tiny run on TinyLabelled (12 train / 11 validation JPEGs, 12 classes): 3 steps an epoch at
# batch 4, so the run crosses many epochs; both processes read their own 6 examples.
TFDS_FLAGS = ("--config.dataset=tiny_labelled", "--config.batch_size=4", "--config.eval_batch_size=4",
              "--config.checkpoint_every_steps=100", "--config.keep_checkpoints=5")


def flags(data_dir: str) -> tuple[str, ...]:
    return (*tiny_flags(STEPS), *TFDS_FLAGS, f"--config.data_dir={data_dir}")


def start_run(workdir: pathlib.Path, data_dir: str, wrapper: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    """The processes of one run on `workdir`; `wrapper`: (process, fault) of fault_on_process.py."""
    processes = []
    for index, process_flags in enumerate(distributed_flags(PROCESSES)):
        all_flags = (*flags(data_dir), *process_flags)
        if wrapper:
            command = [sys.executable, str(pathlib.Path(__file__).parent / "fault_on_process.py"), *wrapper,
                       *all_flags, f"--workdir={workdir}"]
            processes.append(subprocess.Popen(command, cwd=ROOT, env=gloo_env(1), stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True))
        else:
            processes.append(start_training(workdir, gloo_env(1), all_flags))
    return processes


def logged_step(workdir: pathlib.Path) -> int:
    """The last step metrics.jsonl has a complete row of, or 0."""
    path = workdir / METRICS_FILE
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []
    return max((row["step"] for row in rows), default=0)


def losses(workdir: pathlib.Path) -> dict[int, float]:
    return {row["step"]: row["train_loss"] for row in read_metrics(str(workdir)) if "train_loss" in row}


def final_params(workdir: pathlib.Path) -> list[np.ndarray]:
    """The exported model's parameters, in a fixed order."""
    from mobilenet_jax import weights
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(weights.load_variables(str(workdir / "mobilenet_v1.msgpack")))]


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / checkpoint.CHECKPOINT_DIR).iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def uninterrupted(tiny_labelled_dir, tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("uninterrupted")
    finish(start_run(workdir, tiny_labelled_dir), TIMEOUT)
    return workdir


@pytest.fixture(scope="module")
def stopped(tiny_labelled_dir, tmp_path_factory) -> tuple[pathlib.Path, int, list[str]]:
    """A run whose process 1 alone got SIGTERM after step 3: its workdir, the saved step, the outputs."""
    workdir = tmp_path_factory.mktemp("stopped")
    processes = start_run(workdir, tiny_labelled_dir)
    deadline = time.monotonic() + TIMEOUT
    while logged_step(workdir) < 3 and time.monotonic() < deadline and processes[1].poll() is None:
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)
    outputs = finish(processes, TIMEOUT)
    steps = checkpoint_steps(workdir)
    return workdir, steps[-1], outputs


def test_sigterm_to_one_process_stops_all_at_one_saved_step(stopped):
    workdir, step, outputs = stopped
    assert 3 < step < STEPS, step  # within a few steps of the signal, before the end
    assert f"Stopped by SIGTERM after step {step}; checkpoint saved in" in outputs[0]
    assert checkpoint_steps(workdir) == [step]  # one checkpoint, written by both processes together
    assert logged_step(workdir) == step


def test_resume_after_sigterm_equals_the_uninterrupted_run(stopped, uninterrupted, tiny_labelled_dir, tmp_path):
    workdir = tmp_path / "resumed"
    shutil.copytree(stopped[0], workdir)
    outputs = finish(start_run(workdir, tiny_labelled_dir), TIMEOUT)
    assert f"Finished at step {STEPS}" in outputs[0]
    assert losses(workdir) == losses(uninterrupted)  # every step's loss, bit for bit
    assert read_metrics(str(workdir))[-1] == read_metrics(str(uninterrupted))[-1]
    for resumed, straight in zip(final_params(workdir), final_params(uninterrupted), strict=True):
        np.testing.assert_array_equal(resumed, straight)


def test_a_checkpoint_one_process_cannot_read_stops_every_process(stopped, tiny_labelled_dir, tmp_path):
    workdir = tmp_path / "unreadable"
    shutil.copytree(stopped[0], workdir)
    before = (workdir / METRICS_FILE).read_text(), checkpoint_steps(workdir)
    processes = start_run(workdir, tiny_labelled_dir, wrapper=("1", "restore"))
    outputs = communicate(processes, TIMEOUT)
    step = stopped[1]
    assert [p.returncode for p in processes] == [2, 2], outputs
    assert f"process 1 of 2 cannot restore checkpoint {step} in" in outputs[1]
    assert "storage unreachable from process 1" in outputs[1]
    assert f"processes [1] of 2 cannot restore checkpoint {step}" in outputs[0]
    assert all("Traceback" not in output for output in outputs)
    assert ((workdir / METRICS_FILE).read_text(), checkpoint_steps(workdir)) == before  # nobody trained on


def test_an_input_error_on_one_process_ends_the_other_promptly(tiny_labelled_dir, tmp_path):
    processes = start_run(tmp_path / "run", tiny_labelled_dir, wrapper=("1", "input"))
    outputs = communicate(processes, TIMEOUT)
    assert [p.returncode for p in processes] == [2, 2], outputs
    assert "train.py: error: a shard is unreadable from process 1 (injected)" in outputs[1]
    assert "train.py: error: process 1: a shard is unreadable from process 1 (injected) (this process stops too)" in (
        outputs[0]
    )
    assert all("Traceback" not in output for output in outputs)
