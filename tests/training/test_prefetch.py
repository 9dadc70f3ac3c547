"""DevicePrefetch: the batches in order, errors where they happen, a thread that stops."""

from __future__ import annotations

import threading

import pytest

from mobilenet_jax.training.prefetch import DevicePrefetch


def test_yields_every_batch_put_in_order_then_stays_exhausted():
    with DevicePrefetch(iter(range(7)), lambda x: x * 10, size=2) as batches:
        assert list(batches) == [0, 10, 20, 30, 40, 50, 60]
        assert list(batches) == []


def test_keeps_at_most_size_batches_ahead():
    taken = []
    release = threading.Event()

    def source():
        for index in range(100):
            taken.append(index)
            yield index

    with DevicePrefetch(source(), lambda x: x, size=2) as batches:
        assert next(batches) == 0
        release.wait(0.3)
        # One handed out, two queued, one read and waiting for room.
        assert len(taken) <= 4


def test_an_error_in_the_source_is_raised_where_its_batch_would_come():
    def source():
        yield 1
        raise OSError("shard 3 is unreadable")

    with DevicePrefetch(source(), lambda x: x) as batches:
        assert next(batches) == 1
        with pytest.raises(OSError, match="shard 3 is unreadable"):
            next(batches)
        with pytest.raises(OSError, match="shard 3 is unreadable"):
            next(batches)


def test_close_stops_an_endless_source():
    batches = DevicePrefetch(iter(int, 1), lambda x: x)  # iter(int, 1): zeros forever
    assert next(batches) == 0
    batches.close()
    assert not any(thread.name == "device-prefetch" for thread in threading.enumerate())


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="prefetch size must be >= 1, got 0"):
        DevicePrefetch(iter([]), lambda x: x, size=0)
