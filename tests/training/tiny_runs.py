"""Tiny `python train.py` runs in subprocesses, shared by the resume and multi-process tests."""

from __future__ import annotations

import os
import pathlib
import socket
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


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gloo_env(local_devices: int) -> dict[str, str]:
    """`local_devices` CPU devices per process, with gloo for cross-process collectives."""
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        TF_CPP_MIN_LOG_LEVEL="2",
    )


def distributed_flags(count: int) -> list[tuple[str, ...]]:
    """The flags of `count` processes of one run on loopback, by process index."""
    address = f"127.0.0.1:{free_port()}"
    return [
        ("--distributed", f"--coordinator_address={address}", f"--num_processes={count}", f"--process_id={index}")
        for index in range(count)
    ]


def finish(processes: list[subprocess.Popen], timeout: float) -> list[str]:
    """Every process's output once all have ended (killed after `timeout` s); fails naming any
    that did not exit 0."""
    outputs = communicate(processes, timeout)
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
    return outputs


def communicate(processes: list[subprocess.Popen], timeout: float) -> list[str]:
    """Every process's output once all have ended; the ones still running after `timeout` s are killed."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
