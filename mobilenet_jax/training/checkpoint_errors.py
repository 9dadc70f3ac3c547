"""How checkpoint failures reach the user: a full disk as one OSError, Orbax's echoes of a
failure dropped.

Orbax reports a failed read or write several times over (its background threads, its closed
event loop, asyncio's unawaited tasks), each with a traceback; `Checkpoints` reports each failure
once, and the filters here drop the repeats.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from typing import Any, Iterator

# How TensorStore names the OS error behind a failed write (it raises them as ValueErrors).
_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def full_disk_named(directory: os.PathLike) -> Iterator[None]:
    """A full disk met in the block (an OSError, or TensorStore's ValueError naming the errno)
    re-raised as one OSError with that errno, naming `directory` and what to do."""
    try:
        yield
    except (OSError, ValueError) as error:
        code = _full_disk_errno(error)
        if code is None:
            raise
        raised = OSError(
            f"cannot write checkpoints in {directory}: {os.strerror(code).lower()}; free space there, "
            "then rerun the same command: it resumes from the last complete checkpoint"
        )
        raised.errno = code
        raise raised from None


@contextlib.contextmanager
def without_log_lines(prefix: str) -> Iterator[None]:
    """Orbax's log records starting with `prefix` dropped while the block runs."""
    logger = logging.getLogger("absl")
    drop = lambda record: not record.getMessage().startswith(prefix)  # noqa: E731
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _full_disk_errno(error: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT when `error` is a full disk (an OSError, or TensorStore's ValueError
    that names the errno), else None."""
    if isinstance(error, OSError):
        code = error.errno
    else:
        match = _OS_ERROR_CODE.search(str(error))
        code = int(match[1]) if match else None
    return code if code in FULL_DISK_ERRNOS else None


def not_a_full_disk_report(record: logging.LogRecord) -> bool:
    """False for Orbax's logged reports of a full disk, which `Checkpoints` raises as one OSError:
    its background threads log the error several times, each with a traceback. The first such
    report, logged as the save fails, also silences the echoes of the save's abandoned tasks."""
    full = _full_disk_errno(record.exc_info[1] if record.exc_info else None) is not None or any(
        os.strerror(code) in record.getMessage() for code in FULL_DISK_ERRNOS
    )
    if full:
        silence_abandoned_tasks()
    return not full


def silence_abandoned_tasks() -> None:
    """Drop the echoes of a failed restore or save, once one has failed; nothing else is filtered.

    When one array of a checkpoint cannot be read or written, Orbax closes its event loop while
    TensorStore still finishes the checkpoint's other arrays: each of those reports "Event loop is
    closed" as an unraisable exception, and asyncio logs every failed read, and every write a full
    disk failed, again as an exception never retrieved. They only repeat the one-line report
    `restore` prints or the error a save raises, and may arrive after it (the writes' as the
    process exits), so they stay filtered for the rest of the process.
    """
    if getattr(sys.unraisablehook, "drops_abandoned_tasks", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    hook.drops_abandoned_tasks = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_not_an_abandoned_task)


def _not_an_abandoned_task(record: logging.LogRecord) -> bool:
    """False for asyncio's reports of a checkpoint read or full-disk write that nobody awaited."""
    message = record.getMessage()
    full_disk = _full_disk_errno(record.exc_info[1] if record.exc_info else None) is not None
    return not ("exception was never retrieved" in message and ("async_deserialize" in message or full_disk))
