"""The RPC client: discover nodes, send signed requests, collect verified replies."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Config
from ..connectors.destinations import Destination
from ..filters import Filter
from ..message import MalformedMessage, RequestMessage
from ..plugins import PluginManager, get_plugin_manager, resolve
from ..security.base import SecurityError
from .results import CallStats, NodeReply, Result

log = logging.getLogger(__name__)

#: seconds added to the DDL timeout for transit when waiting for replies
REPLY_MARGIN = 1.0


class ClientError(Exception):
    """A client-side problem: nothing was sent (bad input, unknown agent, no broker)."""


class _Pending:
    """A request in flight: where its replies go."""

    def __init__(self, body_sha256: str) -> None:
        self.body_sha256 = body_sha256
        self.replies: queue.Queue[NodeReply] = queue.Queue()
        self.sent_at = time.monotonic()
        self.forged = 0


class Client:
    """Talks to the collective through the configured broker.

    One reply destination per client; replies are routed to their request by id,
    verified against the node keys, de-duplicated per sender.
    """

    def __init__(self, config: Config, pm: PluginManager | None = None,
                 collective: str | None = None) -> None:
        self.config = config
        self.pm = pm or get_plugin_manager()
        self.collective = collective or config.main_collective
        if self.collective not in config.collectives:
            raise ClientError(f"collective {self.collective!r} is not one of {config.collectives}")
        sec = config["security"]
        self.ttl = int(sec["ttl"])
        provider_cls = resolve(sec["provider"], self.pm.security_providers(), "security provider")
        self.security = provider_cls(config, role="client")
        self.sender = config.identity
        self.reply_dest = Destination.reply(self.collective, f"{self.sender}.{uuid.uuid4().hex}")
        self._connector: Any = None
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._ddls: dict[str, Any] = {}
        self.late_replies = 0

    # -- connection ------------------------------------------------------------
    def connect(self) -> None:
        if self._connector is not None:
            return
        from ..connectors.stomp import ConnectorError

        cls = resolve(self.config["broker"]["connector"], self.pm.connectors(), "connector")
        connector = cls(self.config, client_id=f"client-{self.sender}-{uuid.uuid4().hex[:8]}")
        try:
            connector.connect(timeout=float(self.config["broker"]["connect_timeout"]))
            connector.subscribe(self.reply_dest, self._on_reply)
        except ConnectorError as exc:
            connector.disconnect()
            raise ClientError(str(exc)) from None
        self._connector = connector

    def close(self) -> None:
        if self._connector is not None:
            self._connector.disconnect()
            self._connector = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- DDLs --------------------------------------------------------------------
    def ddl(self, agent: str) -> Any:
        """The agent's DDL, read from the installed plugins (never their code)."""
        if agent not in self._ddls:
            from ..ddl import AgentDDL

            files = self.pm.ddl_files()
            if agent not in files:
                raise ClientError(f"No DDL found for agent {agent!r}: is its plugin installed here?")
            self._ddls[agent] = AgentDDL.load(files[agent], formats=self.pm.formats())
        return self._ddls[agent]

    # -- replies -------------------------------------------------------------------
    def _on_reply(self, wire: bytes) -> None:
        received = time.monotonic()
        try:
            _verified, reply = self.security.verify_reply(wire)
        except (SecurityError, MalformedMessage) as exc:
            log.warning("dropped a reply that failed verification: %s", exc)
            with self._lock:
                for pending in self._pending.values():
                    pending.forged += 1
            return
        with self._lock:
            pending = self._pending.get(reply.request_id)
            if pending is None:
                self.late_replies += 1
                return
        if reply.request_sha256 != pending.body_sha256:
            log.warning("dropped a reply from %s bound to another request body", reply.sender)
            pending.forged += 1
            return
        pending.replies.put(NodeReply(
            sender=reply.sender, agent=reply.agent, action=reply.action,
            statuscode=reply.statuscode, statusmsg=reply.statusmsg, data=reply.data,
            elapsed_ms=(received - pending.sent_at) * 1000, time=reply.time,
        ))

    # -- requests --------------------------------------------------------------------
    def request(self, agent: str, action: str, data: dict[str, Any], *,
                filter: Filter | None = None, targets: Iterable[str] | None = None,
                timeout: float, expected: Iterable[str] | None = None,
                on_reply: Callable[[NodeReply], None] | None = None,
                quiet_window: float | None = None) -> Result:
        """Publish one signed request and collect replies.

        With ``targets`` the request goes to each node's directed queue and
        collection ends as soon as every target replied. Without, it is
        broadcast with ``filter`` and collection runs until ``timeout`` (or until
        ``quiet_window`` seconds pass with no new reply).
        """
        import hashlib

        self.connect()
        flt = filter or Filter()
        target_list = sorted(set(targets)) if targets is not None else None
        message = RequestMessage.new(
            sender=self.sender, caller=self.security.identity, collective=self.collective,
            agent=agent, action=action, data=data, filter=flt.to_dict(), ttl=self.ttl,
            reply_to=self.reply_dest.logical(), targets=target_list,
        )
        body = message.to_body()
        wire = self.security.sign(body, "request")
        max_bytes = int(self.config["security"]["max_request_bytes"])
        if len(wire) > max_bytes:
            raise ClientError(f"request is {len(wire)} bytes, over security.max_request_bytes ({max_bytes})")
        pending = _Pending(hashlib.sha256(body).hexdigest())
        stats = CallStats(request_id=message.id, start_time=time.time())
        stats.expected = list(target_list if target_list is not None else (expected or []))
        with self._lock:
            self._pending[message.id] = pending
        try:
            pending.sent_at = time.monotonic()
            self._publish(agent, wire, target_list)
            replies = self._collect(pending, stats, timeout, target_list is not None or bool(expected),
                                    on_reply, quiet_window)
        finally:
            with self._lock:
                self._pending.pop(message.id, None)
        stats.forged_replies = pending.forged
        stats.agent_time = time.monotonic() - pending.sent_at
        return Result(replies=replies, stats=stats)

    def _publish(self, agent: str, wire: bytes, targets: list[str] | None) -> None:
        from ..connectors.stomp import ConnectorError

        try:
            if targets is None:
                self._connector.publish(Destination.broadcast(self.collective, agent), wire, ttl=self.ttl)
            else:
                for node in targets:
                    self._connector.publish(Destination.directed(self.collective, node), wire, ttl=self.ttl)
        except ConnectorError as exc:
            raise ClientError(str(exc)) from None

    def _collect(self, pending: _Pending, stats: CallStats, timeout: float, know_expected: bool,
                 on_reply: Callable[[NodeReply], None] | None,
                 quiet_window: float | None) -> list[NodeReply]:
        deadline = time.monotonic() + timeout
        expected = set(stats.expected)
        seen: dict[str, NodeReply] = {}
        last_reply = time.monotonic()
        while True:
            now = time.monotonic()
            if know_expected and expected and expected.issubset(seen):
                break
            wait = deadline - now
            if quiet_window is not None and seen:
                wait = min(wait, last_reply + quiet_window - now)
            if wait <= 0:
                break
            try:
                reply = pending.replies.get(timeout=wait)
            except queue.Empty:
                continue
            if reply.sender in seen:
                stats.duplicate_replies += 1
                continue
            last_reply = time.monotonic()
            seen[reply.sender] = reply
            if know_expected and reply.sender not in expected:
                stats.unexpected.append(reply.sender)
            if on_reply is not None:
                on_reply(reply)
        stats.responded = sorted(seen)
        return sorted(seen.values(), key=lambda r: r.sender)

    # -- high level ------------------------------------------------------------------
    def discovery_timeout(self, override: float | None = None) -> float:
        return float(override if override is not None else self.config["discovery"]["timeout"])

    def ping(self, filter: Filter | None = None, timeout: float | None = None,
             on_reply: Callable[[NodeReply], None] | None = None,
             expected: Iterable[str] | None = None) -> Result:
        """Broadcast a ``discovery`` ping; ends after the discovery timeout, or
        as soon as every ``expected`` node answered."""
        flt = filter or Filter()
        targets = None
        if expected is None and flt.is_identity_only():
            targets = flt.identity
        result = self.request("discovery", "ping", {}, filter=flt, targets=targets,
                              expected=expected, timeout=self.discovery_timeout(timeout),
                              on_reply=on_reply)
        result.stats.discovery_performed = targets is None
        return result

    def discover(self, filter: Filter | None = None, timeout: float | None = None) -> list[str]:
        """Identities of the nodes that match ``filter`` (broadcast discovery)."""
        flt = filter or Filter()
        if flt.is_identity_only():
            return sorted(set(flt.identity))
        return [reply.sender for reply in self.ping(flt, timeout) if reply.ok]

    def rpc(self, agent: str, action: str, data: dict[str, Any] | None = None, *,
            filter: Filter | None = None, nodes: Iterable[str] | None = None,
            timeout: float | None = None, discovery_timeout: float | None = None,
            on_reply: Callable[[NodeReply], None] | None = None,
            on_discovered: Callable[[list[str]], None] | None = None) -> Result:
        """Validate against the DDL, discover (unless addressed directly), call, collect.

        :param nodes: identities to address directly: no discovery, and collection
            ends as soon as each of them replied.
        :raises ClientError: on invalid input (nothing is sent).
        """
        from ..ddl import RequestError

        ddl = self.ddl(agent)
        if action not in ddl.actions:
            raise ClientError(f"Attempted to call action {action} for {agent} but it's not declared in the DDL")
        try:
            data = ddl.actions[action].validate_input(dict(data or {}))
        except RequestError as exc:
            raise ClientError(str(exc)) from None
        flt = filter or Filter()
        started = time.time()
        discovery_performed = False
        if nodes is not None:
            targets = sorted(set(nodes))
        elif flt.is_identity_only():
            targets = sorted(set(flt.identity))
        else:
            t0 = time.monotonic()
            targets = self.discover(flt, discovery_timeout)
            discovery_performed = True
            discovery_time = time.monotonic() - t0
        if on_discovered is not None:
            on_discovered(targets)
        if not targets:
            stats = CallStats(start_time=started, discovery_performed=discovery_performed)
            return Result(stats=stats)
        wait = float(timeout if timeout is not None else ddl.timeout + REPLY_MARGIN)
        result = self.request(agent, action, data, filter=flt, targets=targets, timeout=wait,
                              on_reply=on_reply)
        result.stats.start_time = started
        result.stats.discovery_performed = discovery_performed
        if discovery_performed:
            result.stats.discovery_time = discovery_time
        result.stats.total_time = time.time() - started
        return result
