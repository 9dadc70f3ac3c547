"""One run per workdir: `held(workdir)` holds `workdir/run.lock` while a run writes there.

The lock file records who holds it (host, pid, start time, command line). Taking it creates the
file exclusively (`O_CREAT | O_EXCL`) on a local disk; gs:// has no exclusive create, so there
it is checked, then written: two runs starting within the same moment on one gs:// workdir can
both pass the check. A run that crashed leaves its lock behind; a lock whose process is gone
from this host is stale and taken over with a line on stderr (removed, then created afresh; two
runs that find the same stale lock in the same instant are told apart only by that creation),
while a lock of a running process, or of another host (whose processes this host cannot see),
refuses the run in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from typing import Iterator

import jax
from etils import epath

from mobilenet_jax.paths import to_path
from mobilenet_jax.training import hosts

LOCK_FILE = "run.lock"
# How much of the holder's command line a refusal quotes.
COMMAND_CHARS = 200


class WorkdirInUse(OSError):
    """Another run holds the workdir's lock."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """The process that holds a lock, as its lock file records it."""

    host: str
    pid: int
    started: str  # local time, ISO 8601
    command: str
    # Start time in clock ticks since boot (/proc/PID/stat), telling the holder from a later
    # process given the same pid; None where /proc is absent.
    ticks: int | None = None

    def describe(self) -> str:
        """'pid P on host H, started T (COMMAND)' for one line."""
        command = self.command if len(self.command) <= COMMAND_CHARS else self.command[:COMMAND_CHARS] + "..."
        return f"pid {self.pid} on host {self.host}, started {self.started} ({command})"


def this_process() -> Holder:
    """The Holder this process writes into a lock it takes."""
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        command=" ".join(sys.argv),
        ticks=_start_ticks(os.getpid()),
    )


@contextlib.contextmanager
def held(workdir: str, *, needs_writing: bool = True) -> Iterator[None]:
    """Hold `workdir`'s lock while the block runs; released when it ends, by an exception too.

    Only process 0 takes it (the other processes of a run share the workdir); when it cannot,
    every process raises: WorkdirInUse while another run holds it, or the OSError that kept the
    lock from being written. With `needs_writing` False (an evaluation that only records a
    metrics row) a workdir where the lock cannot be written, such as a read-only one, is used
    without it.
    """
    path = to_path(workdir) / LOCK_FILE
    taken, error = None, None
    if jax.process_index() == 0:
        try:
            taken = _take(path)
        except WorkdirInUse as refusal:
            error = refusal
        except OSError as unwritable:
            if needs_writing:
                error = OSError(
                    f"cannot write the lock {path} ({unwritable}); make the workdir writable (its permissions, "
                    "free space) or pass another --workdir"
                )
    if hosts.any_process(error is not None):
        raise error or WorkdirInUse(f"process 0 of this run could not take the lock {path}; see its message")
    try:
        yield
    finally:
        if taken is not None:
            _release(path, taken)


def _take(path: epath.Path) -> Holder:
    """Create the lock at `path` for this process, taking over a stale one; WorkdirInUse when
    a running process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = this_process()
    text = json.dumps(dataclasses.asdict(me))
    stale = None
    for _ in range(3):  # tries after a stale lock was removed, or a lock released in between
        if _create(path, text):
            if stale is not None:
                print(f"Took over the lock {path} of a run that is gone: {stale.describe()}", file=sys.stderr)
            return me
        try:
            holder_text = path.read_text()
        except FileNotFoundError:
            continue
        holder = _holder(path, holder_text)
        if holder.host != me.host or _running(holder):
            raise WorkdirInUse(
                f"workdir {path.parent} is in use by another run: {holder.describe()}; wait for it to end, "
                f"or, if that run is gone, delete {path}"
            )
        stale = holder
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == holder_text:  # still the stale lock, not one a run just took
                path.unlink()
    raise WorkdirInUse(f"workdir {path.parent} is being taken by another run starting now; wait for it to end")


def _create(path: epath.Path, text: str) -> bool:
    """Write `text` as a new file at `path`; False, writing nothing, when one exists."""
    if "://" in str(path):  # no exclusive create on cloud storage: check, then write
        if path.exists():
            return False
        path.write_text(text)
        return True
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(descriptor, text.encode())
    except OSError:
        os.close(descriptor)
        path.unlink()
        raise
    os.close(descriptor)
    return True


def _holder(path: epath.Path, text: str) -> Holder:
    """The Holder a lock file's `text` records; WorkdirInUse when it records none."""
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError) as error:  # a torn write, or not this project's lock
        raise WorkdirInUse(
            f"workdir {path.parent} holds a lock {path} that names no run ({error}); if no run uses this "
            f"workdir, delete {path}"
        ) from None


def _running(holder: Holder) -> bool:
    """Whether the holder's process (of this host) still runs: its pid exists, is no zombie and,
    where /proc tells, started when the lock says."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    stat = _proc_stat(holder.pid)
    if stat is None:
        return True
    state, ticks = stat
    return state != "Z" and (holder.ticks is None or ticks == holder.ticks)


def _start_ticks(pid: int) -> int | None:
    """Process `pid`'s start time in clock ticks since boot, None without /proc."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of process `pid` from /proc/PID/stat; None where that cannot be read."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    # "PID (COMMAND) STATE ...": COMMAND may hold spaces and parentheses; starttime is field 22.
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _release(path: epath.Path, holder: Holder) -> None:
    """Delete the lock at `path` if it is still `holder`'s."""
    try:
        if _holder(path, path.read_text()) == holder:
            path.unlink()
    except OSError:  # already gone, or replaced by hand (WorkdirInUse): not ours to delete
        pass
