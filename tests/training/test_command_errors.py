"""Mistakes in `python train.py`'s flags and --config file, and Ctrl-C, end in one line on stderr.

A mistake in the flags exits 2 before JAX is imported, so those runs take a second each.
"""

from __future__ import annotations

import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from tiny_runs import ROOT, one_device_env, start_training, tiny_flags

TIMEOUT = 300

# A --config file's text (None: a directory of that name), the flag's tail, and the line expected after the
# file's name: file, line number and error.
CONFIG_FILES = {
    "syntax error": ("import ml_collections\ndef get_config():\n    x = (\n", "",
                     r"cannot be loaded: SyntaxError: .* \(bad\.py, line 3\)"),
    "name error": ("def get_config():\n    return undefined_name\n", "",
                   r"cannot be loaded: NameError: name 'undefined_name' is not defined \(.*bad\.py, line 2\)"),
    "no get_config": ("import ml_collections\n", "", r"has no get_config\(\); define one returning the ConfigDict"),
    "get_config raises": ("def get_config():\n    raise ValueError('no such recipe')\n", "",
                          r"cannot be loaded: ValueError: no such recipe \(.*bad\.py, line 2\)"),
    "not a ConfigDict": ("def get_config():\n    return {'batch_size': 1}\n", "",
                         r"get_config\(\) returned dict, not a ConfigDict; return one"),
    "a directory": (None, "", r"cannot be loaded: IsADirectoryError: .*; pass a Python file"),
    "an argument it does not take": ("def get_config():\n    return None\n", ":badarg",
                                     r"get_config\(\) cannot take the argument 'badarg'; drop ':badarg'"),
    "no argument it needs": ("def get_config(recipe):\n    return None\n", "",
                             r"get_config\(recipe\) needs an argument; pass one as --config=.*bad\.py:ARGUMENT"),
}

FLAG_MISTAKES = {
    "empty workdir": (("--config=configs/digits.py", "--workdir="), r"--workdir is missing or empty; pass a directory"),
    "no workdir": (("--config=configs/digits.py",), r"--workdir is missing or empty"),
    "no config": (("--workdir=/nonexistent/run",), r"--config is missing; pass a recipe file, e.g. --config=configs/"),
    "empty config": (("--config=", "--workdir=/nonexistent/run"), r"--config is empty; pass a recipe file"),
    "a stray argument": (("--config=configs/digits.py", "--workdir=/nonexistent/run", "extra"),
                         r"unexpected arguments \['extra'\]; every setting is a flag"),
}


def train_py(*flags: str) -> tuple[int, str]:
    """`python train.py flags...`: its exit status and its output."""
    process = subprocess.run([sys.executable, "train.py", *flags], cwd=ROOT, capture_output=True, text=True,
                             timeout=TIMEOUT)
    return process.returncode, process.stdout + process.stderr


def assert_one_line(status: int, output: str, message: str) -> None:
    """Exit status 2 and one line: train.py's error matching `message`."""
    assert status == 2 and output.strip().count("\n") == 0, output
    assert re.fullmatch(rf"train\.py: error: {message}.*", output.strip()), output


@pytest.mark.parametrize("text, tail, message", list(CONFIG_FILES.values()), ids=list(CONFIG_FILES))
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, text, tail, message):
    config = tmp_path / "bad.py"
    if text is None:
        config.mkdir()
    else:
        config.write_text(text)
    status, output = train_py(f"--config={config}{tail}", f"--workdir={tmp_path / 'run'}", "--config.batch_size=8")
    assert_one_line(status, output, rf"--config file '{re.escape(str(config))}':? {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", list(FLAG_MISTAKES.values()), ids=list(FLAG_MISTAKES))
def test_a_missing_or_stray_flag_is_one_line(flags, message):
    assert_one_line(*train_py(*flags), message)


DROPPED_INTERRUPT = """
import gc, os, signal, sys, time, runpy
keep_interrupts = runpy.run_path("train.py")["keep_interrupts"]
sys.unraisablehook = keep_interrupts
def interrupt_inside(phase, info):  # where Python drops the KeyboardInterrupt, as in JAX's gc callback
    gc.callbacks.remove(interrupt_inside)
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(10))
gc.callbacks.append(interrupt_inside)
try:
    gc.collect()
    time.sleep(5)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_an_interrupt_python_drops_is_raised_again():
    process = subprocess.run([sys.executable, "-c", DROPPED_INTERRUPT], cwd=ROOT, capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert process.stdout == "interrupted\n" and process.stderr == "", process.stderr


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_naming_the_resume(tmp_path):
    workdir = tmp_path / "run"
    process = start_training(workdir, one_device_env(tmp_path / "xla_cache"), tiny_flags(1000))
    deadline = time.monotonic() + TIMEOUT
    while not (workdir / "metrics.jsonl").exists() or not (workdir / "metrics.jsonl").read_text():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=TIMEOUT)[0]
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and "Exception ignored" not in output, output[-3000:]
    assert output.strip().splitlines()[-1] == (
        f"train.py: error: interrupted; rerun the same command to resume from the last checkpoint in {workdir}"
    )
