"""The bounded worker pool: capacity, busy refusal, deadlines."""

from __future__ import annotations

import threading
import time

import pytest

from collective.server.pool import PoolFull, WorkerPool


def test_refuses_beyond_workers_plus_queue():
    pool = WorkerPool(workers=1, max_queued=1)
    gate = threading.Event()
    results = []
    for _ in range(2):
        pool.submit(lambda: (gate.wait(5), "done")[1], results.append, lambda: None, timeout=10)
    with pytest.raises(PoolFull):
        pool.submit(lambda: "x", results.append, lambda: None, timeout=10)
    gate.set()
    deadline = time.monotonic() + 5
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert results == ["done", "done"]
    pool.submit(lambda: "again", results.append, lambda: None, timeout=10)  # capacity is back
    while len(results) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.shutdown()
    assert results == ["done", "done", "again"]


def test_deadline_calls_on_timeout_once_and_drops_the_late_result():
    pool = WorkerPool(workers=1, max_queued=0)
    done, expired = [], []
    pool.submit(lambda: time.sleep(0.5) or "late", done.append, lambda: expired.append(1), timeout=0.1)
    time.sleep(0.8)
    pool.shutdown()
    assert expired == [1]
    assert done == []
