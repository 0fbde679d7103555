"""Freshness and replay protection for verified requests (docs/security.md S2, S3).

A request is fresh when ``now - ttl - skew <= time <= now + skew`` and
``ttl <= max_ttl``. A fresh request is then looked up in a bounded cache of seen
``(caller, request id)`` pairs, each kept until its deadline ``time + ttl + skew``
(after which the time check alone refuses it). The pair is recorded *before*
:meth:`ReplayGuard.check` returns.

The cache is bounded without letting one caller lock out another: it is kept per
caller (the verified identity, so a caller cannot write into another's share).
When a caller holds more than ``max_per_caller`` entries, or the whole cache holds
``max_entries``, the oldest entry (by request time) of the caller that holds the
most is dropped and that caller's *floor* rises to its time: from then on that
caller's requests dated at or before the floor are refused (``replay_window``), so a
dropped entry can never be replayed. A flood therefore costs only the flooding
caller: its own old requests (older than its last ``max_per_caller``) are refused,
its fresh ones still run, and every other caller is untouched. The cache degrades
by refusing old requests of its heaviest user, never by accepting a replay and never
by refusing everyone (the old ``replay_cache_full``).

The cache lives in memory: after a restart a request captured within its TTL would
run again (documented limitation, docs/security.md S2). A daemon that re-executes itself on
SIGHUP hands the cache to its new image (:meth:`ReplayGuard.export`, :meth:`ReplayGuard.restore`).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import SecurityError

log = logging.getLogger(__name__)

#: The request id :meth:`ReplayGuard.export` uses for a caller's floor (real ids are hex).
FLOOR_ID = "floor"


@dataclass
class _Caller:
    """One caller's share of the cache."""

    #: ``(request time ms, request id)``, oldest first; stale items are skipped lazily
    heap: list[tuple[int, str]] = field(default_factory=list)
    #: live entries
    count: int = 0
    #: requests of this caller dated at or before this (ms) are refused; None: no floor
    floor: int | None = None


class ReplayGuard:
    """Time window plus a bounded seen-cache; :meth:`check` raises :class:`SecurityError`.

    Reasons: ``expired``, ``future``, ``ttl_too_long``, ``replayed``, ``replay_window``
    (older than what the cache still remembers for that caller), ``malformed``.

    :param max_entries: entries in all
    :param max_per_caller: entries one caller may hold (default: a tenth of
        ``max_entries``, at least 16)
    """

    def __init__(self, max_entries: int = 100_000, skew: float = 10, max_ttl: float = 600,
                 clock: Callable[[], float] = time.time,
                 max_per_caller: int | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if skew < 0 or max_ttl < 0:
            raise ValueError("skew and max_ttl must not be negative")
        if max_per_caller is not None and max_per_caller < 1:
            raise ValueError("max_per_caller must be at least 1")
        self.max_entries = int(max_entries)
        self.max_per_caller = min(self.max_entries, int(
            max_per_caller if max_per_caller is not None else max(16, max_entries // 10)))
        self.skew = skew
        self.max_ttl = max_ttl
        self.clock = clock
        # (caller, id) -> (deadline ms, request time ms)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}
        self._deadlines: list[tuple[float, tuple[str, str]]] = []  # min-heap for expiry
        self._callers: dict[str, _Caller] = {}
        #: entries dropped before their deadline (each raised a floor)
        self.dropped = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def held(self, caller: str) -> int:
        """How many entries ``caller`` holds."""
        with self._lock:
            share = self._callers.get(caller)
            return share.count if share is not None else 0

    def floor(self, caller: str) -> int | None:
        """The request time (ms) at or before which ``caller``'s requests are refused."""
        with self._lock:
            share = self._callers.get(caller)
            return share.floor if share is not None else None

    # -- bookkeeping (with the lock held) ------------------------------------------
    def _window_ms(self) -> float:
        return (self.max_ttl + self.skew) * 1000.0

    def _remove(self, key: tuple[str, str]) -> None:
        del self._seen[key]
        share = self._callers[key[0]]
        share.count -= 1

    def _evict(self, now_ms: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] < now_ms:
            deadline, key = heapq.heappop(heap)
            entry = self._seen.get(key)
            if entry is not None and entry[0] == deadline:
                self._remove(key)
        # forget callers with nothing left to remember (a floor older than any request
        # the time window would still accept is no longer needed)
        if len(self._callers) > 2 * len(self._seen) + 64:
            oldest_useful = now_ms - self._window_ms()
            for name in [n for n, c in self._callers.items()
                         if c.count == 0 and (c.floor is None or c.floor < oldest_useful)]:
                del self._callers[name]

    def _drop_oldest(self, caller: str) -> None:
        """Drop ``caller``'s oldest entry and raise its floor to that entry's time."""
        share = self._callers[caller]
        while share.heap:
            t_ms, rid = heapq.heappop(share.heap)
            entry = self._seen.get((caller, rid))
            if entry is None or entry[1] != t_ms:
                continue  # expired already
            self._remove((caller, rid))
            share.floor = t_ms if share.floor is None else max(share.floor, t_ms)
            self.dropped += 1
            return

    def _heaviest(self) -> str:
        return max(self._callers.items(), key=lambda item: item[1].count)[0]

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
            share = self._callers.setdefault(caller, _Caller())
            if share.floor is not None and time_ms <= share.floor:
                raise SecurityError(
                    "replay_window",
                    f"request {request_id} from {caller} is older ({offset_s:+.0f}s) than the "
                    f"oldest request this node still remembers for {caller}, which sent many "
                    "since: it could be a replay, so it is refused (send it again)")
            self._seen[key] = (deadline, time_ms)
            share.count += 1
            heapq.heappush(share.heap, (time_ms, request_id))
            heapq.heappush(self._deadlines, (deadline, key))
            if len(share.heap) > 2 * share.count + 64:  # expired items linger: prune
                share.heap = [(t, rid) for t, rid in share.heap
                              if self._seen.get((caller, rid), (0, None))[1] == t]
                heapq.heapify(share.heap)
            if share.count > self.max_per_caller:
                self._drop_oldest(caller)
            while len(self._seen) > self.max_entries:
                self._drop_oldest(self._heaviest())

    def export(self) -> list[tuple[str, str, float]]:
        """The unexpired ``(caller, request id, deadline ms)`` entries, plus one
        ``(caller, FLOOR_ID, floor ms)`` per caller with a floor, for a daemon that
        re-executes itself (SIGHUP) and must not forget what it has already run."""
        with self._lock:
            now_ms = self.clock() * 1000.0
            self._evict(now_ms)
            entries = [(caller, rid, deadline) for (caller, rid), (deadline, _t) in self._seen.items()]
            entries += [(caller, FLOOR_ID, float(share.floor)) for caller, share in self._callers.items()
                        if share.floor is not None and share.floor >= now_ms - self._window_ms()]
            return entries

    def restore(self, entries: list[tuple[str, str, float]]) -> int:
        """Remember ``entries`` (from :meth:`export`) as seen; expired ones are skipped,
        and past the limits the oldest are dropped (raising floors) as in :meth:`check`.
        Returns how many entries (floors not counted) were kept."""
        now_ms = self.clock() * 1000.0
        kept = 0
        with self._lock:
            for caller, rid, deadline in entries:
                if not (isinstance(caller, str) and isinstance(rid, str)
                        and isinstance(deadline, int | float)):
                    continue
                share = self._callers.setdefault(caller, _Caller())
                if rid == FLOOR_ID:
                    floor = int(deadline)
                    share.floor = floor if share.floor is None else max(share.floor, floor)
                    continue
                key = (caller, rid)
                if deadline < now_ms or key in self._seen:
                    continue
                # the request time is not exported: assume the latest it can have been
                # (ttl 0), so a floor raised from it still covers the real one
                t_ms = int(deadline - self.skew * 1000)
                self._seen[key] = (float(deadline), t_ms)
                share.count += 1
                heapq.heappush(share.heap, (t_ms, rid))
                heapq.heappush(self._deadlines, (float(deadline), key))
                kept += 1
                if share.count > self.max_per_caller:
                    self._drop_oldest(caller)
                    kept -= 1
                while len(self._seen) > self.max_entries:
                    self._drop_oldest(self._heaviest())
                    kept -= 1
        return kept
