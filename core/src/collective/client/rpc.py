"""The RPC client: discover nodes, send signed requests, collect verified replies."""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Config
from ..connectors.destinations import Destination, caller_reply_name, parse_logical, reply_owner
from ..filters import Filter
from ..message import NO_REPLY, MalformedMessage, RequestMessage
from ..plugins import PluginManager, get_plugin_manager, resolve
from ..security.base import SecurityError
from .errors import ClientError
from .results import CallStats, NodeReply, Result

log = logging.getLogger(__name__)

#: seconds added to the DDL timeout for transit when waiting for replies
REPLY_MARGIN = 1.0

# ClientError (collective.client.errors) and NO_REPLY (collective.message) are defined
# there and stay importable from here.
__all__ = ["Client", "ClientError", "NO_REPLY", "REPLY_MARGIN", "apply_limit", "batch_count"]


class _Pending:
    """A request in flight: where its replies go (several may share one queue)."""

    def __init__(self, body_sha256: str, replies: queue.Queue[NodeReply] | None = None) -> None:
        self.body_sha256 = body_sha256
        self.replies: queue.Queue[NodeReply] = replies if replies is not None else queue.Queue()
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
            # -T COLLECTIVE reaches any collective the nodes are in (MCollective users
            # expect that), configured here or not; the name must still be a name
            from ..names import COLLECTIVE_RE

            if not isinstance(self.collective, str) or not COLLECTIVE_RE.fullmatch(self.collective):
                raise ClientError(f"collective {self.collective!r} is not a valid collective "
                                  f"name (configured: {', '.join(config.collectives)})")
            log.info("collective %s is not in this client's config (%s); targeting it anyway",
                     self.collective, ", ".join(config.collectives))
        self.ttl = int(config["security"]["ttl"])
        self._security: Any = None
        self.sender = config.identity
        self._reply_dest: Destination | None = None
        self._connector: Any = None
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._ddls: dict[str, Any] = {}
        self._ddl_sources: dict[str, Any] = {}
        self._ddl_cache: Any = None
        self._warned_formats: set[tuple[str, str, str]] = set()
        self.late_replies = 0

    @property
    def reply_dest(self) -> Destination:
        """This client's reply destination, ``COLLECTIVE.reply.NAME.RANDOM`` with NAME
        its caller name: nodes reply only to a caller's own reply destinations, and the
        embedded broker lets the client's login (its key name) read only those."""
        if self._reply_dest is None:
            self._reply_dest = Destination.reply(
                self.collective, f"{self.reply_name()}.{uuid.uuid4().hex}")
        return self._reply_dest

    def reply_name(self) -> str:
        """NAME in this caller's reply destinations ``COLLECTIVE.reply.NAME.TAG``."""
        try:
            return caller_reply_name(self.security.identity)
        except ValueError as exc:
            raise ClientError(str(exc)) from None

    def check_reply_to(self, reply_to: str) -> Destination:
        """``reply_to`` as a destination, if this caller may have replies sent there.

        :raises ClientError: not ``COLLECTIVE.reply.NAME.TAG`` of this collective and caller
        """
        expected = f"{self.collective}.reply.{self.reply_name()}.TAG"
        try:
            dest = parse_logical(reply_to)
        except ValueError:
            dest = None
        if (dest is None or dest.kind != "reply" or dest.collective != self.collective
                or reply_owner(dest) != self.reply_name()):
            raise ClientError(f"--reply-to {reply_to!r} is not a reply destination of this caller "
                              f"(expected {expected}: nodes reply only to the caller's own)")
        return dest

    @property
    def security(self) -> Any:
        """The security provider, built on first use: inventory discovery needs no keys."""
        if self._security is None:
            provider = self.config["security"]["provider"]
            cls = resolve(provider, self.pm.security_providers(), "security provider")
            self._security = cls(self.config, role="client")
        return self._security

    # -- connection ------------------------------------------------------------
    def connect(self) -> None:
        if self._connector is not None:
            return
        from ..connectors.stomp import ConnectorError

        _ = self.security  # load keys before replies can arrive on the receiver thread

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
    def ddl(self, agent: str, *, filter: Filter | None = None, nodes: Iterable[str] | None = None,
            refresh: bool = False) -> Any:
        """The agent's DDL: the installed one (read from the plugins, never their code),
        else the one the targeted nodes report (see :mod:`collective.client.remote_ddl`).

        :param filter: with ``nodes``, which nodes to ask when the DDL is not installed:
            the ones the request targets
        :param refresh: for a fetched DDL, ask the nodes even when the cache is fresh
        :raises ClientError: not installed here and no targeted node could supply it
        """
        if agent in self._ddls and not (refresh and self._ddl_sources[agent].fetched):
            return self._ddls[agent]
        from ..ddl import AgentDDL
        from .remote_ddl import DDLSource, resolve

        files = self.pm.ddl_files()
        if agent in files:
            ddl = AgentDDL.load(files[agent], formats=self.pm.formats())
            source = DDLSource(agent=agent, origin="installed", version=str(ddl.metadata["version"]),
                               sha256=ddl.sha256, location=str(files[agent]))
        elif not self.config.get("ddl.fetch", True):
            raise ClientError(f"No DDL found for agent {agent!r}: is its plugin installed here? "
                              "(fetching DDLs from the nodes is off: ddl.fetch)")
        else:
            ddl, source = resolve(self, agent, filter=filter, nodes=nodes, refresh=refresh)
        self._ddls[agent], self._ddl_sources[agent] = ddl, source
        return ddl

    def ddl_source(self, agent: str) -> Any:
        """Where the DDL :meth:`ddl` returned for ``agent`` came from
        (:class:`~collective.client.remote_ddl.DDLSource`), or None before it was asked."""
        return self._ddl_sources.get(agent)

    @property
    def ddl_cache(self) -> Any:
        """The cache of fetched DDLs (:class:`~collective.client.ddl_cache.DDLCache`)."""
        if self._ddl_cache is None:
            from .ddl_cache import DDLCache

            self._ddl_cache = DDLCache.from_config(self.config)
        return self._ddl_cache

    def action_ddl(self, agent: str, action: str, inputs: Iterable[str] = (), *,
                   filter: Filter | None = None, nodes: Iterable[str] | None = None) -> Any:
        """The :class:`~collective.ddl.ActionDDL` of ``agent``'s ``action``.

        A DDL from the cache that does not declare the action or one of ``inputs`` may
        be older than the nodes' (an upgrade added them): the nodes are asked once more
        before the request is refused.

        :raises ClientError: the action is not declared
        """
        ddl = self.ddl(agent, filter=filter, nodes=nodes)
        names = list(inputs)

        def declared(d: Any) -> bool:
            return action in d.actions and all(n in d.actions[action].inputs for n in names)

        if not declared(ddl) and self._ddl_sources[agent].origin == "cache":
            log.info("the cached DDL of %s does not declare %s%s: asking the nodes again", agent,
                     action, f" with {', '.join(names)}" if names else "")
            ddl = self.ddl(agent, filter=filter, nodes=nodes, refresh=True)
        if action not in ddl.actions:
            raise ClientError(f"Attempted to call action {action} for {agent} but it's not declared in the DDL")
        return ddl.actions[action]

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
    def _sign(self, agent: str, action: str, data: dict[str, Any], flt: Filter,
              targets: list[str] | None, reply_to: str | None = None) -> tuple[RequestMessage, bytes, bytes]:
        """Build and sign one request; returns (message, body, wire)."""
        message = RequestMessage.new(
            sender=self.sender, caller=self.security.identity, collective=self.collective,
            agent=agent, action=action, data=data, filter=flt.to_dict(), ttl=self.ttl,
            reply_to=reply_to or self.reply_dest.logical(), targets=targets,
        )
        body = message.to_body()
        wire = self.security.sign(body, "request")
        max_bytes = int(self.config["security"]["max_request_bytes"])
        if len(wire) > max_bytes:
            raise ClientError(f"request is {len(wire)} bytes, over security.max_request_bytes ({max_bytes})")
        return message, body, wire

    def _track(self, message: RequestMessage, body: bytes,
               replies: queue.Queue[NodeReply] | None = None) -> _Pending:
        pending = _Pending(hashlib.sha256(body).hexdigest(), replies)
        with self._lock:
            self._pending[message.id] = pending
        return pending

    def _untrack(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def request(self, agent: str, action: str, data: dict[str, Any], *,
                filter: Filter | None = None, targets: Iterable[str] | None = None,
                timeout: float, expected: Iterable[str] | None = None,
                on_reply: Callable[[NodeReply], None] | None = None,
                quiet_window: float | None = None,
                until: Callable[[NodeReply], bool] | None = None) -> Result:
        """Publish one signed request and collect replies.

        With ``targets`` the request goes to each node's directed queue and
        collection ends as soon as every target replied. Without, it is
        broadcast with ``filter`` and collection runs until ``timeout`` (or until
        ``quiet_window`` seconds pass with no new reply). ``data`` is sent as it
        is: :meth:`validate` it first.

        :param until: collection also ends right after a reply for which
            ``until(reply)`` is true (``mco xen find`` stops at the host that has
            the domain).
        """
        self.connect()
        flt = filter or Filter()
        target_list = sorted(set(targets)) if targets is not None else None
        message, body, wire = self._sign(agent, action, data, flt, target_list)
        stats = CallStats(request_id=message.id, start_time=time.time())
        stats.expected = list(target_list if target_list is not None else (expected or []))
        pending = self._track(message, body)
        try:
            pending.sent_at = time.monotonic()
            self._publish(agent, wire, target_list)
            replies = self._collect(pending, stats, timeout, target_list is not None or bool(expected),
                                    on_reply, quiet_window, until)
        finally:
            self._untrack(message.id)
        stats.forged_replies = pending.forged
        stats.agent_time = time.monotonic() - pending.sent_at
        return Result(replies=replies, stats=stats)

    def send(self, agent: str, action: str, data: dict[str, Any] | None = None, *,
             filter: Filter | None = None, nodes: Iterable[str] | None = None,
             reply_to: str | None = None) -> str:
        """Fire and forget: validate, sign and publish; return the request id.

        Without ``reply_to`` the nodes are told not to reply (``--no-results``);
        with it, their replies go to that reply destination for someone else to
        collect (``--reply-to``, ``mco replies``).
        """
        flt = filter or Filter()
        data = self.validate(agent, action, data, filter=flt, nodes=nodes)
        if reply_to is not None:
            self.check_reply_to(reply_to)
        targets = sorted(set(nodes)) if nodes is not None else (
            sorted(set(flt.identity)) if flt.is_identity_only() else None)
        self.connect()
        message, _body, wire = self._sign(agent, action, data, flt, targets,
                                          reply_to=reply_to or NO_REPLY)
        self._publish(agent, wire, targets)
        return message.id

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
                 quiet_window: float | None,
                 until: Callable[[NodeReply], bool] | None = None) -> list[NodeReply]:
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
            if until is not None and until(reply):
                break
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

    def validate(self, agent: str, action: str, data: dict[str, Any] | None, *,
                 filter: Filter | None = None, nodes: Iterable[str] | None = None) -> dict[str, Any]:
        """``data`` checked against the DDL, defaults filled, before anything is sent.

        With a DDL fetched from the nodes no defaults are filled in (each node fills its
        own) and inputs whose format only the agent's plugin knows are not checked here
        (a warning says so; the nodes check them).

        :param filter: with ``nodes``: the nodes to ask for a DDL that is not installed
        :raises ClientError: unknown agent or action, or invalid data
        """
        from ..ddl import RequestError

        data = dict(data or {})
        act = self.action_ddl(agent, action, data, filter=filter, nodes=nodes)
        source = self._ddl_sources[agent]
        for name, fmt in self._ddls[agent].unchecked_inputs(action).items():
            if name in data and (agent, name, fmt) not in self._warned_formats:
                self._warned_formats.add((agent, name, fmt))
                log.warning("Warning: input %s of %s#%s has format %s, which comes with the agent's "
                            "plugin and is not installed here: only the nodes check it", name, agent,
                            action, fmt)
        try:
            return act.validate_input(data, defaults=not source.fetched)
        except RequestError as exc:
            raise ClientError(str(exc)) from None

    def select_targets(self, flt: Filter, nodes: Iterable[str] | None, method: str | None,
                       timeout: float | None, options: dict[str, Any] | None) -> tuple[list[str], bool, list[str]]:
        """The nodes to address: ``(targets, discovery_performed, stale)``.

        Named nodes and identity-only filters need no discovery (direct addressing);
        otherwise the discovery method (``--dm``, default ``discovery.method``) runs.
        """
        if nodes is not None:
            return sorted(set(nodes)), False, []
        if flt.is_identity_only():
            return sorted(set(flt.identity)), False, []
        name = method or self.config["discovery"]["method"]
        if name == "broadcast" and not options:
            return self.discover(flt, timeout), True, []
        from .discovery import discover

        found = discover(self, name, flt, self.discovery_timeout(timeout), dict(options or {}))
        return sorted(set(found.nodes)), True, sorted(found.stale)

    def rpc(self, agent: str, action: str, data: dict[str, Any] | None = None, *,
            filter: Filter | None = None, nodes: Iterable[str] | None = None,
            timeout: float | None = None, discovery_timeout: float | None = None,
            discovery_method: str | None = None, discovery_options: dict[str, Any] | None = None,
            limit: int | str | None = None, limit_seed: int | None = None,
            batch_size: int | str | None = None, batch_sleep: float = 0.0,
            batch_mode: str = "fixed",
            on_reply: Callable[[NodeReply], None] | None = None,
            on_discovered: Callable[[list[str]], None] | None = None,
            on_batch: Callable[[int, list[str]], None] | None = None,
            until: Callable[[NodeReply], bool] | None = None) -> Result:
        """Validate against the DDL, discover (unless addressed directly), call, collect.

        :param nodes: identities to address directly: no discovery, and collection
            ends as soon as each of them replied.
        :param discovery_method: ``broadcast`` (default), ``inventory``, ... (``--dm``).
        :param limit: address only this many (``5``) or this share (``"10%"``) of the
            discovered nodes (``--limit-nodes``); ``limit_seed`` makes the random
            choice repeatable, without it the first nodes in sorted order are taken.
        :param batch_size: ``N`` or ``"N%"``: in ``fixed`` mode send to groups of N
            with ``batch_sleep`` seconds between groups (MCollective); in ``window``
            mode keep N nodes busy, starting the next as soon as one answers (Salt).
        :param until: stop collecting right after a reply for which ``until(reply)``
            is true (not with batches).
        :raises ClientError: on invalid input (nothing is sent).
        """
        flt = filter or Filter()
        data = self.validate(agent, action, data, filter=flt, nodes=nodes)
        started = time.time()
        t0 = time.monotonic()
        targets, discovery_performed, stale = self.select_targets(
            flt, nodes, discovery_method, discovery_timeout, discovery_options)
        discovery_time = time.monotonic() - t0 if discovery_performed else 0.0
        discovered = list(targets)
        targets = apply_limit(targets, limit, limit_seed)
        if on_discovered is not None:
            on_discovered(targets)
        if not targets:
            return Result(stats=CallStats(start_time=started, discovery_performed=discovery_performed,
                                          discovery_time=discovery_time))
        wait = float(timeout if timeout is not None else self.ddl(agent).timeout + REPLY_MARGIN)
        size = batch_count(batch_size, len(targets))
        if size and batch_mode == "window":
            result = self._window(agent, action, data, flt, targets, size, wait, on_reply)
        elif size and size < len(targets):
            result = Result(stats=CallStats(expected=list(targets)))
            groups = [targets[n:n + size] for n in range(0, len(targets), size)]
            for number, group in enumerate(groups):
                if on_batch is not None:
                    on_batch(number, group)
                part = self.request(agent, action, data, filter=flt, targets=group, timeout=wait,
                                    on_reply=on_reply)
                result.merge(part)
                if number < len(groups) - 1 and batch_sleep > 0:
                    time.sleep(batch_sleep)
        else:
            result = self.request(agent, action, data, filter=flt, targets=targets, timeout=wait,
                                  on_reply=on_reply, until=until)
        result.stats.start_time = started
        result.stats.discovery_performed = discovery_performed
        result.stats.discovery_time = discovery_time
        result.stats.discovered = discovered
        result.stats.stale = stale
        result.stats.total_time = time.time() - started
        return result

    def _window(self, agent: str, action: str, data: dict[str, Any], flt: Filter,
                targets: list[str], size: int, timeout: float,
                on_reply: Callable[[NodeReply], None] | None) -> Result:
        """Keep ``size`` nodes busy: one request per node, the next starts when one ends."""
        self.connect()
        replies: queue.Queue[NodeReply] = queue.Queue()
        todo = list(targets)
        running: dict[str, tuple[str, float]] = {}  # node -> (request id, deadline)
        pendings: list[_Pending] = []
        result = Result(stats=CallStats(expected=list(targets)))
        seen: dict[str, NodeReply] = {}
        t0 = time.monotonic()

        def launch() -> None:
            while todo and len(running) < size:
                node = todo.pop(0)
                message, body, wire = self._sign(agent, action, data, flt, [node])
                pendings.append(self._track(message, body, replies))
                running[node] = (message.id, time.monotonic() + timeout)
                self._publish(agent, wire, [node])

        try:
            launch()
            while running:
                next_deadline = min(deadline for _, deadline in running.values())
                try:
                    reply = replies.get(timeout=max(0.0, next_deadline - time.monotonic()))
                except queue.Empty:
                    now = time.monotonic()
                    for node, (request_id, deadline) in list(running.items()):
                        if deadline <= now:
                            self._untrack(request_id)
                            del running[node]
                    launch()
                    continue
                if reply.sender in seen or reply.sender not in running:
                    result.stats.duplicate_replies += reply.sender in seen
                    continue
                seen[reply.sender] = reply
                request_id, _ = running.pop(reply.sender)
                self._untrack(request_id)
                if on_reply is not None:
                    on_reply(reply)
                launch()
        finally:
            for request_id, _ in running.values():
                self._untrack(request_id)
        result.replies = sorted(seen.values(), key=lambda r: r.sender)
        result.stats.responded = sorted(seen)
        result.stats.forged_replies = sum(p.forged for p in pendings)
        result.stats.agent_time = time.monotonic() - t0
        return result


def _share(value: int | str, total: int, what: str) -> int:
    """``5`` → 5, ``"10%"`` → 10 % of total (at least 1)."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, math.ceil(total * percent / 100))
        number = int(text)
        if number < 1:
            raise ValueError
        return number
    except ValueError:
        raise ClientError(f"{what} must be a positive number or a percentage like 10%, not {value!r}") from None


def apply_limit(targets: list[str], limit: int | str | None, seed: int | None) -> list[str]:
    """``--limit-nodes``: the first N (sorted), or a random N with ``seed``."""
    if limit is None:
        return targets
    count = _share(limit, len(targets), "--limit-nodes")
    if count >= len(targets):
        return targets
    if seed is None:
        return sorted(targets)[:count]
    return sorted(random.Random(seed).sample(sorted(targets), count))


def batch_count(batch: int | str | None, total: int) -> int:
    """``--batch``: N or N% of the targets; 0 means no batching."""
    if batch is None or batch == 0 or total == 0:
        return 0
    return _share(batch, total, "--batch")
