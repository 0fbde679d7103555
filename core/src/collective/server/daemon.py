"""``collectived``: receive, verify, filter, authorize, validate, dispatch, reply, audit.

Every step that rejects a message has one counter and one audit reason. Cheap
checks (size, signature, freshness, replay, filter) run on the connector's
receive thread, each bounded whatever the message says: the filter stage
(:mod:`collective.server.prefilter`) caps and budgets filters, and a filter that
only data plugins can decide is evaluated elsewhere, after authorization; actions
run in a bounded :class:`~collective.server.pool.WorkerPool` with the DDL timeout, and ``rpcutil`` / ``discovery`` run on a reserved thread so
a full pool never stops the node from answering ``mco ping``.

Every accepted request is counted until its reply is sent, so a SIGHUP that
re-executes the daemon (:mod:`collective.server.reload`) can :meth:`Daemon.pause`
(unsubscribe) and :meth:`Daemon.drain` (wait for those replies) first.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import __version__
from ..agent import Reply  # noqa: F401  (re-exported for agents' type hints)
from ..audit import AuditLog, RateLimit, audit_record
from ..authz import DenyUnconfigured
from ..config import Config
from ..connectors.destinations import Destination, caller_reply_name, parse_logical, reply_owner
from ..facts import FactStore, read_classes
from ..filters import Filter
from ..message import NO_REPLY, MalformedMessage, ReplyMessage, RequestMessage
from ..plugins import PluginManager, get_plugin_manager, resolve
from ..security.base import SecurityError
from ..security.freshness import ReplayGuard
from .dispatch import AgentHost, CallInfo, Outcome, short_error
from .pool import PoolFull, WorkerPool
from .prefilter import DEFER, NO_MATCH, Prefilter
from .workers import PoolJob, ProcessPool

log = logging.getLogger(__name__)

#: Agents answered on the reserved thread, never queued behind slow actions.
RESERVED_AGENTS = frozenset({"rpcutil", "discovery"})
#: The connector lanes (threads) the node's subscriptions are handled on: the reserved
#: agents' broadcasts on their own, so a flood on any other destination cannot delay them.
RESERVED_LANE, WORK_LANE = "reserved", "work"
#: A reply stays on the broker until its request's TTL ends, and at least this long.
REPLY_MIN_TTL_S = 10.0
#: SIGTERM and SIGKILL to a timed-out action's process tree are this far apart.
KILL_GRACE_S = 2.0

COUNTERS = (
    "total", "validated", "unvalidated", "passed", "filtered", "replies", "ttlexpired",
    "replayed", "oversize", "denied", "invalid", "busy", "timeouts", "audit_failures",
    "reply_failures", "bad_reply_to", "discovery_unaudited", "unverified_unaudited",
    # the filter stage (server/prefilter.py)
    "filter_refused", "filter_budget", "filter_throttled", "filter_busy", "filter_deferred",
)


def reply_to_refusal(request: RequestMessage) -> str | None:
    """Why the signed ``reply_to`` of ``request`` is not one its caller may use, or None.

    A caller may have replies sent only to its own reply destinations,
    ``COLLECTIVE.reply.NAME.TAG`` with NAME the name part of the verified caller id
    (``cert=admin`` -> ``admin``) and COLLECTIVE the request's, or ask for none
    (``reply_to: none``). Anything else would let a signed request aim replies at
    another client's queue. The embedded broker lets each client read only its own.
    """
    if request.reply_to == NO_REPLY:
        return None
    try:
        dest = parse_logical(request.reply_to)
    except ValueError:
        return f"reply_to {request.reply_to!r} is not a destination"
    if dest.kind != "reply" or dest.collective != request.collective:
        return (f"reply_to {request.reply_to!r} is not a reply destination of collective "
                f"{request.collective}")
    try:
        name = caller_reply_name(request.caller)
    except ValueError as exc:
        return str(exc)
    if reply_owner(dest) != name:
        return (f"reply_to {request.reply_to!r} is not a reply destination of {request.caller} "
                f"(expected {request.collective}.reply.{name}.TAG)")
    return None


def _takes(method: Any, parameter: str) -> bool:
    """Whether a connector's ``method`` accepts ``parameter`` (connector plugins may have
    only the interface of docs/contracts.md)."""
    try:
        return parameter in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


class Daemon:
    """One node. Also the :class:`~collective.server.dispatch.NodeContext` agents see."""

    version = __version__

    def __init__(self, config: Config, pm: PluginManager | None = None,
                 clock: Any = time.time) -> None:
        self.config = config
        self.identity = config.identity
        self.collectives = config.collectives
        self.main_collective = config.main_collective
        self.start_time = time.time()
        self.clock = clock
        self.pm = pm or get_plugin_manager()
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self._counter_lock = threading.Lock()
        self._stopping = threading.Event()
        self._outbox: list[tuple[float, Destination, bytes]] = []
        self._outbox_lock = threading.Lock()
        #: accepted requests whose reply is not sent yet (the drain waits for them)
        self._pending = 0
        self._pending_cond = threading.Condition()
        sec = config["security"]
        self.max_request_bytes = int(sec["max_request_bytes"])
        self.guard = ReplayGuard(max_entries=sec["replay_cache"], skew=sec["skew"],
                                 max_ttl=sec["max_ttl"], clock=clock)
        provider_cls = resolve(sec["provider"], self.pm.security_providers(), "security provider")
        self.security = provider_cls(config, role="node")
        self.facts_store = FactStore(config, self.pm.fact_sources(),
                                     refresh=float(config["facts"]["refresh"]))
        self.audit = self._make_audit()
        #: one line per plugin, DDL or agent that was skipped (``rpcutil daemon_stats``)
        self.problems: list[str] = []
        self.host = self._make_host()
        server = config["server"]
        self.pool = WorkerPool(server["max_concurrent"], server["max_queued"], name="action")
        #: the worker processes (``server.workers: processes``), started by :meth:`start`;
        #: agents they cannot load run on :attr:`pool`'s threads
        self.workers: ProcessPool | None = None
        #: SIGTERM: messages are left unacknowledged (a queue's go to the next daemon)
        self._refusing = threading.Event()
        #: pause: directed requests are left unacknowledged (they go to the next image)
        self._holding_directed = threading.Event()
        self._lane_local = threading.local()
        self.reserved = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reserved")
        self.prefilter = Prefilter(self)  # filters before authorization (server/prefilter.py)
        self._discovery_rate = RateLimit(float(config["audit"].get("discovery_rate", 5.0)))
        self._unverified_rate = RateLimit(float(config["audit"].get("unverified_rate", 5.0)))
        connector_cls = resolve(config["broker"]["connector"], self.pm.connectors(), "connector")
        self.connector = connector_cls(config, client_id=f"node-{self.identity}")
        self._publish_confirms = _takes(self.connector.publish, "confirm")

    # -- construction ----------------------------------------------------------
    def _make_audit(self) -> AuditLog:
        sinks_reg = self.pm.audit_sinks()
        sinks = [resolve(name, sinks_reg, "audit sink")(self.config)
                 for name in self.config["audit"]["sinks"]]
        return AuditLog(sinks, fail_closed=bool(self.config["audit"]["fail_closed"]))

    def _make_authorizer(self) -> Any:
        """The configured authorizer; without one, deny everything unless
        ``authorization.allow_unconfigured`` is set (then None: allow, loudly)."""
        section = self.config["authorization"]
        name = section["provider"]
        if not name:
            if section.get("allow_unconfigured"):
                log.warning("INSECURE: authorization.allow_unconfigured is true and no "
                            "authorization.provider is set: every validated request is allowed")
                return None
            log.warning("no authorization.provider configured: every request is denied "
                        "(see docs/security.md)")
            return DenyUnconfigured()
        return resolve(name, self.pm.authorizers(), "authorizer")(self.config)

    def _make_host(self) -> AgentHost:
        from ..ddl import AgentDDL, DDLError

        problems = [f"plugin {s.name} ({s.distribution} {s.version}): {s.status}"
                    for s in sorted(self.pm.statuses.values(), key=lambda s: s.name)
                    if not s.builtin and s.status not in ("ok", "blocked")]
        formats = self.pm.formats()
        ddls: dict[str, Any] = {}
        bad_ddls: set[str] = set()
        for name, resource in self.pm.ddl_files().items():
            try:
                ddls[name] = AgentDDL.load(resource, formats=formats)
            except Exception as exc:  # a bad DDL disables its agent, never the daemon
                why = str(exc) if isinstance(exc, DDLError) else (
                    f"{resource}: cannot load the DDL: {type(exc).__name__}: {exc}")
                log.error("agent %s disabled: %s", name, why)
                problems.append(f"agent {name} disabled: {why}")
                bad_ddls.add(name)
        # an agent whose DDL was refused is reported once, above, not again as "no DDL"
        agents = {n: cls for n, cls in self.pm.agents().items() if n not in bad_ddls}
        host = AgentHost(self.config, self, agents, ddls, authorizer=self._make_authorizer())
        for problem in host.load():
            log.error("%s", problem)
            problems.append(problem)
        self.problems = problems
        return host

    # -- NodeContext -------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        return self.facts_store.facts()

    def classes(self) -> list[str]:
        path = self.config.get("classes_file")
        return read_classes(path) if path else []

    def agent_ddls(self) -> dict[str, Any]:
        return {name: agent.ddl for name, agent in self.host.agents.items()}

    def data_plugins(self) -> list[str]:
        return sorted(self.pm.data_plugins())

    def stats(self) -> dict[str, Any]:
        with self._counter_lock:
            stats: dict[str, Any] = dict(self.counters)
        stats.update(
            pid=os.getpid(),
            threads=threading.active_count(),
            agents=sorted(self.host.agents),
            starttime=int(self.start_time),
            configfile=str(self.config.path) if self.config.path else None,
            version=self.version,
            in_flight=self.in_flight,
            connector=dict(getattr(self.connector, "stats", {})),
            plugin_problems=list(self.problems),
            workers=self.workers.stats() if self.workers is not None else {"mode": "threads"},
            health=self.health(),
        )
        # every write an audit sink failed, whether or not audit.fail_closed refused the request
        stats["audit_failures"] = max(stats.get("audit_failures", 0), self.audit.failures)
        return stats

    def count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            self.counters[name] += n

    # -- life cycle ----------------------------------------------------------------
    def subscriptions(self) -> list[Destination]:
        dests = []
        for collective in self.collectives:
            for agent in sorted({*self.host.agents, "discovery"}):
                dests.append(Destination.broadcast(collective, agent))
            dests.append(Destination.directed(collective, self.identity))
        return dests

    def start(self, connect_timeout: float | None = None) -> None:
        self.start_workers()
        # Every subscription is known before the connection: the connector subscribes them
        # all, each confirmed by a receipt, before it reports itself connected, and does it
        # again (with backoff, for as long as it takes) after any failure. A subscription
        # the broker did not confirm never leaves a node connected but deaf.
        for dest in self.subscriptions():
            self._subscribe(dest)
        threading.Thread(target=self._outbox_loop, name="outbox", daemon=True).start()
        self.connector.connect(timeout=connect_timeout)
        # -- registration (server.registration_interval > 0) ---------------------
        interval = int(self.config["server"].get("registration_interval") or 0)
        if interval > 0 and not self._stopping.is_set():
            from .registration import RegistrationPublisher

            self.registration = RegistrationPublisher(self, interval)
            self.registration.start()
        # -- end registration ----------------------------------------------------
        log.info("collectived %s started as %s in %s with agents %s", self.version,
                 self.identity, ",".join(self.collectives), ",".join(sorted(self.host.agents)))

    # -- worker processes and subscriptions ----------------------------------------
    def start_workers(self) -> None:
        """Start the zygote and the first worker (``server.workers: processes``); done by
        :meth:`start` unless called before (``collectived`` does, on its main thread)."""
        server = self.config["server"]
        if server.get("workers", "processes") != "processes" or self.workers is not None:
            return
        host = self.host
        agents = []
        for name, cls in sorted(host.agent_classes.items()):
            ddl = host.ddls.get(name)
            if ddl is None or name in RESERVED_AGENTS:
                continue
            module = sys.modules.get(getattr(cls, "__module__", ""))
            agents.append({"name": name, "module": cls.__module__, "qualname": cls.__qualname__,
                           "file": getattr(module, "__file__", None), "ddl": ddl.to_dict(),
                           "source": ddl.source})
        init = {
            "sys_path": list(sys.path), "config": self.config, "agents": agents,
            "node": {"identity": self.identity, "collectives": list(self.collectives),
                     "main_collective": self.main_collective, "start_time": self.start_time,
                     "version": self.version},
            "log_level": logging.getLogger().getEffectiveLevel(), "kill_grace": 1.0,
        }
        pool = ProcessPool(init, self._node_query, max_workers=server["max_concurrent"],
                           max_queued=server["max_queued"],
                           min_workers=int(server.get("min_workers", 1)), kill_grace=KILL_GRACE_S)
        try:
            failed = pool.start()
        except Exception as exc:  # noqa: BLE001 - the node still serves, on threads
            log.error("worker processes are not available (%s): every action runs on the "
                      "daemon's threads and cannot be stopped at its timeout", exc)
            self.problems.append(f"worker processes are not available: {exc}")
            return
        self.workers = pool
        for name, why in sorted(failed.items()):
            if name in host.agents:
                problem = (f"agent {name} runs on the daemon's threads (its actions cannot be "
                           f"stopped at their timeout): the worker processes cannot load it: {why}")
                log.warning("%s", problem)
                self.problems.append(problem)

    def _node_query(self, what: str) -> Any:
        """A worker's agent asked ``self.node.<what>()``."""
        answers = {"facts": self.facts, "classes": self.classes, "stats": self.stats,
                   "data_plugins": self.data_plugins}
        return answers[what]() if what in answers else None

    def _subscribe(self, dest: Destination) -> None:
        """Subscribe with a bounded prefetch (``broker.prefetch``), acknowledging each
        request once it was accepted or refused, on the lane of its agent."""
        reserved = dest.kind == "broadcast" and dest.name in RESERVED_AGENTS
        prefetch = int(self.config["broker"].get("prefetch") or 0)
        kind = dest.kind

        def deliver(wire: bytes) -> bool:
            if kind == "directed" and self._holding_directed.is_set():
                return False  # unacknowledged: the broker gives it to the next subscriber
            return self.on_message(wire)

        if prefetch > 0 and _takes(self.connector.subscribe, "prefetch"):
            self.connector.subscribe(dest, deliver, prefetch=prefetch,
                                     lane=RESERVED_LANE if reserved else WORK_LANE)
        else:  # a connector plugin without prefetch: what it has
            self.connector.subscribe(dest, deliver)

    @property
    def in_flight(self) -> int:
        """Actions running now (threads and worker processes)."""
        return self.pool.in_flight + (self.workers.in_flight if self.workers is not None else 0)

    def health(self) -> dict[str, Any]:
        """``{"ok": bool, "state": str, ...}``: ok while every subscription is in place
        (and the worker processes, when used, can be forked)."""
        check = getattr(self.connector, "health", None)
        health = dict(check()) if callable(check) else {"ok": True, "state": "unknown"}
        if self.config["server"].get("workers", "processes") == "processes" \
                and self.workers is None and not self._stopping.is_set():
            health.update(ok=False, state=f"{health.get('state')}; no worker processes")
        return health

    def reload(self) -> None:
        """SIGHUP with unchanged code: re-read facts, policies and the trust store,
        reopen the audit log and re-activate the agents (same classes: new code needs
        the re-exec of :mod:`collective.server.reload`)."""
        log.info("reloading agents, facts, policies and keys")
        old = set(self.host.agents)
        self.security.reload()
        self.facts_store.reload()
        self.audit.reopen()
        self.host = self._make_host()
        keep = {*self.host.agents, "discovery"}
        for collective in self.collectives:
            for agent in sorted(set(self.host.agents) - old):
                self._subscribe(Destination.broadcast(collective, agent))
            for agent in sorted(old - keep):
                self.connector.unsubscribe(Destination.broadcast(collective, agent))

    # -- pause and drain (re-exec on SIGHUP) ---------------------------------------
    def pause(self) -> None:
        """Stop taking new work: stop registration and unsubscribe from every destination.

        Each UNSUBSCRIBE waits for the broker's receipt; a request delivered before it is
        handled as usual (it counts as accepted). Directed requests sent from now on wait
        in the node's queue for whoever subscribes next; broadcasts are not seen.
        """
        from ..connectors.stomp import ConnectorError

        registration = getattr(self, "registration", None)
        if registration is not None:
            registration.stop()
        # A directed request the broker delivered but we did not acknowledge yet goes back
        # to the node's queue at the UNSUBSCRIBE (or the disconnect): leave those to the
        # next image instead of running them here as well. Broadcasts have nobody else.
        self._holding_directed.set()
        listing = getattr(self.connector, "subscriptions", None)
        for dest in (listing() if callable(listing) else self.subscriptions()):
            try:
                try:
                    self.connector.unsubscribe(dest, confirm=True)
                except TypeError:  # a connector without confirmed unsubscribe
                    self.connector.unsubscribe(dest)
            except ConnectorError as exc:
                log.warning("unsubscribing from %s: %s", dest, exc)
        # messages delivered before the receipts may still wait on a lane: handle them now
        quiesce = getattr(self.connector, "quiesce", None)
        if callable(quiesce) and not quiesce(float(self.config["broker"]["publish_timeout"])):
            log.warning("pause: some delivered requests were not handled in time")

    @property
    def pending(self) -> int:
        """Accepted requests whose reply has not been sent (or queued in the outbox)."""
        with self._pending_cond:
            return self._pending

    def drain_timeout(self) -> float:
        """How long :meth:`drain` may wait: every pending request through the pool at the
        longest DDL timeout, plus the broker's publish timeout and a little."""
        longest = max((float(a.timeout) for a in self.host.agents.values()), default=10.0)
        workers = self.workers.workers if self.workers is not None else self.pool.workers
        rounds = max(1, -(-self.pending // max(1, workers)))
        return rounds * longest + float(self.config["broker"]["publish_timeout"]) + 5.0

    def drain(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Wait until every accepted request has replied and no action thread runs.

        An action past its DDL timeout has had its "timed out" reply already; its thread
        is waited for until ``timeout`` (default :meth:`drain_timeout`).

        :returns: True when nothing is left running; False on timeout or ``stop``
        """
        deadline = time.monotonic() + (self.drain_timeout() if timeout is None else timeout)
        with self._pending_cond:
            while self._pending and time.monotonic() < deadline:
                if stop is not None and stop.is_set():
                    return False
                self._pending_cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            if self._pending:
                log.warning("drain: %d request(s) still without a reply after the drain timeout",
                            self._pending)
                return False
        while self.in_flight and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return False
            time.sleep(0.05)
        if self.in_flight:
            log.warning("drain: %d action(s) still running past their deadline", self.in_flight)
            return False
        return True

    def take_outbox(self) -> list[tuple[float, Destination, bytes]]:
        """The replies still waiting for the broker (unexpired), removed from this daemon."""
        with self._outbox_lock:
            pending, self._outbox = self._outbox, []
        now = time.time()
        return [item for item in pending if item[0] > now]

    def restore_outbox(self, items: list[tuple[float, Destination, bytes]]) -> None:
        """Queue replies handed over by the previous image; the outbox loop sends them."""
        with self._outbox_lock:
            self._outbox.extend(items)

    def _begin(self) -> None:
        with self._pending_cond:
            self._pending += 1

    def _end(self) -> None:
        with self._pending_cond:
            self._pending -= 1
            self._pending_cond.notify_all()

    def shutdown(self, grace: float | None = None, abort: threading.Event | None = None) -> None:
        """SIGTERM: take no new work, give in-flight actions ``grace`` seconds
        (``server.stop_grace``) to finish and send their replies, then :meth:`stop` (which
        ends what is still running, with a status 5 reply each).

        Requests delivered from now on are left unacknowledged: a directed one goes back
        to the node's queue for the next daemon, a broadcast one is lost (at-most-once).
        ``abort`` (a second SIGTERM) ends the grace period early.
        """
        grace = float(self.config["server"].get("stop_grace", 10.0) if grace is None else grace)
        self._refusing.set()
        registration = getattr(self, "registration", None)
        if registration is not None:
            registration.stop()
        started = time.monotonic()
        if self.pending:
            log.info("stopping: waiting up to %gs for %d request(s) in progress", grace,
                     self.pending)
        finished = self.drain(timeout=grace, stop=abort)
        log.info("stopping after %.1fs%s", time.monotonic() - started,
                 "" if finished else f"; {self.pending} request(s) still running are ended")
        self.stop()

    def stop(self, reason: str = "the daemon is stopping") -> None:
        """Stop now: running actions are ended (their process trees killed) and get a
        status 5 reply, queued ones "node busy"; then disconnect."""
        self._stopping.set()
        self._refusing.set()
        registration = getattr(self, "registration", None)  # -- registration
        if registration is not None:
            registration.stop()
        publish_timeout = float(self.config["broker"]["publish_timeout"])
        if self.workers is not None:
            self.workers.stop(reason, timeout=publish_timeout + 5.0)
        self.pool.shutdown(wait=False)
        self.reserved.shutdown(wait=False, cancel_futures=True)
        self.prefilter.shutdown()
        # the replies of what was just ended are on their way: let them reach the broker
        with self._pending_cond:
            deadline = time.monotonic() + min(publish_timeout, 5.0)
            while self._pending and time.monotonic() < deadline:
                self._pending_cond.wait(0.05)
        try:
            self.connector.disconnect()
        finally:
            self.audit.close()

    # -- the pipeline --------------------------------------------------------------
    def on_message(self, wire: bytes) -> bool:
        """Handle one inbound message; never raises into the connector.

        :returns: False (leave it unacknowledged) once the daemon is stopping
        """
        if self._refusing.is_set():
            return False
        self._lane_local.active = True  # replies from here are sent without a receipt
        try:
            self._handle(wire)
        except Exception:  # the receive loop must survive anything
            log.exception("unexpected error while handling a message")
        finally:
            self._lane_local.active = False
        return True

    def _refuse(self, reason: str, counter: str, request: RequestMessage | None = None,
                detail: str = "") -> None:
        self.count(counter)
        if request is None:
            # Unverified (oversize, malformed, bad signature): anyone who can publish can
            # send these, so they are logged and audited at most audit.unverified_rate
            # lines a second; the counters have every one.
            write, skipped = self._unverified_rate.take()
            if not write:
                self.count("unverified_unaudited")
                return
            log.info("refused message: %s %s%s", reason, detail,
                     f" ({skipped} more refused unverified messages not logged before this)"
                     if skipped else "")
            self.audit.record(**audit_record(decision="refused", reason=reason,
                                             node=self.identity, unaudited_before=skipped))
            return
        log.info("refused message: %s %s", reason, detail)
        fields: dict[str, Any] = {"decision": "refused", "reason": reason, "node": self.identity}
        if request is not None:
            fields.update(request_id=request.id, caller=request.caller, agent=request.agent,
                          action=request.action, collective=request.collective,
                          sender=request.sender, data=request.data)
        self.audit.record(**audit_record(**fields))

    def _handle(self, wire: bytes) -> None:
        self.count("total")
        if len(wire) > self.max_request_bytes:
            self._refuse("oversize", "oversize", detail=f"{len(wire)} bytes")
            self.count("unvalidated")
            return
        try:
            verified, request = self.security.verify_request(wire)
        except (SecurityError, MalformedMessage) as exc:
            self._refuse(getattr(exc, "reason", "malformed"), "unvalidated", detail=str(exc))
            return
        self.count("validated")
        if request.collective not in self.collectives:
            self._refuse("collective", "unvalidated", request)
            return
        why = reply_to_refusal(request)  # before anything could reply
        if why is not None:
            self._refuse("reply_to", "bad_reply_to", request, why)
            return
        try:
            self.guard.check(request.caller, request.id, request.time, request.ttl)
        except SecurityError as exc:
            counter = "replayed" if exc.reason in ("replayed", "replay_window") else "ttlexpired"
            self._refuse(exc.reason, counter, request, str(exc))
            if exc.reason != "replayed":  # tell the client: clock skew (R8), or resend
                self._reply(verified.body, request, 1, str(exc), {})
            return
        # Cheap and bounded on this thread; a filter that only data plugins can decide
        # waits for authorization and runs elsewhere (server/prefilter.py).
        screen = self.prefilter.screen(request)
        if screen.verdict == NO_MATCH:
            self.count("filtered")
            return
        if screen.verdict == DEFER:
            assert screen.filter is not None
            self._deferred(verified.body, request, screen.filter)
            return
        self._matched(verified.body, request)

    def _matched(self, body: bytes, request: RequestMessage, host: AgentHost | None = None,
                 call: CallInfo | None = None) -> None:
        """The filter matched: answer a discovery ping, or authorize and dispatch.

        ``host`` and ``call`` are given when :meth:`_deferred` already prepared it.
        """
        self.count("passed")
        if request.agent == "discovery":
            self._audit_discovery(request)
            self._reply(body, request, 0, "OK", {"pong": int(self.clock())})
            return
        if host is None or call is None:
            call = self._call_info(request)
            host = self.host
            try:
                outcome = host.prepare(call)
            except Exception as exc:  # a broken format check or authorizer: still a reply
                log.exception("request %s: checking %s#%s failed", request.id, request.agent,
                              request.action)
                outcome = Outcome(5, f"Unknown error in {request.agent}#{request.action}: "
                                     f"{short_error(exc)}", {}, "invalid", "error")
            if outcome is not None:
                self.count("denied" if outcome.decision == "deny" else "invalid")
                decision = "deny" if outcome.decision == "deny" else "refused"
                self._audit(request, decision, outcome.reason, outcome.statuscode)
                self._reply(body, request, outcome.statuscode, outcome.statusmsg, outcome.data)
                return
        audited = self._audit(request, "allow", "authorized", None)
        if not audited and self.audit.fail_closed and request.agent not in RESERVED_AGENTS:
            self.count("audit_failures")
            self._audit(request, "refused", "audit_unavailable", 1)  # reaches the sinks that still work
            self._reply(body, request, 1, "audit unavailable: request refused", {})
            return
        self._dispatch(host, call, request, body)

    @staticmethod
    def _call_info(request: RequestMessage, agent: str | None = None,
                   action: str | None = None, data: Any = None) -> CallInfo:
        return CallInfo(request_id=request.id, caller=request.caller, sender=request.sender,
                        agent=agent or request.agent, action=action or request.action,
                        data=request.data if data is None else data,
                        collective=request.collective, time=request.time)

    def _deferred(self, body: bytes, request: RequestMessage, flt: Filter) -> None:
        """Only data plugins can decide whether the filter matches: authorize first.

        A request is authorized as usual (names, DDL, policy); a discovery ping as
        ``discovery ping`` (actionpolicy: ``discovery.policy``). A refused caller gets
        no reply at all (it must not learn what the data plugins would have said) and
        an audit line; an authorized one has the filter evaluated in the prefilter's
        data pool, then goes on as a match or stays silent.
        """
        host = self.host
        if request.agent == "discovery":
            call = self._call_info(request, "discovery", "ping", {})
            outcome = host.authorize_only(call)
        else:
            call = self._call_info(request)
            outcome = host.prepare(call)
        if outcome is not None:
            denied = outcome.decision == "deny"
            self.count("denied" if denied else "invalid")
            self._audit(request, "deny" if denied else "refused",
                        f"{outcome.reason}; no reply: the filter needs data plugins, which run "
                        "only for authorized callers", None)
            return
        self._begin()

        def finished(matched: bool) -> None:  # on a data pool thread
            try:
                if matched:
                    self._matched(body, request, host, call)
                else:
                    self.count("filtered")
            except Exception:
                log.exception("request %s: failed after its filter matched", request.id)
            finally:
                self._end()

        if not self.prefilter.submit(request, flt, finished):
            self._end()

    def _audit_discovery(self, request: RequestMessage) -> None:
        """Audit a discovery ping this node answers, at most ``audit.discovery_rate``
        lines a second: a line says how many pings were left out before it
        (``discovery_unaudited``), and so does the counter of the same name."""
        write, skipped = self._discovery_rate.take()
        if not write:
            self.count("discovery_unaudited")
            return
        self.audit.record(**audit_record(
            request_id=request.id, caller=request.caller, agent="discovery", action="ping",
            node=self.identity, decision="allow", reason="discovery", statuscode=0,
            data=request.data, collective=request.collective, sender=request.sender,
            unaudited_before=skipped))

    def _audit(self, request: RequestMessage, decision: str, reason: str,
               statuscode: int | None) -> bool:
        return self.audit.record(**audit_record(
            request_id=request.id, caller=request.caller, agent=request.agent,
            action=request.action, node=self.identity, decision=decision, reason=reason,
            statuscode=statuscode, data=request.data, collective=request.collective,
            sender=request.sender,
        ))

    def _dispatch(self, host: AgentHost, call: CallInfo, request: RequestMessage,
                  body: bytes) -> None:
        timeout = float(host.agents[call.agent].timeout)

        def done(outcome: Outcome) -> None:
            try:
                self._reply(body, request, outcome.statuscode, outcome.statusmsg, outcome.data)
            finally:
                self._end()

        def expired() -> None:
            try:
                self.count("timeouts")
                self._reply(body, request, 5, f"timed out after {timeout:g}s", {})
            finally:
                self._end()

        def finished(future: Any) -> None:
            if future.cancelled():  # shutting down before it started
                busy("node busy: the daemon is stopping")
                return
            exc = future.exception()
            done(future.result() if exc is None else Outcome(
                5, f"Unknown error in {call.agent}#{call.action}: {short_error(exc)}", {},
                "allow", "error"))

        def busy(message: str) -> None:
            try:
                self.count("busy")
                self._reply(body, request, 1, message, {})
            finally:
                self._end()

        # Every accepted request gets exactly one reply: from done / expired / finished,
        # or "node busy" here.
        self._begin()
        if call.agent in RESERVED_AGENTS:
            try:
                self.reserved.submit(self._run, host, call).add_done_callback(finished)
            except RuntimeError:  # the executor is shut down
                busy("node busy: the daemon is stopping")
            return
        workers = self.workers
        try:
            if workers is not None and call.agent in workers.loaded:
                workers.submit(PoolJob(call=call, host=host, timeout=timeout, on_done=done,
                                       on_timeout=expired,
                                       expires_at=request.time / 1000 + request.ttl))
            else:
                self.pool.submit(lambda: self._run(host, call), done, expired, timeout,
                                 on_cancel=lambda: busy("node busy: the daemon is stopping"))
        except PoolFull:
            busy("node busy: too many requests in progress")
        except RuntimeError:  # the pool is shut down
            busy("node busy: the daemon is stopping")

    @staticmethod
    def _run(host: AgentHost, call: CallInfo) -> Outcome:
        """``host.run`` that always returns an outcome, so the request always gets its reply."""
        try:
            return host.run(call)
        except BaseException as exc:  # noqa: BLE001 - host.run maps errors; this is the last resort
            log.exception("%s#%s (request %s) failed", call.agent, call.action, call.request_id)
            return Outcome(5, f"Unknown error in {call.agent}#{call.action}: {short_error(exc)}",
                           {}, "allow", "error")

    def _reply(self, request_body: bytes, request: RequestMessage, statuscode: int,
               statusmsg: str, data: dict[str, Any]) -> None:
        if request.reply_to == NO_REPLY:  # fire and forget (mco rpc --no-results)
            return
        try:
            dest = parse_logical(request.reply_to)
        except ValueError:
            log.info("request %s has an unusable reply_to %r", request.id, request.reply_to)
            return
        if dest.kind != "reply" or dest.collective != request.collective:
            log.info("request %s reply_to %r is not a reply destination of its collective",
                     request.id, request.reply_to)
            return
        reply = ReplyMessage.for_request(request_body, request, self.identity, statuscode,
                                         statusmsg, data)
        wire = self.security.sign(reply.to_body(), "reply")
        # The reply expires on the broker with its request (and never sooner than a few
        # seconds from now): a client that has gone does not leave replies behind.
        deadline = max(request.time / 1000 + request.ttl, time.time() + REPLY_MIN_TTL_S)
        # replies sent while a message is handled (refusals, "node busy") do not wait for
        # a receipt: the lane would wait a round trip per message under a flood
        quick = getattr(self._lane_local, "active", False)
        self._publish(dest, wire, deadline=deadline, confirm=False if quick else None)

    def _publish(self, dest: Destination, wire: bytes, deadline: float,
                 confirm: bool | None = None) -> None:
        from ..connectors.stomp import ConnectorError

        ttl = max(1.0, deadline - time.time())
        try:
            if self._publish_confirms:
                self.connector.publish(dest, wire, ttl=ttl, confirm=confirm)
            else:  # a connector plugin without confirm=
                self.connector.publish(dest, wire, ttl=ttl)
            self.count("replies")
        except ConnectorError as exc:
            self.count("reply_failures")
            log.warning("could not publish a reply, keeping it until its deadline: %s", exc)
            with self._outbox_lock:
                self._outbox = [item for item in self._outbox if item[0] > time.time()][-999:]
                self._outbox.append((deadline, dest, wire))

    def _outbox_loop(self) -> None:
        """Re-send replies that failed to publish, until their request's deadline (R2)."""
        while not self._stopping.wait(1.0):
            with self._outbox_lock:
                pending, self._outbox = self._outbox, []
            for deadline, dest, wire in pending:
                if deadline > time.time():
                    self._publish(dest, wire, deadline)
