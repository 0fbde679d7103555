"""Freshness and replay protection for verified requests (THREATS S2, S3).

A request is fresh when ``now - ttl - skew <= time <= now + skew`` and
``ttl <= max_ttl``. A fresh request is then looked up in a bounded cache of seen
``(caller, request id)`` pairs, each kept until its deadline ``time + ttl + skew``
(after which the time check alone refuses it). The pair is recorded *before*
:meth:`ReplayGuard.check` returns. When the cache is full and no entry has passed
its deadline, new requests are refused (``replay_cache_full``): the cache degrades by
refusing, never by accepting.

The cache lives in memory: after a restart a request captured within its TTL would
run again (documented limitation, THREATS S2). A daemon that re-executes itself on
SIGHUP hands the cache to its new image (:meth:`ReplayGuard.export`, :meth:`ReplayGuard.restore`).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

from .base import SecurityError

log = logging.getLogger(__name__)


class ReplayGuard:
    """Time window plus a bounded seen-cache; :meth:`check` raises :class:`SecurityError`.

    Reasons: ``expired``, ``future``, ``ttl_too_long``, ``replayed``, ``replay_cache_full``.
    """

    def __init__(self, max_entries: int = 100_000, skew: float = 10, max_ttl: float = 600,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if skew < 0 or max_ttl < 0:
            raise ValueError("skew and max_ttl must not be negative")
        self.max_entries = int(max_entries)
        self.skew = skew
        self.max_ttl = max_ttl
        self.clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (caller, id) -> deadline (unix ms)
        self._deadlines: list[tuple[float, tuple[str, str]]] = []  # min-heap for eviction
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def _evict(self, now_ms: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] < now_ms:
            deadline, key = heapq.heappop(heap)
            if self._seen.get(key) == deadline:
                del self._seen[key]

    @staticmethod
    def _window_error(reason: str, offset_s: float, ttl: float, skew: float) -> SecurityError:
        return SecurityError(
            reason,
            f"request time outside window (offset {offset_s:+.0f}s), clock skew? "
            f"(accepted: -{ttl:g}s-{skew:g}s to +{skew:g}s)",
        )

    def check(self, caller: str, request_id: str, time_ms: int, ttl: int) -> None:
        """Accept (and remember) a request, or raise :class:`SecurityError`."""
        if type(time_ms) is not int or type(ttl) is not int:
            raise SecurityError("malformed", "request time and ttl must be integers")
        if ttl < 0:
            raise SecurityError("malformed", f"negative ttl {ttl}")
        if ttl > self.max_ttl:
            raise SecurityError("ttl_too_long", f"ttl {ttl}s is longer than max_ttl {self.max_ttl:g}s")
        now_ms = self.clock() * 1000.0
        offset_s = (time_ms - now_ms) / 1000.0
        if time_ms < now_ms - (ttl + self.skew) * 1000:
            raise self._window_error("expired", offset_s, ttl, self.skew)
        if time_ms > now_ms + self.skew * 1000:
            raise self._window_error("future", offset_s, ttl, self.skew)
        key = (caller, request_id)
        deadline = float(time_ms + (ttl + self.skew) * 1000)
        with self._lock:
            self._evict(now_ms)
            if key in self._seen:
                raise SecurityError("replayed", f"request {request_id} from {caller} was already seen")
            if len(self._seen) >= self.max_entries:
                raise SecurityError(
                    "replay_cache_full",
                    f"replay cache full ({self.max_entries} unexpired entries): refusing new requests "
                    f"until some expire",
                )
            self._seen[key] = deadline
            heapq.heappush(self._deadlines, (deadline, key))

    def export(self) -> list[tuple[str, str, float]]:
        """The unexpired ``(caller, request id, deadline ms)`` entries, for a daemon that
        re-executes itself (SIGHUP) and must not forget what it has already run."""
        with self._lock:
            self._evict(self.clock() * 1000.0)
            return [(caller, rid, deadline) for (caller, rid), deadline in self._seen.items()]

    def restore(self, entries: list[tuple[str, str, float]]) -> int:
        """Remember ``entries`` (from :meth:`export`) as seen; expired ones and those past
        ``max_entries`` are skipped. Returns how many were kept."""
        now_ms = self.clock() * 1000.0
        kept = 0
        with self._lock:
            for caller, rid, deadline in entries:
                if len(self._seen) >= self.max_entries:
                    break
                if not (isinstance(caller, str) and isinstance(rid, str)
                        and isinstance(deadline, int | float)) or deadline < now_ms:
                    continue
                key = (caller, rid)
                self._seen[key] = float(deadline)
                heapq.heappush(self._deadlines, (float(deadline), key))
                kept += 1
        return kept
