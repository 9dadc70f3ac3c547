"""Tiny `python train.py` runs in subprocesses, shared by the resume and multi-process tests."""

from __future__ import annotations

import os
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


def one_device_env(cache_dir: pathlib.Path) -> dict[str, str]:
    """One CPU device and a persistent compilation cache in `cache_dir`, so later runs compile nothing."""
    return dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="2",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
