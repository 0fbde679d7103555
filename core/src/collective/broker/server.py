"""The embedded STOMP 1.2 broker: an asyncio server on a background thread.

Design notes
------------
- One event loop on its own thread; every connection is an :class:`asyncio.Protocol`
  (no per-connection task), frames are handled synchronously in ``data_received``.
- Each connection has a bounded outbound queue (frames / bytes) in front of the
  transport. Deliveries are appended to it and written in chunks on the next loop
  iteration (one ``write`` per chunk, never awaiting ``drain``); when the transport
  signals back-pressure (``pause_writing``) nothing more is written until it resumes,
  and once the outbound queue is full the *oldest* frame is dropped and counted
  (``dropped_slow_consumer``). A stopped consumer therefore costs at most the bound.
- ``/topic/X`` fans out to the subscribers present at send time. ``/queue/X`` gives
  each message to one subscriber, round-robin, skipping congested ones; if every
  subscriber is congested or there is none, the message waits in the queue's store
  (bounded, drop-oldest, counted) until one can take it or it expires: the ``expires``
  header (ms since the epoch, as ActiveMQ and RabbitMQ's STOMP plugin read it; 0 =
  never), the ``expiration`` header (ms from now, RabbitMQ's per-message TTL), and at
  the latest ``max_message_age`` after it was sent. A queue nobody subscribed to for
  ``queue_idle_expires`` is deleted with what it holds (replies for a client that is
  gone), counted as ``dropped_unclaimed``.
- Global limits refuse rather than grow: a SEND that would have to be stored beyond
  ``max_stored_bytes`` / ``max_stored_messages``, or that would create a queue beyond
  ``max_queues``, gets an ERROR frame (that connection only, which stays open) and is
  not stored. Connections beyond ``max_connections``, logins pending beyond
  ``max_unauthenticated`` and sessions of one user beyond ``max_connections_per_user``
  are refused with an ERROR and closed.
- Logins and permissions (:mod:`.auth`): with users configured every CONNECT needs a
  login; scrypt runs on a small thread pool (never on the event loop) and a verified
  login is cached. Each SEND and SUBSCRIBE is checked against the user's read/write
  patterns (cached per connection and destination); a refusal is an ERROR frame
  (``message: access refused``), counted as ``denied``. Without users (an in-process
  broker built by a test) everything is allowed, on loopback only, with a warning.
- A malformed frame gets one ERROR frame and closes that connection only (the
  write side is shut down first and input is drained for a moment so the peer
  actually gets the ERROR). Exceptions while handling a connection are logged and
  close that connection; the server keeps running.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import os
import signal
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .auth import BrokerAuth, User
from .frames import (
    CLIENT_COMMANDS,
    Frame,
    FrameError,
    FrameParser,
    encode_frame,
    escape_header,
)

log = logging.getLogger(__name__)

__all__ = ["BrokerLimits", "EmbeddedBroker", "Listener", "run_broker"]

try:
    from .. import __version__ as _VERSION
except Exception:  # pragma: no cover - partial checkouts
    _VERSION = "0"

MiB = 1024 * 1024


@dataclass
class BrokerLimits:
    """Limits of the embedded broker. Sizes are bytes, intervals milliseconds
    unless the name says seconds."""

    max_body: int = 1 * MiB
    max_headers: int = 64
    max_header_line: int = 8 * 1024
    max_frame_command: int = 32
    #: per-connection outbound queue (frames waiting for a slow socket); drop-oldest
    max_outbound_frames: int = 10_000
    max_outbound_bytes: int = 64 * MiB
    #: per-queue store for messages nobody can take yet; drop-oldest
    max_queue_messages: int = 10_000
    max_queue_bytes: int = 16 * MiB
    #: all queue stores together: a SEND that would go beyond is refused with an ERROR
    max_stored_messages: int = 100_000
    max_stored_bytes: int = 64 * MiB
    max_queues: int = 10_000
    #: a stored message is dropped this long after it was sent, whatever its headers say
    #: (no request outlives ``security.max_ttl``, 600 s by default); 0 = keep
    max_message_age: float = 600.0
    #: a queue without subscribers for this long is deleted with its messages; 0 = keep
    queue_idle_expires: float = 120.0
    max_connections: int = 4096
    #: connections that have not logged in yet (they cannot crowd out logged-in ones)
    max_unauthenticated: int = 256
    #: sessions of one login at a time
    max_connections_per_user: int = 256
    #: threads that check passwords (scrypt), off the event loop
    login_workers: int = 2
    max_subscriptions_per_connection: int = 1024
    max_transactions_per_connection: int = 16
    max_transaction_frames: int = 10_000
    max_transaction_bytes: int = 16 * MiB
    #: client / client-individual queue subscriptions: unacknowledged messages after which
    #: the subscription gets no more until it acknowledges (like ActiveMQ's prefetch)
    max_unacked_frames: int = 1000
    max_unacked_bytes: int = 16 * MiB
    #: heart-beat offered in CONNECTED: (can send every, wants to receive every); 0 = never
    heartbeat_send_ms: int = 10_000
    heartbeat_recv_ms: int = 10_000
    #: close connections that do not send CONNECT within this time
    connect_timeout: float = 10.0
    #: transport buffer above which a connection counts as congested
    write_high_water: int = 256 * 1024
    #: bytes handed to the transport per write call
    write_chunk: int = 64 * 1024
    #: after an ERROR, how long / how much input to drain before the socket is dropped
    linger_seconds: float = 2.0
    linger_bytes: int = 16 * MiB
    #: how often expired queued messages and idle queues are swept
    sweep_interval: float = 1.0


class _ClientError(Exception):
    """An error reported with an ERROR frame; ``fatal`` closes the connection."""

    def __init__(self, message: str, detail: str = "", *, fatal: bool = False,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.fatal = fatal
        self.headers = headers


_NEW, _CONNECTED, _CLOSING, _CLOSED = 0, 1, 2, 3
_ACK_MODES = ("auto", "client", "client-individual")
#: SEND headers not copied into MESSAGE frames
_TRANSPORT_HEADERS = frozenset({
    "destination", "receipt", "transaction", "content-length", "message-id",
    "subscription", "ack", "login", "passcode", "host", "accept-version", "heart-beat",
})


class _Message:
    __slots__ = ("msg_id", "id_b", "tail", "expires", "retain", "size")

    def __init__(self, msg_id: str, tail: bytes, expires: int, retain: int = 0) -> None:
        self.msg_id = msg_id
        self.id_b = msg_id.encode("ascii")
        self.tail = tail          # headers after subscription/ack + blank line + body + NUL
        self.expires = expires    # ms since epoch, 0 = never (the sender's expiry)
        self.retain = retain      # ms since epoch, 0 = forever (the broker's max_message_age)
        self.size = len(tail) + 64


class _Subscription:
    __slots__ = ("conn", "id", "destination", "kind", "name", "ack", "prefix", "pending",
                 "pending_bytes", "queue", "prefetch", "backlog")

    def __init__(self, conn: _Connection, sub_id: str, destination: str, kind: str,
                 name: str, ack: str) -> None:
        self.conn = conn
        self.id = sub_id
        self.destination = destination
        self.kind = kind
        self.name = name
        self.ack = ack
        self.prefix = f"MESSAGE\nsubscription:{escape_header(sub_id)}\n".encode()
        #: unacknowledged queue messages (client / client-individual), delivery order
        self.pending: dict[str, _Message] = {}
        self.pending_bytes = 0
        self.queue: _Queue | None = None
        #: -- prefetch (see _Core.deliver_bounded) --
        #: most unacknowledged messages (``prefetch-count`` / ``activemq.prefetchSize``
        #: with ack client or client-individual); 0 = only the broker-wide limits
        self.prefetch = 0
        #: topic messages waiting for this subscription to acknowledge (drop-oldest)
        self.backlog: deque[_Message] = deque()


class _Queue:
    __slots__ = ("name", "subs", "rr", "store", "store_bytes", "idle_since")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.subs: list[_Subscription] = []
        self.rr = 0
        self.store: deque[_Message] = deque()
        self.store_bytes = 0
        #: loop time since when nobody subscribes (while ``subs`` is empty)
        self.idle_since = now


def _prefetch_of(headers: dict[str, str]) -> int:
    """The SUBSCRIBE's prefetch (RabbitMQ ``prefetch-count``, ActiveMQ
    ``activemq.prefetchSize``); 0 when absent or not a positive number."""
    raw = headers.get("prefetch-count") or headers.get("activemq.prefetchSize") or ""
    try:
        value = int(raw)
    except ValueError:
        return 0
    return value if value > 0 else 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Core:
    """Broker state; used only from the event-loop thread (except ``auth.authenticate``,
    which runs on ``login_pool``)."""

    COUNTERS = (
        "connections_total", "frames_in", "messages_in", "messages_out",
        "dropped_slow_consumer", "dropped_queue_overflow", "expired", "nacked",
        "errors", "heartbeat_timeouts", "internal_errors", "rejected_connections",
        "denied", "auth_failures", "refused_storage_full", "refused_queue_limit",
        "dropped_unclaimed",
    )
    GAUGES = (
        "connections", "unauthenticated", "subscriptions", "topics", "queues",
        "queued_messages", "queued_bytes", "outbound_queued_frames", "outbound_queued_bytes",
        "max_outbound_queued_frames", "max_outbound_queued_bytes",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: BrokerLimits,
                 auth: BrokerAuth | None) -> None:
        self.loop = loop
        self.limits = limits
        self.auth = auth
        self.conns: set[_Connection] = set()
        self.unauthenticated = 0
        self.sessions: dict[str, int] = {}  # login -> connected sessions
        self.topics: dict[str, dict[_Subscription, None]] = {}
        self.queues: dict[str, _Queue] = {}
        self.stored_bytes = 0
        self.stored_messages = 0
        self.counters: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.subscriptions = 0
        self._ids = itertools.count(1)
        self._id_prefix = f"ID:collective-{uuid.uuid4().hex[:8]}-"
        self._sweeper: asyncio.TimerHandle | None = None
        self.login_pool: ThreadPoolExecutor | None = None
        if auth is not None:
            self.login_pool = ThreadPoolExecutor(max_workers=max(1, limits.login_workers),
                                                 thread_name_prefix="broker-login")
        if limits.sweep_interval > 0:
            self._sweeper = loop.call_later(limits.sweep_interval, self._sweep)

    # -- destinations -------------------------------------------------------------------

    @staticmethod
    def split_destination(dest: str) -> tuple[str, str]:
        if dest.startswith("/topic/"):
            kind, name = "topic", dest[7:]
        elif dest.startswith("/queue/"):
            kind, name = "queue", dest[7:]
        else:
            raise _ClientError("unknown destination prefix",
                               f"{dest!r}: use /topic/NAME or /queue/NAME")
        if not name:
            raise _ClientError("empty destination name", repr(dest))
        return kind, name

    def _get_queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            if len(self.queues) >= self.limits.max_queues:
                self.counters["refused_queue_limit"] += 1
                raise _ClientError("too many queues", f"limit {self.limits.max_queues}")
            q = self.queues[name] = _Queue(name, self.loop.time())
        return q

    # -- the queue stores (every change goes through these, for the global totals) -------

    def _push(self, q: _Queue, msg: _Message, front: bool = False) -> None:
        (q.store.appendleft if front else q.store.append)(msg)
        q.store_bytes += msg.size
        self.stored_bytes += msg.size
        self.stored_messages += 1

    def _pop(self, q: _Queue) -> _Message:
        msg = q.store.popleft()
        q.store_bytes -= msg.size
        self.stored_bytes -= msg.size
        self.stored_messages -= 1
        return msg

    def _clear(self, q: _Queue) -> int:
        n = len(q.store)
        self.stored_bytes -= q.store_bytes
        self.stored_messages -= n
        q.store.clear()
        q.store_bytes = 0
        return n

    def _trim(self, q: _Queue) -> None:
        """Per-queue bound: drop the oldest."""
        lim = self.limits
        while len(q.store) > lim.max_queue_messages or (
                q.store_bytes > lim.max_queue_bytes and len(q.store) > 1):
            self._pop(q)
            self.counters["dropped_queue_overflow"] += 1

    def _drop_queue_if_unused(self, q: _Queue) -> None:
        if not q.subs and not q.store and self.queues.get(q.name) is q:
            del self.queues[q.name]

    # -- publishing ---------------------------------------------------------------------

    def make_message(self, dest: str, frame: Frame, expires: int, retain: int) -> _Message:
        msg_id = f"{self._id_prefix}{next(self._ids)}"
        body = frame.body
        lines = [
            f"destination:{escape_header(dest)}",
            f"message-id:{msg_id}",
            f"content-length:{len(body)}",
        ]
        for name, value in frame.headers.items():
            if name not in _TRANSPORT_HEADERS:
                lines.append(f"{escape_header(name)}:{escape_header(value)}")
        lines.append("\n")
        tail = "\n".join(lines).encode("utf-8")
        return _Message(msg_id, tail + body + b"\0", expires, retain)

    @staticmethod
    def _expiry(frame: Frame, now: int) -> int:
        """ms since the epoch from ``expires`` (absolute) / ``expiration`` (relative); 0 = never."""
        expires = 0
        raw = frame.headers.get("expires")
        if raw:
            try:
                expires = max(int(raw), 0)
            except ValueError:
                raise _ClientError("invalid expires header", repr(raw[:32])) from None
        raw = frame.headers.get("expiration")
        if raw:
            try:
                ttl = int(raw)
                if ttl < 0:
                    raise ValueError
            except ValueError:
                raise _ClientError("invalid expiration header", repr(raw[:32])) from None
            expires = min(expires, now + ttl) if expires else now + ttl
        return expires

    def send(self, frame: Frame) -> None:
        dest = frame.headers.get("destination")
        if not dest:
            raise _ClientError("missing destination header")
        kind, name = self.split_destination(dest)
        now = _now_ms()
        expires = self._expiry(frame, now)
        if expires and expires <= now:
            self.counters["messages_in"] += 1
            self.counters["expired"] += 1
            return
        if kind == "topic":
            self.counters["messages_in"] += 1
            subs = self.topics.get(name)
            if subs:
                msg = self.make_message(dest, frame, expires, 0)
                for sub in subs:
                    if sub.prefetch:
                        self.deliver_bounded(sub, msg)
                    else:
                        self.deliver(sub, msg)
            return
        q = self._get_queue(name)
        age = self.limits.max_message_age
        msg = self.make_message(dest, frame, expires, now + int(age * 1000) if age > 0 else 0)
        if not q.store:
            sub = self._pick(q)
            if sub is not None:
                self.counters["messages_in"] += 1
                self.deliver(sub, msg)
                return
        lim = self.limits
        if (self.stored_messages >= lim.max_stored_messages
                or self.stored_bytes + msg.size > lim.max_stored_bytes):
            self.counters["refused_storage_full"] += 1
            self._drop_queue_if_unused(q)
            raise _ClientError("broker storage full",
                               f"{self.stored_messages} messages, {self.stored_bytes} bytes "
                               f"waiting (limits {lim.max_stored_messages}, "
                               f"{lim.max_stored_bytes}); message to {dest} not stored")
        self.counters["messages_in"] += 1
        self._push(q, msg)
        self._trim(q)
        if q.subs:
            self.pump(q)

    def _pick(self, q: _Queue) -> _Subscription | None:
        subs = q.subs
        n = len(subs)
        start = q.rr
        for i in range(n):
            idx = (start + i) % n
            sub = subs[idx]
            if not sub.conn.congested and (not sub.pending or self._can_take_unacked(sub)):
                q.rr = (idx + 1) % n
                return sub
        return None

    def _can_take_unacked(self, sub: _Subscription) -> bool:
        lim = self.limits
        frames = min(sub.prefetch, lim.max_unacked_frames) if sub.prefetch else lim.max_unacked_frames
        return len(sub.pending) < frames and sub.pending_bytes < lim.max_unacked_bytes

    # -- prefetch on topic subscriptions ---------------------------------------------------
    # A topic subscription with ``ack: client(-individual)`` and a prefetch gets at most
    # that many unacknowledged messages; the rest wait in its own backlog (bounded,
    # drop-oldest, expired ones skipped) instead of in the connection's outbound queue, so
    # a flood on one subscription cannot delay another subscription of the same
    # connection (a node's rpcutil requests behind a flood of another agent's).

    def deliver_bounded(self, sub: _Subscription, msg: _Message) -> None:
        """``deliver`` for a topic subscription with a prefetch."""
        if not sub.backlog and self._can_take_unacked(sub):
            self.deliver(sub, msg)
            return
        sub.backlog.append(msg)
        if len(sub.backlog) > self.limits.max_queue_messages:
            sub.backlog.popleft()
            self.counters["dropped_slow_consumer"] += 1

    def pump_backlog(self, sub: _Subscription) -> None:
        """Deliver a topic subscription's backlog while it may take more."""
        now = _now_ms()
        while sub.backlog and self._can_take_unacked(sub):
            msg = sub.backlog.popleft()
            if msg.expires and msg.expires <= now:
                self.counters["expired"] += 1
                continue
            self.deliver(sub, msg)

    def _stale(self, msg: _Message, now: int) -> str | None:
        if msg.expires and msg.expires <= now:
            return "expired"
        if msg.retain and msg.retain <= now:
            return "dropped_unclaimed"
        return None

    def pump(self, q: _Queue) -> None:
        """Deliver stored messages while some subscriber can take them."""
        if not q.store or not q.subs:
            return
        now = _now_ms()
        store = q.store
        while store:
            why = self._stale(store[0], now)
            if why is not None:
                self._pop(q)
                self.counters[why] += 1
                continue
            sub = self._pick(q)
            if sub is None:
                break
            self.deliver(sub, self._pop(q))

    def deliver(self, sub: _Subscription, msg: _Message) -> None:
        if sub.ack == "auto":
            sub.conn.enqueue((sub.prefix, msg.tail), len(sub.prefix) + len(msg.tail))
        else:
            head = sub.prefix + b"ack:" + msg.id_b + b"\n"
            sub.conn.enqueue((head, msg.tail), len(head) + len(msg.tail))
            if sub.kind == "queue" or sub.prefetch:
                sub.pending[msg.msg_id] = msg
                sub.pending_bytes += msg.size
        self.counters["messages_out"] += 1

    # -- subscriptions ------------------------------------------------------------------

    def subscribe(self, sub: _Subscription) -> None:
        if sub.kind == "topic":
            self.topics.setdefault(sub.name, {})[sub] = None
        else:
            q = self._get_queue(sub.name)
            q.subs.append(sub)
            sub.queue = q
            self.pump(q)
        self.subscriptions += 1

    def unsubscribe(self, sub: _Subscription) -> None:
        self.subscriptions -= 1
        if sub.kind == "topic":
            subs = self.topics.get(sub.name)
            if subs is not None:
                subs.pop(sub, None)
                if not subs:
                    del self.topics[sub.name]
            sub.backlog.clear()  # topics are at-most-once: nobody else wanted these
            sub.pending.clear()
            return
        q = sub.queue
        if q is None:
            return
        sub.queue = None
        try:
            q.subs.remove(sub)
        except ValueError:
            pass
        if q.subs:
            q.rr %= len(q.subs)
        else:
            q.rr = 0
            q.idle_since = self.loop.time()
        if sub.pending:
            # unacknowledged messages go back to the front of the queue, in order (they are
            # in memory already, so the global limits do not refuse them)
            for msg in reversed(list(sub.pending.values())):
                self._push(q, msg, front=True)
            sub.pending.clear()
            sub.pending_bytes = 0
            while len(q.store) > self.limits.max_queue_messages:
                self._pop(q)
                self.counters["dropped_queue_overflow"] += 1
            self.pump(q)
        self._drop_queue_if_unused(q)

    def ack(self, sub: _Subscription, ack_id: str, nack: bool) -> None:
        pending = sub.pending
        if ack_id not in pending:
            return
        if sub.ack == "client" and not nack:
            # cumulative: everything up to and including ack_id
            for key in list(pending):
                sub.pending_bytes -= pending.pop(key).size
                if key == ack_id:
                    break
        else:
            sub.pending_bytes -= pending.pop(ack_id).size
        if nack:
            self.counters["nacked"] += 1
        if sub.backlog:
            self.pump_backlog(sub)
        if sub.queue is not None and sub.queue.store:
            self.pump(sub.queue)

    # -- sessions -------------------------------------------------------------------------

    def session_opened(self, login: str) -> bool:
        """Count a session of ``login``; False when that user has too many already."""
        n = self.sessions.get(login, 0)
        if n >= self.limits.max_connections_per_user:
            return False
        self.sessions[login] = n + 1
        return True

    def session_closed(self, login: str) -> None:
        n = self.sessions.get(login, 0) - 1
        if n > 0:
            self.sessions[login] = n
        else:
            self.sessions.pop(login, None)

    # -- housekeeping -------------------------------------------------------------------

    def _sweep(self) -> None:
        try:
            now = _now_ms()
            idle_limit = self.limits.queue_idle_expires
            mono = self.loop.time()
            for q in list(self.queues.values()):
                if q.store:
                    if not q.subs and idle_limit > 0 and mono - q.idle_since >= idle_limit:
                        # nobody came for these (a client or node that is gone)
                        self.counters["dropped_unclaimed"] += self._clear(q)
                    else:
                        kept: deque[_Message] = deque()
                        for msg in q.store:
                            why = self._stale(msg, now)
                            if why is None:
                                kept.append(msg)
                            else:
                                self.counters[why] += 1
                        if len(kept) != len(q.store):
                            self._clear(q)
                            for msg in kept:
                                self._push(q, msg)
                self._drop_queue_if_unused(q)
        except Exception:  # never let housekeeping die
            log.exception("broker sweep failed")
        self._sweeper = self.loop.call_later(self.limits.sweep_interval, self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.conns):
            conn.abort()
        if self.login_pool is not None:
            self.login_pool.shutdown(wait=False, cancel_futures=True)

    @classmethod
    def empty_stats(cls) -> dict[str, int]:
        return dict.fromkeys(cls.COUNTERS + cls.GAUGES, 0)

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["connections"] = len(self.conns)
        out["unauthenticated"] = self.unauthenticated
        out["subscriptions"] = self.subscriptions
        out["topics"] = len(self.topics)
        out["queues"] = len(self.queues)
        out["queued_messages"] = self.stored_messages
        out["queued_bytes"] = self.stored_bytes
        frames = [len(c.outq) for c in self.conns]
        out["outbound_queued_frames"] = sum(frames)
        out["outbound_queued_bytes"] = sum(c.out_bytes for c in self.conns)
        out["max_outbound_queued_frames"] = max(frames, default=0)
        out["max_outbound_queued_bytes"] = max((c.out_bytes for c in self.conns), default=0)
        return out


def _error_frame(message: str, detail: str = "", receipt: str | None = None,
                 extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    headers = [("message", message), ("content-type", "text/plain"), *extra]
    if receipt is not None:
        headers.append(("receipt-id", receipt))
    body = (detail or message).encode("utf-8", "replace")
    headers.append(("content-length", str(len(body))))
    return encode_frame("ERROR", headers, body)


class _Connection(asyncio.Protocol):
    def __init__(self, core: _Core) -> None:
        self.core = core
        lim = core.limits
        self.limits = lim
        self.loop = core.loop
        self.transport: asyncio.Transport | None = None
        self.parser = FrameParser(max_body=lim.max_body, max_headers=lim.max_headers,
                                  max_header_line=lim.max_header_line,
                                  max_command=lim.max_frame_command, commands=CLIENT_COMMANDS)
        self.state = _NEW
        self.outq: deque[tuple[bytes, ...]] = deque()
        self.outq_sizes: deque[int] = deque()
        self.out_bytes = 0
        self.paused = False
        self.flush_scheduled = False
        self.subs: dict[str, _Subscription] = {}
        self.queue_subs = 0
        self.txs: dict[str, list[Frame]] = {}
        self.tx_bytes: dict[str, int] = {}
        self.hb_send = 0.0
        self.hb_recv = 0.0
        self.last_read = self.last_write = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.abort_timer: asyncio.TimerHandle | None = None
        self.discarded = 0
        self.peer = "?"
        self.login = ""
        self.session = ""
        #: the logged-in user (None: a broker without users, everything allowed)
        self.user: User | None = None
        self.counted_unauthenticated = False
        self.counted_session = False
        #: frames that arrived while the password was being checked
        self.backlog: list[Frame] | None = None
        #: per-destination permission decisions of this connection (bounded)
        self.may_read: dict[str, bool] = {}
        self.may_write: dict[str, bool] = {}

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        core = self.core
        why = None
        if len(core.conns) >= self.limits.max_connections:
            why = "too many connections"
        elif core.unauthenticated >= self.limits.max_unauthenticated:
            why = "too many connections waiting to log in"
        if why is not None:
            core.counters["rejected_connections"] += 1
            log.warning("refusing connection from %s: %s", self.peer, why)
            self.state = _CLOSING
            transport.write(_error_frame(why))
            transport.close()
            self.abort_timer = self.loop.call_later(self.limits.linger_seconds, self.abort)
            return
        core.conns.add(self)
        core.unauthenticated += 1
        self.counted_unauthenticated = True
        core.counters["connections_total"] += 1
        transport.set_write_buffer_limits(high=self.limits.write_high_water,
                                          low=self.limits.write_high_water // 4)
        if self.limits.connect_timeout > 0:
            self.timer = self.loop.call_later(self.limits.connect_timeout, self._connect_timeout)
        log.debug("connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        prev = self.state
        self.state = _CLOSED
        self._teardown()
        self._uncount()
        self.core.conns.discard(self)
        self.outq.clear()
        self.outq_sizes.clear()
        self.out_bytes = 0
        for handle in (self.timer, self.abort_timer):
            if handle is not None:
                handle.cancel()
        self.timer = self.abort_timer = None
        if prev != _CLOSED:
            log.debug("connection %s closed (%s)", self.peer, exc or "eof")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.outq:
            self._schedule_flush()
        elif self.queue_subs:
            self._pump_queues()

    def eof_received(self) -> bool | None:
        return None  # close our side too (buffered output is flushed first)

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        if self.state >= _CLOSING:
            self.discarded += len(data)
            if self.discarded > self.limits.linger_bytes:
                self.abort()
            return
        try:
            frames = self.parser.feed(data)
        except FrameError as exc:
            for frame in exc.frames:
                if self.state >= _CLOSING:
                    return
                self._take(frame)
            if self.state < _CLOSING:
                self.fatal(exc.message, exc.detail)
            return
        except Exception:  # a parser bug must not kill the server
            log.exception("parser failure on connection %s", self.peer)
            self.core.counters["internal_errors"] += 1
            self.fatal("internal error")
            return
        for frame in frames:
            if self.state >= _CLOSING:
                return
            self._take(frame)

    def _take(self, frame: Frame) -> None:
        if self.backlog is not None:  # logging in: reading is paused, keep what was read
            self.backlog.append(frame)
        else:
            self._dispatch(frame)

    # -- output ---------------------------------------------------------------------------

    @property
    def congested(self) -> bool:
        return self.paused or self.out_bytes >= self.limits.write_high_water or self.state != _CONNECTED

    def enqueue(self, parts: tuple[bytes, ...], size: int) -> None:
        if self.state >= _CLOSING:
            return
        self.outq.append(parts)
        self.outq_sizes.append(size)
        self.out_bytes += size
        lim = self.limits
        if len(self.outq) > lim.max_outbound_frames or self.out_bytes > lim.max_outbound_bytes:
            dropped = 0
            while len(self.outq) > 1 and (len(self.outq) > lim.max_outbound_frames
                                          or self.out_bytes > lim.max_outbound_bytes):
                self.outq.popleft()
                self.out_bytes -= self.outq_sizes.popleft()
                dropped += 1
            if dropped:
                self.core.counters["dropped_slow_consumer"] += dropped
        if not self.paused:
            self._schedule_flush()

    def send_frame(self, data: bytes) -> None:
        self.enqueue((data,), len(data))

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        t = self.transport
        if t is None or t.is_closing():
            self.outq.clear()
            self.outq_sizes.clear()
            self.out_bytes = 0
            return
        q = self.outq
        sizes = self.outq_sizes
        chunk = self.limits.write_chunk
        try:
            while q and not self.paused:
                parts: list[bytes] = []
                size = 0
                while q and size < chunk:
                    parts.extend(q.popleft())
                    size += sizes.popleft()
                self.out_bytes -= size
                t.write(b"".join(parts))
            self.last_write = self.loop.time()
        except Exception:
            log.exception("write failed on connection %s", self.peer)
            self.abort()
            return
        if not q and not self.paused and self.queue_subs and self.state == _CONNECTED:
            self._pump_queues()

    def _pump_queues(self) -> None:
        for sub in list(self.subs.values()):
            q = sub.queue
            if q is not None and q.store:
                self.core.pump(q)

    # -- closing ------------------------------------------------------------------------

    def abort(self) -> None:
        if self.transport is not None and self.state != _CLOSED:
            self.transport.abort()

    def _uncount(self) -> None:
        if self.counted_unauthenticated:
            self.counted_unauthenticated = False
            self.core.unauthenticated -= 1
        if self.counted_session:
            self.counted_session = False
            self.core.session_closed(self.login)

    def _teardown(self) -> None:
        self.backlog = None
        subs = list(self.subs.values())
        self.subs.clear()
        self.queue_subs = 0
        self.txs.clear()
        self.tx_bytes.clear()
        for sub in subs:
            try:
                self.core.unsubscribe(sub)
            except Exception:
                log.exception("unsubscribe failed for %s", self.peer)

    def fatal(self, message: str, detail: str = "", receipt: str | None = None,
              extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Send one ERROR frame and close this connection (draining input briefly)."""
        if self.state >= _CLOSING:
            return
        self.core.counters["errors"] += 1
        log.warning("closing connection %s: %s%s", self.peer, message, f" ({detail})" if detail else "")
        self.state = _CLOSING
        self._teardown()
        # frames already queued (e.g. a RECEIPT for an earlier frame) go out first when
        # that is cheap; a congested connection just loses them
        parts: list[bytes] = []
        if not self.paused and self.out_bytes <= self.limits.write_high_water:
            for item in self.outq:
                parts.extend(item)
        self.outq.clear()
        self.outq_sizes.clear()
        self.out_bytes = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        t = self.transport
        if t is None or t.is_closing():
            return
        parts.append(_error_frame(message, detail, receipt, extra))
        try:
            t.write(b"".join(parts))
            if t.can_write_eof():
                t.write_eof()  # the peer reads ERROR then EOF; we keep draining its input
            else:
                t.close()
        except Exception:
            log.debug("error while closing %s", self.peer, exc_info=True)
            t.abort()
            return
        self.abort_timer = self.loop.call_later(self.limits.linger_seconds, self.abort)

    def _graceful_close(self, receipt: str | None) -> None:
        self.state = _CLOSING
        self._teardown()
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        parts: list[bytes] = []
        for item in self.outq:
            parts.extend(item)
        self.outq.clear()
        self.outq_sizes.clear()
        self.out_bytes = 0
        if receipt is not None:
            parts.append(encode_frame("RECEIPT", [("receipt-id", receipt)]))
        if parts:
            t.write(b"".join(parts))
        t.close()
        self.abort_timer = self.loop.call_later(self.limits.linger_seconds, self.abort)

    def _connect_timeout(self) -> None:
        self.timer = None
        if self.state == _NEW:
            self.fatal("no CONNECT frame", f"within {self.limits.connect_timeout} s")

    def _heartbeat_tick(self) -> None:
        self.timer = None
        if self.state != _CONNECTED:
            return
        now = self.loop.time()
        if self.hb_recv and now - self.last_read > 2 * self.hb_recv:
            self.core.counters["heartbeat_timeouts"] += 1
            self.fatal("heart-beat timeout",
                       f"nothing received for {now - self.last_read:.3f} s "
                       f"(negotiated {int(self.hb_recv * 1000)} ms)")
            return
        if (self.hb_send and now - self.last_write >= 0.75 * self.hb_send
                and not self.paused and not self.outq and self.transport is not None):
            self.transport.write(b"\n")
            self.last_write = now
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        period = min(x for x in (self.hb_send / 2, self.hb_recv / 2) if x > 0)
        self.timer = self.loop.call_later(max(period, 0.005), self._heartbeat_tick)

    # -- frame handling ---------------------------------------------------------------

    def _dispatch(self, frame: Frame) -> None:
        core = self.core
        core.counters["frames_in"] += 1
        receipt = frame.headers.get("receipt")
        try:
            if self.state == _NEW:
                if frame.command not in ("CONNECT", "STOMP"):
                    raise _ClientError("expected CONNECT frame", f"got {frame.command}", fatal=True)
                self._on_connect(frame)
                return
            handler = self._handlers.get(frame.command)
            if handler is None:
                raise _ClientError("unexpected frame", frame.command, fatal=True)
            handler(self, frame)
        except _ClientError as exc:
            if exc.fatal:
                self.fatal(exc.message, exc.detail, receipt, exc.headers)
            else:
                core.counters["errors"] += 1
                log.info("ERROR to %s: %s %s", self.peer, exc.message, exc.detail)
                self.send_frame(_error_frame(exc.message, exc.detail, receipt, exc.headers))
            return
        except Exception:
            core.counters["internal_errors"] += 1
            log.exception("error handling %s from %s", frame.command, self.peer)
            self.fatal("internal error", "", receipt)
            return
        if receipt is not None and frame.command != "DISCONNECT" and self.state == _CONNECTED:
            self.send_frame(encode_frame("RECEIPT", [("receipt-id", receipt)]))

    def _on_connect(self, frame: Frame) -> None:
        h = frame.headers
        versions = [v.strip() for v in (h.get("accept-version") or "1.0").split(",")]
        if "1.2" in versions:
            version = "1.2"
        elif "1.1" in versions:
            version = "1.1"
        else:
            raise _ClientError("unsupported STOMP version",
                               f"offered {','.join(versions)[:64]}; supported: 1.2, 1.1",
                               fatal=True, headers=(("version", "1.2,1.1"),))
        cx = cy = 0
        raw = h.get("heart-beat")
        if raw:
            try:
                a, b = raw.split(",")
                cx, cy = int(a), int(b)
                if cx < 0 or cy < 0:
                    raise ValueError
            except ValueError:
                raise _ClientError("invalid heart-beat header", repr(raw[:32]), fatal=True) from None
        login = h.get("login", "")
        auth = self.core.auth
        if auth is None:
            self._connected(login, None, version, cx, cy)
            return
        passcode = h.get("passcode", "")
        user = auth.cached(login, passcode)
        if user is not None:
            self._connected(login, user, version, cx, cy)
            return
        # scrypt takes tens of ms: check on the login pool, hold this connection's input
        pool = self.core.login_pool
        assert pool is not None and self.transport is not None
        self.backlog = []
        self.transport.pause_reading()
        future = self.loop.run_in_executor(pool, auth.authenticate, login, passcode)
        future.add_done_callback(lambda f: self._login_checked(f, login, version, cx, cy))

    def _login_checked(self, future: asyncio.Future[User | None], login: str, version: str,
                       cx: int, cy: int) -> None:
        if self.state != _NEW:
            return  # closed meanwhile
        backlog, self.backlog = self.backlog or [], None
        user = None if future.cancelled() or future.exception() else future.result()
        try:
            if user is None:
                self.core.counters["auth_failures"] += 1
                log.warning("authentication failed for %r from %s", login[:128], self.peer)
                raise _ClientError("authentication failed", "bad login or passcode", fatal=True)
            self._connected(login, user, version, cx, cy)
        except _ClientError as exc:
            self.fatal(exc.message, exc.detail, None, exc.headers)
            return
        for frame in backlog:
            if self.state != _CONNECTED:
                return
            self._dispatch(frame)
        if self.transport is not None and self.state == _CONNECTED:
            self.transport.resume_reading()

    def _connected(self, login: str, user: User | None, version: str, cx: int, cy: int) -> None:
        if user is not None:
            if not self.core.session_opened(login):
                raise _ClientError("too many connections for this user",
                                   f"limit {self.limits.max_connections_per_user}", fatal=True)
            self.counted_session = True
        if self.counted_unauthenticated:
            self.counted_unauthenticated = False
            self.core.unauthenticated -= 1
        self.user = user
        lim = self.limits
        sx, sy = max(lim.heartbeat_send_ms, 0), max(lim.heartbeat_recv_ms, 0)
        self.hb_send = max(sx, cy) / 1000.0 if sx and cy else 0.0
        self.hb_recv = max(cx, sy) / 1000.0 if cx and sy else 0.0
        self.login = login
        self.session = uuid.uuid4().hex[:16]
        self.state = _CONNECTED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.send_frame(encode_frame("CONNECTED", [
            ("version", version),
            ("heart-beat", f"{sx},{sy}"),
            ("server", f"collective/{_VERSION}"),
            ("session", self.session),
        ]))
        now = self.loop.time()
        self.last_read = self.last_write = now
        if self.hb_send or self.hb_recv:
            self._schedule_tick()
        log.debug("%s connected as %r (STOMP %s, heart-beat send %.3fs recv %.3fs)",
                  self.peer, login, version, self.hb_send, self.hb_recv)

    # -- permissions ----------------------------------------------------------------------

    def _check(self, dest: str, write: bool) -> None:
        """Raise the ERROR "access refused" unless this user may write / read ``dest``."""
        user = self.user
        if user is None:
            return
        cache = self.may_write if write else self.may_read
        allowed = cache.get(dest)
        if allowed is None:
            allowed = user.may_write(dest) if write else user.may_read(dest)
            if len(cache) >= 256:
                cache.clear()
            cache[dest] = allowed
        if not allowed:
            self.core.counters["denied"] += 1
            what = "write to" if write else "read from"
            log.warning("access refused: %r may not %s %s (%s)", self.login, what, dest[:200],
                        self.peer)
            raise _ClientError("access refused", f"user {self.login!r} may not {what} {dest[:200]}")

    def _on_send(self, frame: Frame) -> None:
        dest = frame.headers.get("destination")
        if not dest:
            raise _ClientError("missing destination header")
        self.core.split_destination(dest)
        self._check(dest, write=True)
        tx = frame.headers.get("transaction")
        if tx is not None:
            buffered = self.txs.get(tx)
            if buffered is None:
                raise _ClientError("unknown transaction", repr(tx[:64]))
            size = len(frame.body) + 256
            if (len(buffered) >= self.limits.max_transaction_frames
                    or self.tx_bytes[tx] + size > self.limits.max_transaction_bytes):
                raise _ClientError("transaction too large",
                                   f"limits: {self.limits.max_transaction_frames} frames, "
                                   f"{self.limits.max_transaction_bytes} bytes")
            buffered.append(frame)
            self.tx_bytes[tx] += size
            return
        self.core.send(frame)

    def _on_subscribe(self, frame: Frame) -> None:
        h = frame.headers
        sub_id = h.get("id")
        dest = h.get("destination")
        if sub_id is None:
            raise _ClientError("missing id header in SUBSCRIBE")
        if not dest:
            raise _ClientError("missing destination header")
        ack = h.get("ack", "auto")
        if ack not in _ACK_MODES:
            raise _ClientError("invalid ack mode", repr(ack[:32]))
        if sub_id in self.subs:
            raise _ClientError("duplicate subscription id", repr(sub_id[:64]))
        if len(self.subs) >= self.limits.max_subscriptions_per_connection:
            raise _ClientError("too many subscriptions",
                               f"limit {self.limits.max_subscriptions_per_connection}")
        kind, name = self.core.split_destination(dest)
        self._check(dest, write=False)
        sub = _Subscription(self, sub_id, dest, kind, name, ack)
        sub.prefetch = _prefetch_of(h) if ack != "auto" else 0
        self.subs[sub_id] = sub
        if kind == "queue":
            self.queue_subs += 1
        try:
            self.core.subscribe(sub)
        except Exception:
            del self.subs[sub_id]
            if kind == "queue":
                self.queue_subs -= 1
            raise

    def _on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.headers.get("id")
        if sub_id is None:
            raise _ClientError("missing id header in UNSUBSCRIBE")
        sub = self.subs.pop(sub_id, None)
        if sub is None:
            raise _ClientError("unknown subscription id", repr(sub_id[:64]))
        if sub.kind == "queue":
            self.queue_subs -= 1
        self.core.unsubscribe(sub)

    def _on_ack(self, frame: Frame) -> None:
        h = frame.headers
        ack_id = h.get("id") or h.get("message-id")
        if not ack_id:
            raise _ClientError(f"missing id header in {frame.command}")
        nack = frame.command == "NACK"
        sub_id = h.get("subscription")
        if sub_id is not None and sub_id in self.subs:
            self.core.ack(self.subs[sub_id], ack_id, nack)
            return
        for sub in self.subs.values():
            if ack_id in sub.pending:
                self.core.ack(sub, ack_id, nack)
                return

    def _on_begin(self, frame: Frame) -> None:
        tx = frame.headers.get("transaction")
        if not tx:
            raise _ClientError("missing transaction header in BEGIN")
        if tx in self.txs:
            raise _ClientError("transaction already started", repr(tx[:64]))
        if len(self.txs) >= self.limits.max_transactions_per_connection:
            raise _ClientError("too many open transactions")
        self.txs[tx] = []
        self.tx_bytes[tx] = 0

    def _on_commit(self, frame: Frame) -> None:
        tx = frame.headers.get("transaction")
        if not tx or tx not in self.txs:
            raise _ClientError("unknown transaction", repr((tx or "")[:64]))
        del self.tx_bytes[tx]
        for buffered in self.txs.pop(tx):
            self.core.send(buffered)

    def _on_abort(self, frame: Frame) -> None:
        tx = frame.headers.get("transaction")
        if not tx or tx not in self.txs:
            raise _ClientError("unknown transaction", repr((tx or "")[:64]))
        del self.txs[tx]
        del self.tx_bytes[tx]

    def _on_disconnect(self, frame: Frame) -> None:
        log.debug("%s disconnecting", self.peer)
        self._graceful_close(frame.headers.get("receipt"))

    def _on_connect_again(self, frame: Frame) -> None:
        raise _ClientError("already connected", frame.command, fatal=True)

    _handlers: dict[str, Callable[[_Connection, Frame], None]] = {
        "SEND": _on_send,
        "SUBSCRIBE": _on_subscribe,
        "UNSUBSCRIBE": _on_unsubscribe,
        "ACK": _on_ack,
        "NACK": _on_ack,
        "BEGIN": _on_begin,
        "COMMIT": _on_commit,
        "ABORT": _on_abort,
        "DISCONNECT": _on_disconnect,
        "CONNECT": _on_connect_again,
        "STOMP": _on_connect_again,
    }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Listener:
    """One address the broker listens on; ``port`` 0 picks a free port at the first start
    (kept for later starts)."""

    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"stomp{'+ssl' if self.ssl_context else ''}://{self.host}:{self.port}"


class EmbeddedBroker:
    """The embedded STOMP 1.2 broker, served on a background thread.

    ``start()`` returns once listening (``port`` then holds the real port);
    ``stop()`` closes every connection and the listener and joins the thread; the
    broker can be started again afterwards (on the same port).

    Logins: ``auth`` (a :class:`~collective.broker.auth.BrokerAuth`: users with
    per-destination permissions, what ``mco broker --config`` and the fleet use) or
    ``users`` (``{login: password}``, in-process only: each may do everything). With
    neither, no login is asked and everything is allowed: that is for a broker a test
    runs in its own process, on loopback only, and it says so in the log.
    ``listeners`` replaces ``host``, ``port`` and ``ssl_context`` with several addresses.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, limits: BrokerLimits | None = None,
                 users: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, *, auth: BrokerAuth | None = None,
                 listeners: Iterable[Listener] | None = None) -> None:
        if users is not None and auth is not None:
            raise ValueError("give users or auth, not both")
        self.auth = BrokerAuth.plain(users) if users else auth
        self.listeners = (list(listeners) if listeners is not None
                          else [Listener(host, port, ssl_context)])
        if not self.listeners:
            raise ValueError("no listeners")
        if self.auth is None:
            for listener in self.listeners:
                if not _is_loopback(listener.host):
                    raise ValueError(
                        f"refusing to listen on non-loopback address {listener.host!r} without "
                        "authentication: give users (login -> passcode) or bind 127.0.0.1")
        self.limits = limits if limits is not None else BrokerLimits()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._core: _Core | None = None
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return self.listeners[0].host

    @property
    def port(self) -> int:
        """The first listener's port."""
        return self.listeners[0].port

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self.listeners[0].ssl_context

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        with self._lock:
            if self.running:
                raise RuntimeError("broker already running")
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(target=self._run, args=(loop, ready, failure),
                                      name=f"collective-broker-{self.port}", daemon=True)
            thread.start()
            if not ready.wait(timeout):
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout)
                raise RuntimeError("embedded broker did not start in time")
            if failure:
                thread.join(timeout)
                raise failure[0]
            self._loop = loop
            self._thread = thread
            for listener in self.listeners:
                log.info("embedded broker listening on %s:%d%s", listener.host, listener.port,
                         " (TLS)" if listener.ssl_context else "")
                if self.auth is not None and not listener.ssl_context and not _is_loopback(
                        listener.host):
                    log.warning("listener %s:%d has no TLS: logins and messages cross the "
                                "network in clear text", listener.host, listener.port)
            if self.auth is None:
                log.warning("embedded broker on %s:%d asks no login: any local process may read "
                            "and write every destination (in-process tests only; mco broker "
                            "and mco fleet always require logins)", self.host, self.port)
            return self

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event,
             failure: list[BaseException]) -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._open(loop))
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                pass
            loop.close()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        core = _Core(loop, self.limits, self.auth)

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            core.counters["internal_errors"] += 1
            exc = context.get("exception")
            log.error("embedded broker: %s", context.get("message", "unhandled error"),
                      exc_info=exc if isinstance(exc, BaseException) else None)

        loop.set_exception_handler(on_loop_error)
        servers: list[asyncio.base_events.Server] = []
        try:
            for listener in self.listeners:
                server = await loop.create_server(
                    lambda: _Connection(core), listener.host, listener.port,
                    ssl=listener.ssl_context, reuse_address=True, backlog=1024,
                    ssl_handshake_timeout=10.0 if listener.ssl_context else None)
                servers.append(server)
                listener.port = server.sockets[0].getsockname()[1]
        except BaseException:
            for server in servers:
                server.close()
            core.close()
            raise
        self._core = core
        self._servers = servers

    async def _close(self) -> None:
        servers, core = self._servers, self._core
        for server in servers:
            server.close()
        if core is not None:
            core.close()
        for server in servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 5)
            except Exception:
                pass
        for _ in range(3):
            await asyncio.sleep(0)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None:
                return
            if thread.is_alive():
                try:
                    asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout)
                except Exception:
                    log.exception("error while stopping the embedded broker")
                try:
                    loop.call_soon_threadsafe(loop.stop)
                except RuntimeError:
                    pass
                thread.join(timeout)
            self._loop = self._thread = None
            self._servers = []  # _core is kept so stats() still reports the last counters
            log.info("embedded broker on %s:%d stopped", self.host, self.port)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def replace_auth(self, auth: BrokerAuth) -> int:
        """Serve ``auth``'s users from now on (``mco broker`` on SIGHUP).

        New logins are checked against them; a connection whose user was removed or
        changed (password, role, permissions) gets an ERROR and is closed, so it logs in
        again under the new rules. Returns how many connections were closed.
        """
        if self.auth is None:
            raise ValueError("this broker has no users to replace")
        self.auth = auth
        loop, core = self._loop, self._core
        if core is None or loop is None or not self.running:
            return 0

        async def swap() -> int:
            core.auth = auth
            closed = 0
            for conn in list(core.conns):
                if conn.user is not None and auth.users.get(conn.login) != conn.user:
                    conn.fatal("login no longer valid", "the broker's users changed; "
                               "log in again", None)
                    closed += 1
            return closed

        return asyncio.run_coroutine_threadsafe(swap(), loop).result(10)

    # -- introspection ----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters and gauges: connections, frames_in, messages_in, messages_out,
        dropped_slow_consumer, errors, subscriptions, and more."""
        loop, core = self._loop, self._core
        if core is None:
            return _Core.empty_stats()
        if loop is None or not self.running or threading.current_thread() is self._thread:
            return core.stats()

        async def collect() -> dict[str, int]:
            return core.stats()

        return asyncio.run_coroutine_threadsafe(collect(), loop).result(5)

    @property
    def url(self) -> str:
        return f"stomp{'+ssl' if self.ssl_context else ''}://{self.host}:{self.port}"


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _remove_pidfile(path: str) -> None:
    try:
        with open(path, encoding="ascii") as fh:
            if fh.read().strip() != str(os.getpid()):
                return
        os.unlink(path)
    except OSError:
        pass


def run_broker(host: str = "127.0.0.1", port: int = 61613, *, limits: BrokerLimits | None = None,
               users: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None,
               pidfile: str | os.PathLike[str] | None = None,
               on_ready: Callable[[EmbeddedBroker], Any] | None = None,
               auth: BrokerAuth | None = None,
               listeners: Iterable[Listener] | None = None,
               reload_auth: Callable[[], BrokerAuth] | None = None) -> None:
    """Serve the broker in the foreground until SIGTERM or SIGINT (``mco broker``).

    A broker served this way always asks for a login (``auth`` or ``users``), on
    loopback too: any local process could otherwise read every node's requests.
    On SIGHUP, ``reload_auth`` (when given) supplies the users to serve from then on
    (:meth:`EmbeddedBroker.replace_auth`); when it raises, the broker logs why and
    keeps the users it has.
    """
    if not users and auth is None:
        raise ValueError("the broker needs users: a login is required even on loopback "
                         "(mco broker --config FILE with a users: section)")
    broker = EmbeddedBroker(host, port, limits=limits, users=users, ssl_context=ssl_context,
                            auth=auth, listeners=listeners)
    stop = threading.Event()
    reload_requested = threading.Event()
    previous: dict[int, Any] = {}

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d, stopping the broker", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
        if reload_auth is not None:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP,
                                                    lambda *_: reload_requested.set())
    pid_path = os.fspath(pidfile) if pidfile is not None else None
    try:
        broker.start()
        if pid_path:
            _write_pidfile(pid_path)
        log.info("collective broker %s serving on %s (pid %d, %d users)", _VERSION,
                 ", ".join(f"{lst.host}:{lst.port}" for lst in broker.listeners), os.getpid(),
                 len(broker.auth.users) if broker.auth else 0)
        if on_ready is not None:
            on_ready(broker)
        while not stop.wait(0.2):
            if not broker.running:
                log.error("broker thread ended unexpectedly")
                break
            if reload_requested.is_set() and reload_auth is not None:
                reload_requested.clear()
                try:
                    fresh = reload_auth()
                except Exception as exc:  # a bad edit must not take the broker down
                    log.error("SIGHUP: keeping the current users: %s", exc)
                    continue
                closed = broker.replace_auth(fresh)
                log.info("SIGHUP: now serving %d users; closed %d connections whose login "
                         "was removed or changed", len(fresh.users), closed)
    finally:
        broker.stop()
        if pid_path:
            _remove_pidfile(pid_path)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
