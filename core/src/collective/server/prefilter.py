"""A request's filter on the node: everything done with it before authorization.

A node evaluates a filter before it knows whether the caller may do anything, so
this stage must stay cheap and bounded whatever the filter says (docs/security.md):

On the connector's receive thread, :meth:`Prefilter.screen`:

1. a caller whose filters used more than its share of the receive thread's CPU
   lately (:class:`CallerShares`: :data:`SHARE_RATE` seconds per second, bursts of
   :data:`SHARE_BURST`) is not evaluated: its request does not match
   (``filter_throttled``);
2. the wire form is parsed and checked against the caps of
   :meth:`~collective.filters.Filter.validate` (``filter_refused`` when over them);
3. the filter is evaluated with a :class:`~collective.filters.Budget` of CPU time
   (``filter_budget`` when it runs out) and a resolver that answers only the
   :attr:`~collective.data.DataPlugin.inline` data plugins (``fact``, ``agent``,
   ``collective``). Every other data plugin call is *unknown* (three-valued
   logic): the answer is MATCH, NO_MATCH, or DEFER when only data plugins can
   decide.

A deferred filter is evaluated, if the daemon has authorized the caller first, by
:meth:`Prefilter.submit`: in a small pool of its own (:data:`DATA_WORKERS` threads,
:data:`DATA_QUEUE` waiting, ``filter_busy`` beyond), with at most
:data:`DATA_SECONDS` of data plugin calls. Data plugins therefore never run on the
receive thread and never for a caller the node would refuse.

``filter_deferred`` counts the filters evaluated there. Every refusal here is
silent (a node that does not match says nothing, as in MCollective), counted, and
logged at most once per :data:`LOG_EVERY` seconds per reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..filters import (
    DEFAULT_CPU_BUDGET,
    FILTER_KEYS,
    Budget,
    Filter,
    FilterBudgetExceeded,
    FilterError,
    NodeInfo,
)

log = logging.getLogger(__name__)

__all__ = ["CallerShares", "DEFER", "MATCH", "NO_MATCH", "Prefilter", "Screen"]

#: CPU seconds per second of filter work on the receive thread one caller may use.
SHARE_RATE = 0.1
#: ... in bursts of up to this many seconds.
SHARE_BURST = 0.25
#: Threads that evaluate filters needing data plugins (for authorized callers).
DATA_WORKERS = 2
#: Deferred filters that may wait for those threads; more are dropped (``filter_busy``).
DATA_QUEUE = 16
#: Wall-clock seconds of data plugin calls one filter may use.
DATA_SECONDS = 5.0
#: At most one log line per reason this often (a flood must not flood the log).
LOG_EVERY = 10.0

MATCH = "match"
NO_MATCH = "no_match"
DEFER = "defer"


@dataclass(frozen=True)
class Screen:
    """What :meth:`Prefilter.screen` decided."""

    #: :data:`MATCH`, :data:`NO_MATCH` or :data:`DEFER`
    verdict: str
    #: the parsed filter (for :data:`DEFER`)
    filter: Filter | None = None
    #: the counter of a refusal (``filter_refused``, ...), None for a plain answer
    reason: str | None = None


class CallerShares:
    """A token bucket of receive-thread CPU time per caller.

    :meth:`allowed` is False while a caller's bucket is empty; :meth:`charge` takes
    what a filter used. Buckets refill at ``rate`` seconds per second up to
    ``burst``. Callers are verified identities, so one caller cannot spend
    another's share.
    """

    def __init__(self, rate: float = SHARE_RATE, burst: float = SHARE_BURST,
                 clock: Callable[[], float] = time.monotonic, max_callers: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_callers = max_callers
        self._buckets: dict[str, list[float]] = {}  # caller -> [tokens, as of]
        self._lock = threading.Lock()

    def _bucket(self, caller: str, now: float) -> list[float]:
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= self.max_callers:  # forget the full (idle) ones
                for name in [n for n, b in self._buckets.items()
                             if b[0] + (now - b[1]) * self.rate >= self.burst]:
                    del self._buckets[name]
            bucket = self._buckets[caller] = [self.burst, now]
        else:
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        return bucket

    def allowed(self, caller: str) -> bool:
        with self._lock:
            return self._bucket(caller, self.clock())[0] > 0

    def charge(self, caller: str, seconds: float) -> None:
        with self._lock:
            self._bucket(caller, self.clock())[0] -= max(0.0, seconds)


class _Quiet:
    """``log`` at most once per ``every`` seconds per key, with a count of the rest."""

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, message: str, *args: Any,
                 exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (float("-inf"), 0))
            if now - last < self.every:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        more = f" ({suppressed} more like it in the last {self.every:g}s)" if suppressed else ""
        log.log(level, message + more, *args, exc_info=exc_info)


class Prefilter:
    """The filter stage of one node.

    :param node: the daemon: ``identity``, ``facts()``, ``classes()``, ``host.agents``,
        ``host.data_plugin_instances()`` and ``count(name)``
    """

    def __init__(self, node: Any, cpu_budget: float = DEFAULT_CPU_BUDGET,
                 shares: CallerShares | None = None, data_workers: int = DATA_WORKERS,
                 data_queue: int = DATA_QUEUE, data_seconds: float = DATA_SECONDS) -> None:
        self.node = node
        self.cpu_budget = cpu_budget
        self.shares = shares or CallerShares()
        self.data_seconds = data_seconds
        self._slots = threading.BoundedSemaphore(data_workers + data_queue)
        self._pool = ThreadPoolExecutor(max_workers=data_workers, thread_name_prefix="filter-data")
        self._quiet = _Quiet()

    # -- helpers ---------------------------------------------------------------------
    def plugins(self) -> Mapping[str, Any]:
        """The node's data plugin instances: the same ones its policies use, built once
        per :class:`~collective.server.dispatch.AgentHost` (so a SIGHUP refreshes them)."""
        return self.node.host.data_plugin_instances()

    def _node_info(self, resolver: Any) -> NodeInfo:
        node = self.node
        view = getattr(getattr(node, "facts_store", None), "view", None)
        facts = view() if callable(view) else node.facts()  # read-only, no copy
        return NodeInfo(identity=node.identity, facts=facts, classes=node.classes(),
                        agents=[*node.host.agents, "discovery"], data=resolver)

    def _refused(self, counter: str, request: Any, why: str) -> Screen:
        self.node.count(counter)
        self._quiet(counter, logging.INFO, "request %s from %s does not match: %s (%s)",
                    request.id, request.caller, why, counter)
        return Screen(NO_MATCH, reason=counter)

    # -- the receive thread ------------------------------------------------------------
    def screen(self, request: Any) -> Screen:
        """Decide what ``request``'s filter means here, cheaply (module docstring)."""
        if request.targets is not None and self.node.identity not in request.targets:
            return Screen(NO_MATCH)
        raw = request.filter
        if raw is None or (isinstance(raw, Mapping) and set(raw) <= set(FILTER_KEYS)
                           and all(value == [] for value in raw.values())):
            return Screen(MATCH)  # the empty filter: nothing to evaluate
        caller = request.caller
        if not self.shares.allowed(caller):
            return self._refused("filter_throttled", request,
                                 f"its filters used more than {self.shares.rate:g} s/s of this "
                                 "node's receive thread")
        budget = Budget(self.cpu_budget)
        try:
            try:
                flt = Filter.from_dict(raw, budget)
            except FilterBudgetExceeded as exc:
                return self._refused("filter_budget", request, str(exc))
            except FilterError as exc:
                return self._refused("filter_refused", request, f"unusable filter: {exc}")
            from ..data import DataResolver

            resolver = DataResolver(self.plugins(), self.node, inline_only=True)
            try:
                result = flt.evaluate(self._node_info(resolver), budget)
            except FilterBudgetExceeded as exc:
                return self._refused("filter_budget", request, str(exc))
            except Exception:  # a filter never takes the receive thread down
                self._quiet("filter_error", logging.ERROR,
                            "request %s: filter evaluation failed; not matching", request.id,
                            exc_info=True)
                return Screen(NO_MATCH, reason="filter_error")
        finally:
            self.shares.charge(caller, budget.used())
        if result is None:
            return Screen(DEFER, filter=flt)
        return Screen(MATCH if result else NO_MATCH)

    # -- the data pool -------------------------------------------------------------------
    def submit(self, request: Any, flt: Filter, done: Callable[[bool], None]) -> bool:
        """Evaluate ``flt`` with every data plugin in the data pool, then call
        ``done(matched)`` there. Only for a caller the daemon has authorized.

        :returns: False (and ``filter_busy``) when the pool and its queue are full;
            ``done`` is then never called
        """
        if not self._slots.acquire(blocking=False):
            self._refused("filter_busy", request, "too many filters waiting for data plugins")
            return False

        def run() -> None:
            matched = False
            try:
                matched = self._evaluate(request, flt)
            except Exception:
                log.exception("request %s: filter evaluation failed; not matching", request.id)
            finally:
                self._slots.release()
            done(matched)

        try:
            future = self._pool.submit(run)
        except RuntimeError:  # shut down
            self._slots.release()
            return False
        # a job cancelled by shutdown() still gets its answer, so nothing waits for it
        future.add_done_callback(lambda f: (self._slots.release(), done(False))
                                 if f.cancelled() else None)
        self.node.count("filter_deferred")
        return True

    def _evaluate(self, request: Any, flt: Filter) -> bool:
        from ..data import DataResolver

        resolver = DataResolver(self.plugins(), self.node,
                                deadline=time.monotonic() + self.data_seconds)
        # the CPU budget is the filter's own work; its data plugin calls have the deadline
        budget = Budget(self.cpu_budget,
                        clock=lambda: time.thread_time() - resolver.cpu_in_calls)
        try:
            matched = flt.matches(self._node_info(resolver), budget)
        except FilterBudgetExceeded as exc:
            self._refused("filter_budget", request, str(exc))
            return False
        if resolver.exhausted:
            self._refused("filter_budget", request,
                          f"its data plugins took more than {self.data_seconds:g} s")
            return False
        return matched

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
