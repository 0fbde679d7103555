"""A bounded worker pool whose jobs have deadlines.

At most ``workers`` actions run at once and at most ``max_queued`` wait; beyond
that :meth:`WorkerPool.submit` refuses at once (the daemon then answers "node
busy"). A job that passes its deadline gets its timeout callback exactly once;
Python threads cannot be killed, so the thread keeps its slot until the action
returns (agents that run commands bound them with their own timeouts).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class PoolFull(Exception):
    """The pool and its queue are full."""


class _Job:
    __slots__ = ("finished", "lock", "timer")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished = False
        self.timer: threading.Timer | None = None

    def claim(self) -> bool:
        """True for the first caller only: the one that may reply."""
        with self.lock:
            if self.finished:
                return False
            self.finished = True
            return True


class WorkerPool:
    def __init__(self, workers: int, max_queued: int, name: str = "worker") -> None:
        self.workers = workers
        self.capacity = workers + max_queued
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self.in_flight = 0

    def submit(self, work: Callable[[], Any], on_done: Callable[[Any], None],
               on_timeout: Callable[[], None], timeout: float,
               on_cancel: Callable[[], None] | None = None) -> None:
        """Run ``work`` and pass its result to ``on_done``, or call ``on_timeout``; a job
        that never started because the pool was shut down gets ``on_cancel`` (so every
        accepted job is answered).

        :raises PoolFull: when ``workers + max_queued`` jobs are already accepted.
        """
        if not self._slots.acquire(blocking=False):
            raise PoolFull()
        job = _Job()
        with self._lock:
            self.in_flight += 1

        def expire() -> None:
            if job.claim():
                log.warning("action passed its %.1fs deadline", timeout)
                on_timeout()

        def run() -> None:
            job.timer = threading.Timer(timeout, expire)
            job.timer.daemon = True
            job.timer.start()
            try:
                result = work()
            except BaseException:  # work() maps errors itself; this is a last resort
                log.exception("worker job failed")
                result = None
            finally:
                job.timer.cancel()
                with self._lock:
                    self.in_flight -= 1
                self._slots.release()
            if job.claim() and result is not None:
                on_done(result)

        def cancelled(future: Any) -> None:
            if not future.cancelled():
                return
            with self._lock:
                self.in_flight -= 1
            self._slots.release()
            if job.claim() and on_cancel is not None:
                on_cancel()

        try:
            self._executor.submit(run).add_done_callback(cancelled)
        except RuntimeError:  # shut down: nothing was queued
            with self._lock:
                self.in_flight -= 1
            self._slots.release()
            raise

    def shutdown(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)
