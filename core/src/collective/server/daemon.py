"""``collectived``: receive, verify, filter, authorize, validate, dispatch, reply, audit.

Every step that rejects a message has one counter and one audit reason. Cheap
checks (size, signature, freshness, replay, filter) run on the connector's
receive thread; actions run in a bounded :class:`~collective.server.pool.WorkerPool`
with the DDL timeout, and ``rpcutil`` / ``discovery`` run on a reserved thread so
a full pool never stops the node from answering ``mco ping``.

Every accepted request is counted until its reply is sent, so a SIGHUP that
re-executes the daemon (:mod:`collective.server.reload`) can :meth:`Daemon.pause`
(unsubscribe) and :meth:`Daemon.drain` (wait for those replies) first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import __version__
from ..agent import Reply  # noqa: F401  (re-exported for agents' type hints)
from ..audit import AuditLog, audit_record
from ..config import Config
from ..connectors.destinations import Destination, parse_logical
from ..facts import FactStore, read_classes
from ..filters import Filter, FilterError, NodeInfo
from ..message import MalformedMessage, ReplyMessage, RequestMessage
from ..plugins import PluginManager, get_plugin_manager, resolve
from ..security.base import SecurityError
from ..security.freshness import ReplayGuard
from .dispatch import AgentHost, CallInfo, Outcome, _short_error
from .pool import PoolFull, WorkerPool

log = logging.getLogger(__name__)

#: ``reply_to`` of a fire-and-forget request (signed like every other field): act, don't reply.
NO_REPLY = "none"

#: Agents answered on the reserved thread, never queued behind slow actions.
RESERVED_AGENTS = frozenset({"rpcutil", "discovery"})

COUNTERS = (
    "total", "validated", "unvalidated", "passed", "filtered", "replies", "ttlexpired",
    "replayed", "oversize", "denied", "invalid", "busy", "timeouts", "audit_failures",
    "reply_failures",
)


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
        self.reserved = ThreadPoolExecutor(max_workers=2, thread_name_prefix="reserved")
        connector_cls = resolve(config["broker"]["connector"], self.pm.connectors(), "connector")
        self.connector = connector_cls(config, client_id=f"node-{self.identity}")

    # -- construction ----------------------------------------------------------
    def _make_audit(self) -> AuditLog:
        sinks_reg = self.pm.audit_sinks()
        sinks = [resolve(name, sinks_reg, "audit sink")(self.config)
                 for name in self.config["audit"]["sinks"]]
        return AuditLog(sinks, fail_closed=bool(self.config["audit"]["fail_closed"]))

    def _make_authorizer(self) -> Any:
        name = self.config["authorization"]["provider"]
        if not name:
            log.info("no authorization provider configured: every validated request is allowed")
            return None
        return resolve(name, self.pm.authorizers(), "authorizer")(self.config)

    def _make_host(self) -> AgentHost:
        from ..ddl import AgentDDL, DDLError

        problems = [f"plugin {s.name} ({s.distribution} {s.version}): {s.status}"
                    for s in sorted(self.pm.statuses.values(), key=lambda s: s.name)
                    if not s.builtin and s.status not in ("ok", "blocked")]
        formats = self.pm.formats()
        ddls: dict[str, Any] = {}
        for name, resource in self.pm.ddl_files().items():
            try:
                ddls[name] = AgentDDL.load(resource, formats=formats)
            except DDLError as exc:
                log.error("agent %s disabled: %s", name, exc)
                problems.append(f"agent {name} disabled: {exc}")
        host = AgentHost(self.config, self, self.pm.agents(), ddls,
                         authorizer=self._make_authorizer())
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
            in_flight=self.pool.in_flight,
            connector=dict(getattr(self.connector, "stats", {})),
            plugin_problems=list(self.problems),
        )
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
        self.connector.connect(timeout=connect_timeout)
        for dest in self.subscriptions():
            self.connector.subscribe(dest, self.on_message)
        threading.Thread(target=self._outbox_loop, name="outbox", daemon=True).start()
        # -- registration (server.registration_interval > 0) ---------------------
        interval = int(self.config["server"].get("registration_interval") or 0)
        if interval > 0 and not self._stopping.is_set():
            from .registration import RegistrationPublisher

            self.registration = RegistrationPublisher(self, interval)
            self.registration.start()
        # -- end registration ----------------------------------------------------
        log.info("collectived %s started as %s in %s with agents %s", self.version,
                 self.identity, ",".join(self.collectives), ",".join(sorted(self.host.agents)))

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
                self.connector.subscribe(Destination.broadcast(collective, agent), self.on_message)
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
        listing = getattr(self.connector, "subscriptions", None)
        for dest in (listing() if callable(listing) else self.subscriptions()):
            try:
                try:
                    self.connector.unsubscribe(dest, confirm=True)
                except TypeError:  # a connector without confirmed unsubscribe
                    self.connector.unsubscribe(dest)
            except ConnectorError as exc:
                log.warning("unsubscribing from %s: %s", dest, exc)

    @property
    def pending(self) -> int:
        """Accepted requests whose reply has not been sent (or queued in the outbox)."""
        with self._pending_cond:
            return self._pending

    def drain_timeout(self) -> float:
        """How long :meth:`drain` may wait: every pending request through the pool at the
        longest DDL timeout, plus the broker's publish timeout and a little."""
        longest = max((float(a.timeout) for a in self.host.agents.values()), default=10.0)
        rounds = max(1, -(-self.pending // max(1, self.pool.workers)))
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
        while self.pool.in_flight and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return False
            time.sleep(0.05)
        if self.pool.in_flight:
            log.warning("drain: %d action thread(s) still running past their deadline",
                        self.pool.in_flight)
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

    def stop(self) -> None:
        self._stopping.set()
        registration = getattr(self, "registration", None)  # -- registration
        if registration is not None:
            registration.stop()
        self.pool.shutdown(wait=False)
        self.reserved.shutdown(wait=False, cancel_futures=True)
        try:
            self.connector.disconnect()
        finally:
            self.audit.close()

    # -- the pipeline --------------------------------------------------------------
    def on_message(self, wire: bytes) -> None:
        """Handle one inbound message; never raises into the connector."""
        try:
            self._handle(wire)
        except Exception:  # the receive loop must survive anything
            log.exception("unexpected error while handling a message")

    def _refuse(self, reason: str, counter: str, request: RequestMessage | None = None,
                detail: str = "") -> None:
        self.count(counter)
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
        try:
            self.guard.check(request.caller, request.id, request.time, request.ttl)
        except SecurityError as exc:
            counter = "replayed" if exc.reason == "replayed" else "ttlexpired"
            self._refuse(exc.reason, counter, request, str(exc))
            if counter == "ttlexpired":  # tell the client, so clock skew is visible (R8)
                self._reply(verified.body, request, 1, str(exc), {})
            return
        if not self._matches(request):
            self.count("filtered")
            return
        self.count("passed")
        if request.agent == "discovery":
            self._reply(verified.body, request, 0, "OK", {"pong": int(self.clock())})
            return
        call = CallInfo(request_id=request.id, caller=request.caller, sender=request.sender,
                        agent=request.agent, action=request.action, data=request.data,
                        collective=request.collective, time=request.time)
        host = self.host
        outcome = host.prepare(call)
        if outcome is not None:
            self.count("denied" if outcome.decision == "deny" else "invalid")
            decision = "deny" if outcome.decision == "deny" else "refused"
            self._audit(request, decision, outcome.reason, outcome.statuscode)
            self._reply(verified.body, request, outcome.statuscode, outcome.statusmsg, outcome.data)
            return
        audited = self._audit(request, "allow", "authorized", None)
        if not audited and self.audit.fail_closed and request.agent not in RESERVED_AGENTS:
            self.count("audit_failures")
            self._audit(request, "refused", "audit_unavailable", 1)  # reaches the sinks that still work
            self._reply(verified.body, request, 1, "audit unavailable: request refused", {})
            return
        self._dispatch(host, call, request, verified.body)

    def _matches(self, request: RequestMessage) -> bool:
        if request.targets is not None and self.identity not in request.targets:
            return False
        try:
            flt = Filter.from_dict(request.filter)
        except FilterError as exc:
            log.info("request %s has an unusable filter: %s", request.id, exc)
            return False
        data = None
        if flt.compound:
            # Data plugin instances live as long as the daemon; results are cached
            # per message by the resolver.
            from ..data import DataResolver, instantiate

            plugins = self.__dict__.get("_data_plugin_instances")
            if plugins is None:
                try:
                    plugins = instantiate(self.pm.data_plugins())
                except Exception:
                    log.exception("data plugins could not be loaded; compound filters calling "
                                  "functions will not match")
                    plugins = {}
                self.__dict__["_data_plugin_instances"] = plugins
            data = DataResolver(plugins, self)
        node = NodeInfo(identity=self.identity, facts=self.facts(), classes=self.classes(),
                        agents=[*self.host.agents, "discovery"], data=data)
        try:
            return flt.matches(node)
        except Exception:  # a filter never takes the receive thread down
            log.exception("request %s: filter evaluation failed; not matching", request.id)
            return False

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
            if future.cancelled() or future.exception() is not None:
                self._end()  # shutting down: nobody will reply
                return
            done(future.result())

        self._begin()  # replied by exactly one of done / expired / finished / busy
        if call.agent in RESERVED_AGENTS:
            try:
                self.reserved.submit(self._run, host, call).add_done_callback(finished)
            except RuntimeError:  # the executor is shut down
                self._end()
            return
        try:
            self.pool.submit(lambda: self._run(host, call), done, expired, timeout)
        except PoolFull:
            try:
                self.count("busy")
                self._reply(body, request, 1, "node busy: too many requests in progress", {})
            finally:
                self._end()
        except RuntimeError:  # the pool is shut down
            self._end()

    @staticmethod
    def _run(host: AgentHost, call: CallInfo) -> Outcome:
        """``host.run`` that always returns an outcome, so the request always gets its reply."""
        try:
            return host.run(call)
        except BaseException as exc:  # noqa: BLE001 - host.run maps errors; this is the last resort
            log.exception("%s#%s (request %s) failed", call.agent, call.action, call.request_id)
            return Outcome(5, f"Unknown error in {call.agent}#{call.action}: {_short_error(exc)}",
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
        self._publish(dest, wire, deadline=request.time / 1000 + request.ttl)

    def _publish(self, dest: Destination, wire: bytes, deadline: float) -> None:
        from ..connectors.stomp import ConnectorError

        try:
            self.connector.publish(dest, wire)
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
