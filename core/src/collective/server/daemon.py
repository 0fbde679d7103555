"""``collectived``: receive, verify, filter, authorize, validate, dispatch, reply, audit.

Every step that rejects a message has one counter and one audit reason. Cheap
checks (size, signature, freshness, replay, filter) run on the connector's
receive thread; actions run in a bounded :class:`~collective.server.pool.WorkerPool`
with the DDL timeout, and ``rpcutil`` / ``discovery`` run on a reserved thread so
a full pool never stops the node from answering ``mco ping``.
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
from .dispatch import AgentHost, CallInfo, Outcome
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
        sec = config["security"]
        self.max_request_bytes = int(sec["max_request_bytes"])
        self.guard = ReplayGuard(max_entries=sec["replay_cache"], skew=sec["skew"],
                                 max_ttl=sec["max_ttl"], clock=clock)
        provider_cls = resolve(sec["provider"], self.pm.security_providers(), "security provider")
        self.security = provider_cls(config, role="node")
        self.facts_store = FactStore(config, self.pm.fact_sources(),
                                     refresh=float(config["facts"]["refresh"]))
        self.audit = self._make_audit()
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

        formats = self.pm.formats()
        ddls: dict[str, Any] = {}
        for name, resource in self.pm.ddl_files().items():
            try:
                ddls[name] = AgentDDL.load(resource, formats=formats)
            except DDLError as exc:
                log.error("agent %s disabled: %s", name, exc)
        host = AgentHost(self.config, self, self.pm.agents(), ddls,
                         authorizer=self._make_authorizer())
        for problem in host.load():
            log.error("%s", problem)
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
        """SIGHUP: re-read agents, facts, policies and the trust store."""
        log.info("reloading agents, facts, policies and keys")
        old = set(self.host.agents)
        self.security.reload()
        self.facts_store.reload()
        self.audit.reopen()
        self.host = self._make_host()
        for collective in self.collectives:
            for agent in sorted(set(self.host.agents) - old):
                self.connector.subscribe(Destination.broadcast(collective, agent), self.on_message)

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
            self._reply(body, request, outcome.statuscode, outcome.statusmsg, outcome.data)

        def expired() -> None:
            self.count("timeouts")
            self._reply(body, request, 5, f"timed out after {timeout:g}s", {})

        if call.agent in RESERVED_AGENTS:
            future = self.reserved.submit(host.run, call)
            future.add_done_callback(lambda f: done(f.result()) if not f.exception() else None)
            return
        try:
            self.pool.submit(lambda: host.run(call), done, expired, timeout)
        except PoolFull:
            self.count("busy")
            self._reply(body, request, 1, "node busy: too many requests in progress", {})

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
