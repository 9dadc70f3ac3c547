"""Device batches made ready ahead of the step, by a background thread (big_vision's prefetch)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

Batch = TypeVar("Batch")
DEFAULT_SIZE = 2  # batches on the devices ahead of the step
_END = object()


class DevicePrefetch(Iterator[Any]):
    """`put(batch)` for each batch of `batches`, in order, with `size` of them kept ready.

    A thread reads the host batches and copies them to the devices while the step runs. An
    error in the thread is raised by `__next__` where the batch would have come. `close()` stops
    the thread (the batches it had made ready are dropped); use it as a context manager.
    """

    def __init__(self, batches: Iterator[Batch], put: Callable[[Batch], Any], size: int = DEFAULT_SIZE):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._ready: queue.Queue = queue.Queue(maxsize=size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches, put), daemon=True, name="device-prefetch")
        self._thread.start()

    def _fill(self, batches: Iterator[Batch], put: Callable[[Batch], Any]) -> None:
        try:
            for batch in batches:
                if not self._offer(put(batch)):
                    return
            self._offer(_END)
        except BaseException as error:  # handed to the consumer, which raises it
            self._offer(error)

    def _offer(self, item: Any) -> bool:
        """Queue `item` unless closed first; whether it was queued."""
        while not self._stopping.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __next__(self) -> Any:
        item = self._ready.get()
        if item is _END or isinstance(item, BaseException):
            self._ready.put(item)  # the thread has ended: later calls end the same way
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the thread and wait for it."""
        self._stopping.set()
        self._thread.join()

    def __enter__(self) -> DevicePrefetch:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
