"""A workdir belongs to one run at a time: its run.lock is taken, refused in one line, taken over
when its run is gone, and released however the run ends."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess

import pytest

from mobilenet_jax.training import lock


def write_lock(workdir: pathlib.Path, **fields) -> tuple[pathlib.Path, lock.Holder]:
    """A run.lock in `workdir` recording this process with `fields` changed."""
    holder = dataclasses.replace(lock.this_process(), command="python train.py --workdir=run", **fields)
    path = workdir / lock.LOCK_FILE
    path.write_text(json.dumps(dataclasses.asdict(holder)))
    return path, holder


def refusal(holder: lock.Holder, path: pathlib.Path) -> str:
    """The one line that refuses a run while `holder` holds the lock at `path`."""
    return (
        f"workdir {path.parent} is in use by another run: pid {holder.pid} on host {holder.host}, started "
        f"{holder.started} (python train.py --workdir=run); wait for it to end, or, if that run is gone, delete {path}"
    )


def test_the_lock_is_held_while_the_block_runs_and_released_however_it_ends(tmp_path):
    path = tmp_path / lock.LOCK_FILE
    with lock.held(str(tmp_path)):
        holder, me = lock.Holder(**json.loads(path.read_text())), lock.this_process()
        assert (holder.host, holder.pid, holder.ticks) == (me.host, os.getpid(), me.ticks)
    assert not path.exists()
    with pytest.raises(RuntimeError, match="boom"):
        with lock.held(str(tmp_path)):
            raise RuntimeError("boom")
    assert not path.exists()


def test_a_running_holder_refuses_the_run_in_one_line_and_keeps_its_lock(tmp_path):
    path, holder = write_lock(tmp_path)  # this very process: running
    with pytest.raises(lock.WorkdirInUse) as error:
        with lock.held(str(tmp_path)):
            pytest.fail("the block ran while another run holds the workdir")
    assert str(error.value) == refusal(holder, path)
    assert lock.Holder(**json.loads(path.read_text())) == holder


def test_a_holder_on_another_host_refuses_the_run(tmp_path):
    path, holder = write_lock(tmp_path, host="another-host", pid=1)
    with pytest.raises(lock.WorkdirInUse) as error:
        with lock.held(str(tmp_path)):
            pytest.fail("the block ran while another host's run holds the workdir")
    assert str(error.value) == refusal(holder, path)


def reaped_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def zombie_pid() -> int:
    """The pid of a process that has ended and not been reaped (the caller reaps it)."""
    process = subprocess.Popen(["true"])
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # ended, still in the process table
    return process.pid


@pytest.mark.parametrize(
    "gone",
    [
        lambda: dict(pid=reaped_pid()),
        lambda: dict(pid=zombie_pid()),
        lambda: dict(ticks=lock.this_process().ticks - 1),  # a later process that got the same pid
    ],
    ids=["ended", "zombie", "pid-reused"],
)
def test_the_lock_of_a_run_that_is_gone_is_taken_over_with_one_line(tmp_path, capsys, gone):
    if lock.this_process().ticks is None:
        pytest.skip("no /proc: a process's start time is unknown")
    path, holder = write_lock(tmp_path, **gone())
    with lock.held(str(tmp_path)):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
    assert capsys.readouterr().err.splitlines() == [
        f"Took over the lock {path} of a run that is gone: pid {holder.pid} on host {holder.host}, started "
        f"{holder.started} (python train.py --workdir=run)"
    ]


def test_a_lock_that_names_no_run_refuses_the_run_naming_the_file(tmp_path):
    path = tmp_path / lock.LOCK_FILE
    path.write_text("")  # a torn write
    with pytest.raises(lock.WorkdirInUse, match=rf"holds a lock {path} that names no run \(.*\); if no run uses "
                                                rf"this workdir, delete {path}$"):
        with lock.held(str(tmp_path)):
            pytest.fail("the block ran with an unreadable lock")
    assert path.read_text() == ""


def test_an_unwritable_workdir_refuses_a_run_but_not_an_evaluation(tmp_path, monkeypatch):
    def read_only(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(lock, "_create", read_only)
    with pytest.raises(OSError, match=rf"^cannot write the lock {tmp_path / lock.LOCK_FILE} \(.*Permission denied.*\); "
                                      "make the workdir writable"):
        with lock.held(str(tmp_path)):
            pytest.fail("a run went on without the lock")
    ran = []
    with lock.held(str(tmp_path), needs_writing=False):
        ran.append(True)
    assert ran
