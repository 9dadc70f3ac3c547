"""gs:// against a local GCS: `train.py --workdir gs://...`, SIGTERM and resume there (slow), and
an image folder in a bucket.

TensorFlow (etils.epath's gs:// backend, tf.summary, the export), Orbax's folder handling and
TensorStore's array files all talk to one emulator (see fake_gcs.py); nothing touches the disk
under a local "gs:" folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("gcp_storage_emulator")

from fake_gcs import fake_gcs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUCKET = "bucket"
WORKDIR = f"gs://{BUCKET}/run"
STEPS = 8
TIMEOUT = 240
TINY = (
    "--config=configs/digits.py",
    "--config.model.alpha=0.25",
    "--config.image_size=32",
    "--config.batch_size=16",
    f"--config.num_train_steps={STEPS}",
    "--config.warmup_epochs=0",
    "--config.eval_every_steps=1000",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=4",
    "--config.keep_checkpoints=10",
)


def objects(env: dict[str, str], prefix: str) -> dict[str, bytes]:
    """{name: bytes} of the emulator's objects under `prefix`, read over its JSON API."""
    base = f"{env['TENSORSTORE_GCS_HTTP_URL']}/storage/v1/b/{BUCKET}/o"
    with urllib.request.urlopen(f"{base}?prefix={urllib.parse.quote(prefix)}") as response:
        names = [item["name"] for item in json.load(response).get("items", [])]
    contents = {}
    for name in names:
        with urllib.request.urlopen(f"{base}/{urllib.parse.quote(name, safe='')}?alt=media") as response:
            contents[name] = response.read()
    return contents


def start(env: dict[str, str]) -> subprocess.Popen:
    """`python train.py` with the tiny digits config on the gs:// workdir, in the background."""
    command = [sys.executable, "train.py", *TINY, f"--workdir={WORKDIR}"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """The environment of a run on one CPU device, pointed at a fresh local GCS."""
    with fake_gcs(tmp_path, BUCKET) as gcs:
        yield dict(
            os.environ,
            **gcs,
            XLA_FLAGS="--xla_force_host_platform_device_count=1",
            JAX_PLATFORMS="cpu",
            TF_CPP_MIN_LOG_LEVEL="2",
            JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )


@pytest.mark.slow
def test_gs_workdir_survives_sigterm(env):
    process = start(env)
    deadline = time.monotonic() + TIMEOUT
    while not any("run/checkpoints/4/" in name for name in objects(env, "run/checkpoints/")):
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint 4 in the bucket"
        time.sleep(0.5)
    # Paused, the run cannot finish before the signal lands; it sees SIGTERM when it continues.
    process.send_signal(signal.SIGSTOP)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    output = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode == 0, output[-3000:]
    stopped = int(re.search(r"Stopped by SIGTERM after step (\d+)", output)[1])
    assert 4 <= stopped < STEPS

    resumed = start(env)
    output = resumed.communicate(timeout=TIMEOUT)[0]
    assert resumed.returncode == 0, output[-3000:]
    stored = objects(env, "run/")
    records = [json.loads(line) for line in stored["run/metrics.jsonl"].decode().splitlines()]
    assert [record["step"] for record in records if "train_loss" in record] == list(range(1, STEPS + 1))
    assert "eval_accuracy" in records[-1]
    assert json.loads(stored["run/config.json"])["dataset"] == "digits"
    steps = {int(name.split("/")[2]) for name in stored if re.match(r"run/checkpoints/\d+/", name)}
    assert {stopped, STEPS} <= steps
    assert any(name.startswith("run/tensorboard/events.out.tfevents") for name in stored)
    assert len(stored["run/mobilenet_v1.msgpack"]) > 10_000
    assert not (ROOT / "gs:").exists()


def test_gs_image_folder_is_scanned_checked_and_read(tmp_path, monkeypatch):
    with fake_gcs(tmp_path, BUCKET) as gcs:
        for name, value in gcs.items():
            monkeypatch.setenv(name, value)
        import numpy as np
        import tensorflow as tf

        from mobilenet_jax.data.pipeline import create_train_iterator, get_dataset_info
        from mobilenet_jax.data.spec import DataSpec

        root = f"gs://{BUCKET}/images"
        image = tf.io.encode_png(np.zeros((40, 40, 3), np.uint8)).numpy()
        for label in ("cat", "dog"):
            for index in range(4):
                tf.io.write_file(f"{root}/{label}/{index}.png", image)
        tf.io.write_file(f"{root}/dog/cut.png", image[:20])
        spec = DataSpec(
            dataset="folder", folder_train_dir=root, image_size=32, batch_size=4, folder_eval_fraction=0.25
        )
        with pytest.raises(ValueError, match=f"{root}/dog/cut.png: Invalid PNG"):
            get_dataset_info(spec)
        spec = dataclasses.replace(spec, skip_bad_images=True)
        info = get_dataset_info(spec)
        assert (info.class_names, info.num_train_examples, info.num_eval_examples) == (("cat", "dog"), 6, 2)
        batch = next(create_train_iterator(spec, seed=0, process_index=0, process_count=1))
        assert batch["image"].shape == (4, 32, 32, 3)
