"""Tiny `python train.py` runs in subprocesses, shared by the resume and multi-process tests."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny_flags(steps: int) -> tuple[str, ...]:
    """The digits config shrunk to MobileNet 0.25 at 32 x 32, batch 16, `steps` steps, every
    loss logged, a checkpoint every 4 steps, evaluation only at the end."""
    return (
        "--config=configs/digits.py",
        "--config.model.alpha=0.25",
        "--config.image_size=32",
        "--config.batch_size=16",
        f"--config.num_train_steps={steps}",
        "--config.warmup_epochs=0",
        "--config.eval_every_steps=1000",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=4",
    )


def start_training(workdir: pathlib.Path, env: dict[str, str], flags: tuple[str, ...]) -> subprocess.Popen:
    """`python train.py` with `flags` on `workdir`, in the background, output captured."""
    command = [sys.executable, "train.py", *flags, f"--workdir={workdir}"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
