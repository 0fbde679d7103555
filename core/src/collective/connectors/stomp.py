"""The STOMP connector: stomp.py plus the supervision stomp.py lacks.

stomp.py alone is not a reliable connector (docs/decisions.md): it gives up after three
reconnect attempts, heartbeats are off by default, nothing resubscribes after a
disconnect, and TLS without ``ca_certs`` silently trusts anything. :class:`StompConnector`
therefore

* runs one *supervisor* thread that owns the connection: it connects, re-subscribes every
  remembered subscription (each confirmed by a RECEIPT) and only then reports
  ``connected``; when the connection drops (socket closed, ERROR frame, heartbeat
  timeout) it reconnects forever with exponential backoff 0.1 s → ``broker.reconnect_max``
  (default 30 s) with ±25 % jitter. A fresh ``StompConnection12`` is used for every
  attempt, so no state of a dead connection leaks into the next one;
* turns on STOMP heartbeats (``broker.heartbeat_ms`` both ways, default 10 s) and TCP
  keepalive, and watches the connection itself: nothing at all received from the broker
  for 2 heart-beat intervals (20 s by default) means the connection is dead (a
  half-open one, behind a vanished peer or a blackholing firewall), whatever stomp.py
  thinks. A broker that does not heart-beat often enough gets a cheap probe (BEGIN and
  ABORT of an empty transaction, with a receipt) once the line has been quiet for most
  of an interval;
* bounds what a subscription takes from the broker when asked to (``prefetch``): such a
  subscription acknowledges each message (``ack: client-individual``) only after its
  callback returned, and the broker holds the rest (``prefetch-count`` for RabbitMQ and
  the embedded broker, ``activemq.prefetchSize`` for ActiveMQ). Its callbacks run on a
  *lane* thread of the connector, in order, so a slow callback delays its own lane only
  (the daemon puts ``rpcutil`` and ``discovery`` on a lane of their own);
* makes every SEND and SUBSCRIBE ask for a RECEIPT, so ``publish`` knows the broker took
  the message. A broker that blocks publishers (RabbitMQ memory/disk alarm) or a dead
  link turns into :class:`ConnectorError` after ``broker.publish_timeout`` instead of
  a hang; the socket also gets a send timeout so a full send buffer cannot block
  forever either;
* refuses ``broker.tls.enabled`` without ``broker.tls.ca_file`` (no ``CERT_NONE`` path)
  unless ``broker.tls.verify: false`` is set explicitly, which is logged loudly.

Subscriptions are confirmed or the connection is not up: a SUBSCRIBE whose RECEIPT does
not come within ``broker.publish_timeout`` (a broker too busy to answer) drops the
connection, and the supervisor reconnects with backoff and subscribes everything again,
for as long as it takes. :attr:`StompConnector.connected` (and :meth:`health`) says
whether every subscription is in place.

Threads: callbacks of subscriptions without ``prefetch`` run on stomp.py's receiver
thread, one message at a time; **such callbacks must be quick** (hand work to a queue) or
they delay every other message, receipt and heart-beat.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import stomp
from stomp.exception import StompException

from collective.connectors.destinations import (
    FLAVOURS,
    Destination,
    stomp_send,
    stomp_subscribe,
)

log = logging.getLogger(__name__)

Callback = Callable[[bytes], None]

#: A connection that stayed up this long resets the backoff to its first step.
STABLE_AFTER_S = 10.0
#: Backoff: first delay and jitter (±25 %).
BACKOFF_INITIAL_S = 0.1
BACKOFF_JITTER = 0.25
#: A missed-heartbeat verdict after this many heartbeat intervals (docs/security.md R3: 2x).
HEARTBEAT_RECEIVE_SCALE = 2.0
#: How long disconnect() waits for the broker's DISCONNECT receipt.
DISCONNECT_GRACE_S = 2.0
#: Nothing received for this many heart-beat intervals: the connection is dead.
SILENCE_LIMIT_INTERVALS = 2.0
#: After this share of an interval of silence, a probe asks the broker for a receipt
#: (only when the broker's own heart-beats are off or slower than ours).
PROBE_AFTER_INTERVALS = 0.75
#: How often the supervisor looks at a live connection.
WATCH_INTERVAL_S = 0.25
#: The SUBSCRIBE header that bounds unacknowledged messages, per broker flavour.
PREFETCH_HEADERS = {"embedded": "prefetch-count", "rabbitmq": "prefetch-count",
                    "activemq": "activemq.prefetchSize"}


class ConnectorError(Exception):
    """The broker cannot be used right now (connect/publish timeout, lost connection)."""


class ConnectorConfigError(ConnectorError, ValueError):
    """The ``broker.*`` configuration is unusable; the message names the key."""


# -- stomp.py log capture -------------------------------------------------------------
# stomp.py logs *why* a TCP/TLS connect failed and then raises a bare
# ConnectFailedException. We pick the reason out of its log record (on the thread that
# made the attempt) so our error says "Connection refused" or "certificate verify failed",
# and drop the record: we log the failure ourselves, with the backoff.
_attempt_errors = threading.local()


class _ConnectFailureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("could not connect to host"):
            args = record.args if isinstance(record.args, tuple) else ()
            _attempt_errors.last = str(args[-1]) if args else record.getMessage()
            return False
        return True


_stomp_logger = logging.getLogger("stomp.py")
if not any(isinstance(f, _ConnectFailureFilter) for f in _stomp_logger.filters):
    _stomp_logger.addFilter(_ConnectFailureFilter())


@dataclass
class _Subscription:
    dest: Destination
    callback: Callback
    sub_id: str
    destination: str
    headers: dict[str, str]
    #: most unacknowledged messages (None: ``ack: auto``, callback on the receiver thread)
    prefetch: int | None = None
    #: the lane thread that runs the callback (subscriptions with a prefetch only)
    lane: str = "default"

    @property
    def ack_mode(self) -> str:
        return "auto" if self.prefetch is None else "client-individual"


class _Lane:
    """One thread that runs the callbacks of the prefetch subscriptions on it, in order,
    and acknowledges each message after its callback returned."""

    def __init__(self, owner: StompConnector, name: str) -> None:
        self.name = name
        self.owner = owner
        self.queue: queue.SimpleQueue[tuple[_Session, _Subscription, Any] | None] = \
            queue.SimpleQueue()
        #: messages handed to the lane and not finished yet
        self.pending = 0
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.thread = threading.Thread(target=self._run, name=f"collective-lane-{name}",
                                       daemon=True)
        self.thread.start()

    def put(self, item: tuple[_Session, _Subscription, Any]) -> None:
        with self.lock:
            self.pending += 1
        self.queue.put(item)

    def stop(self) -> None:
        self.queue.put(None)

    def wait_idle(self, deadline: float) -> bool:
        with self.idle:
            while self.pending and time.monotonic() < deadline:
                self.idle.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            return not self.pending

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            session, sub, frame = item
            try:
                self.owner._deliver(session, sub, frame)
            finally:
                with self.idle:
                    self.pending -= 1
                    if not self.pending:
                        self.idle.notify_all()


@dataclass
class _Receipt:
    event: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    error: str | None = None


@dataclass
class _Session:
    """One STOMP connection attempt and its life."""

    gen: int
    conn: Any = None
    handshake: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    established: bool = False
    #: monotonic time of the last frame (or heart-beat) received from the broker
    last_rx: float = field(default_factory=time.monotonic)
    #: negotiated interval of the broker's heart-beats to us, seconds (0: none)
    broker_heartbeat_s: float = 0.0
    #: monotonic time the liveness probe in flight was sent, if any
    probe_at: float | None = None


class _Listener(stomp.ConnectionListener):
    """Forwards stomp.py events of one session to the connector."""

    def __init__(self, owner: StompConnector, session: _Session) -> None:
        self.owner = owner
        self.session = session

    def on_connecting(self, host_and_port: tuple[str, int]) -> None:
        self.owner._tune_socket(self.session)

    def on_connected(self, frame: Any) -> None:
        self.session.last_rx = time.monotonic()
        self.session.broker_heartbeat_s = self.owner._broker_heartbeat(frame)
        self.session.handshake.set()

    def on_message(self, frame: Any) -> None:
        self.session.last_rx = time.monotonic()
        self.owner._dispatch(self.session, frame)

    def on_receipt(self, frame: Any) -> None:
        self.session.last_rx = time.monotonic()
        self.owner._receipt_done(frame.headers.get("receipt-id"), ok=True)

    def on_heartbeat(self) -> None:
        self.session.last_rx = time.monotonic()

    def on_error(self, frame: Any) -> None:
        self.session.last_rx = time.monotonic()
        self.owner._broker_error(self.session, frame)

    def on_disconnected(self) -> None:
        self.owner._session_lost(self.session, None)

    def on_heartbeat_timeout(self) -> None:
        self.owner._session_lost(self.session, "heartbeat timeout")


class StompConnector:
    """A supervised STOMP connection (see the module docstring).

    ``config`` is a :class:`collective.config.Config`; ``client_id`` names this
    connection in logs and subscription ids (identity of the node, or the client's
    reply id).
    """

    name = "stomp"

    def __init__(self, config: Any, client_id: str) -> None:
        self.config = config
        self.client_id = client_id
        broker = config.get("broker", {}) or {}
        self.flavour: str = broker.get("flavour") or "embedded"
        if self.flavour not in FLAVOURS:
            raise ConnectorConfigError(
                f"broker.flavour: {self.flavour!r} is not one of {', '.join(FLAVOURS)}")
        self.host: str = broker.get("host") or "127.0.0.1"
        self.port: int = int(broker.get("port") or 61613)
        self.user: str | None = broker.get("user")
        self.vhost: str | None = broker.get("vhost") or None
        self.heartbeat_ms = int(broker.get("heartbeat_ms", 10000) or 0)
        self.connect_timeout = float(broker.get("connect_timeout") or 5.0)
        self.publish_timeout = float(broker.get("publish_timeout") or 5.0)
        self.reconnect_max = max(BACKOFF_INITIAL_S, float(broker.get("reconnect_max") or 30.0))
        self._password_source = config.broker_password
        self._tls = self._tls_settings(broker.get("tls") or {})

        self.stats: dict[str, int] = {
            "connects": 0, "disconnects": 0, "reconnects": 0, "published": 0,
            "received": 0, "publish_failures": 0, "callback_errors": 0,
            "acked": 0, "silence_timeouts": 0, "probes": 0, "subscribe_failures": 0,
        }
        self._lanes: dict[str, _Lane] = {}
        #: monotonic time since when not every subscription is in place (None: healthy)
        self._unhealthy_since: float | None = time.monotonic()
        self._lock = threading.RLock()
        self._subs: dict[Destination, _Subscription] = {}
        self._by_id: dict[str, _Subscription] = {}
        self._sub_ids = itertools.count(1)
        self._receipts: dict[str, _Receipt] = {}
        self._receipts_lock = threading.Lock()
        self._session: _Session | None = None
        self._gen = itertools.count(1)
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._refused: str | None = None  # ERROR frame in answer to CONNECT (bad login)

    # -- configuration -------------------------------------------------------------
    def _tls_settings(self, tls: dict[str, Any]) -> dict[str, Any] | None:
        if not tls.get("enabled"):
            return None
        verify = tls.get("verify", True) is not False
        ca_file, cert_file, key_file = tls.get("ca_file"), tls.get("cert_file"), tls.get("key_file")
        if verify and not ca_file:
            raise ConnectorConfigError(
                "broker.tls.ca_file is required when broker.tls.enabled is true: the broker "
                "certificate must be verified against a CA you name (set broker.tls.verify: "
                "false only for a throw-away test broker)")
        if not verify:
            log.warning(
                "!!! broker.tls.verify is false: the broker certificate is NOT verified; "
                "anyone on the path to %s:%d can read and forge traffic. Never do this in "
                "production. !!!", self.host, self.port)
        if key_file and not cert_file:
            raise ConnectorConfigError("broker.tls.key_file is set but broker.tls.cert_file is not")
        for key, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
            if value:
                try:
                    with open(value, "rb"):
                        pass
                except OSError as exc:
                    raise ConnectorConfigError(f"broker.tls.{key}: cannot read {value}: {exc}") from exc
        return {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file, "verify": verify}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while a connection is up and every subscription is confirmed."""
        return self._connected.is_set()

    def health(self) -> dict[str, Any]:
        """``{"ok": bool, "state": str, "subscriptions": n, "since": seconds}``: ok only
        while connected with every subscription confirmed by the broker."""
        with self._lock:
            total = len(self._subs)
            since = self._unhealthy_since
        ok = self._connected.is_set()
        if ok:
            state = f"connected to {self.address}, {total} subscription(s) in place"
        elif self._thread is None:
            state = "not started"
        else:
            state = (f"not every subscription is in place at {self.address}: "
                     f"{self.last_error or 'connecting'}; retrying with backoff")
        return {"ok": ok, "state": state, "subscriptions": total,
                "since": None if since is None else round(time.monotonic() - since, 1)}

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Start the supervisor (connects in the background, forever); returns at once."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._refused = None
            self._thread = threading.Thread(
                target=self._run, name=f"collective-stomp-{self.client_id}", daemon=True)
            self._thread.start()

    def connect(self, timeout: float | None = None) -> None:
        """Connect (and keep the connection up from then on).

        ``timeout=None`` waits until the broker is reachable, however long that takes
        (the daemon). With a timeout (the client passes ``broker.connect_timeout``), a
        broker that is not usable in time raises :class:`ConnectorError` and the
        connector is stopped.
        """
        self.start()
        if timeout is None:
            while not self._connected.wait(0.5):
                if self._stop.is_set():
                    raise ConnectorError("connector was stopped before it connected")
            return
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._connected.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            refused = self._refused
            if refused or time.monotonic() >= deadline:
                # don't wait for the supervisor: it may sit in a TCP connect for up to
                # broker.connect_timeout; it is a daemon thread and exits on its own
                self.disconnect(join_timeout=0.2)
                # a broker that answered "no" (bad login) fails at once: waiting won't help
                reason = f"refused: {refused}" if refused else (self.last_error or "no answer")
                raise ConnectorError(f"could not connect to broker {self.address} within "
                                     f"{timeout:g}s: {reason}")

    def disconnect(self, join_timeout: float | None = None) -> None:
        """Stop the supervisor and close the connection cleanly (DISCONNECT + receipt).

        Waits at most ``join_timeout`` seconds (default: ``broker.connect_timeout`` plus
        a little) for the supervisor thread to finish. Messages still waiting on a lane
        are not acknowledged (the broker gives a queue's back to its next subscriber).
        """
        self._stop.set()
        with self._lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            lane.stop()
        with self._lock:
            session, self._session = self._session, None
            thread = self._thread
        self._connected.clear()
        if session is not None:
            self._close(session, graceful=True)
            session.lost.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.connect_timeout + DISCONNECT_GRACE_S + 1
                        if join_timeout is None else join_timeout)
        with self._lock:
            self._thread = None
        self._fail_receipts("connector disconnected")

    def __enter__(self) -> StompConnector:
        self.connect(self.connect_timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # -- subscriptions -------------------------------------------------------------
    def subscribe(self, dest: Destination, callback: Callback, *, prefetch: int | None = None,
                  lane: str = "default") -> None:
        """Receive messages for ``dest``.

        Without ``prefetch``, ``callback(body: bytes)`` runs on the receiver thread and the
        broker sends whatever it has (``ack: auto``). With ``prefetch=N`` the broker keeps
        at most N messages unacknowledged with us: ``callback`` runs on the connector's
        thread for ``lane``, and each message is acknowledged when its callback returned
        (a callback that returns ``False`` leaves it unacknowledged: a queue's message then
        goes to the next subscriber once this connection closes).

        The subscription is remembered and re-established after every reconnect. When
        connected, this waits (up to ``broker.publish_timeout``) for the broker to confirm
        it, so a request published afterwards cannot beat the subscription; a missing
        confirmation raises :class:`ConnectorError` and drops the connection, which the
        supervisor re-establishes with every subscription (the subscription stays
        remembered). Subscribing again to the same destination replaces the callback.
        """
        destination, headers = stomp_subscribe(dest, self.flavour)
        if prefetch is not None:
            if int(prefetch) < 1:
                raise ValueError(f"prefetch must be at least 1, got {prefetch!r}")
            headers = {**headers, PREFETCH_HEADERS[self.flavour]: str(int(prefetch))}
        with self._lock:
            existing = self._subs.get(dest)
            if existing is not None:
                existing.callback = callback
                return
            sub = _Subscription(dest, callback, f"{self.client_id}-{next(self._sub_ids)}",
                                destination, headers,
                                prefetch=None if prefetch is None else int(prefetch), lane=lane)
            self._subs[dest] = sub
            self._by_id[sub.sub_id] = sub
            session = self._session
            receipt = self._send_subscribe(session, sub) if session is not None else None
        if receipt is None:
            return
        if self._on_receiver_thread(session):  # cannot wait for our own thread
            with self._receipts_lock:
                self._receipts.pop(receipt, None)
            return
        try:
            self._await_receipts([receipt], time.monotonic() + self.publish_timeout,
                                 f"SUBSCRIBE {destination}")
        except ConnectorError as exc:
            # Not knowing whether the broker has it is not a state to serve in: start over
            # (the supervisor re-subscribes everything, with backoff, until confirmed).
            with self._lock:
                self.stats["subscribe_failures"] += 1
            if session is not None:
                self._session_lost(session, f"subscription not confirmed: {exc}")
            raise

    def unsubscribe(self, dest: Destination, confirm: bool = False) -> None:
        """Forget the subscription for ``dest`` (no error if there is none).

        With ``confirm`` (the daemon pausing before a re-exec) this waits, up to
        ``broker.publish_timeout``, for the broker's RECEIPT; messages the broker sent
        before it still reach the callback, so none is dropped in between. A missing
        confirmation raises :class:`ConnectorError`.
        """
        receipt = None
        with self._lock:
            sub = self._subs.pop(dest, None)
            if sub is None:
                return
            session = self._session
            if session is not None and session.conn is not None:
                if confirm and not self._on_receiver_thread(session):
                    receipt = self._new_receipt("u")
                try:
                    session.conn.unsubscribe(id=sub.sub_id,
                                             headers={"receipt": receipt} if receipt else None)
                except (StompException, OSError) as exc:
                    self._receipt_done(receipt, ok=False, error=str(exc))
                    log.debug("UNSUBSCRIBE %s failed: %s", sub.destination, exc)
            if receipt is None:
                self._by_id.pop(sub.sub_id, None)
                return
        try:
            self._await_receipts([receipt], time.monotonic() + self.publish_timeout,
                                 f"UNSUBSCRIBE {sub.destination}")
        finally:
            with self._lock:
                self._by_id.pop(sub.sub_id, None)

    def subscriptions(self) -> list[Destination]:
        with self._lock:
            return list(self._subs)

    def _send_subscribe(self, session: _Session | None, sub: _Subscription) -> str | None:
        """Send SUBSCRIBE with a receipt; returns the receipt id (None if not sent)."""
        if session is None or session.conn is None:
            return None
        receipt = self._new_receipt("s")
        try:
            session.conn.subscribe(destination=sub.destination, id=sub.sub_id, ack=sub.ack_mode,
                                   headers={**sub.headers, "receipt": receipt})
        except (StompException, OSError) as exc:
            self._receipt_done(receipt, ok=False, error=str(exc))
            log.debug("SUBSCRIBE %s not sent: %s", sub.destination, exc)
        return receipt

    # -- publishing ----------------------------------------------------------------
    def publish(self, dest: Destination, body: bytes, ttl: float | None = None,
                confirm: bool | None = None) -> None:
        """Send ``body`` to ``dest``; returns once the broker confirmed it (RECEIPT).

        ``ttl`` (seconds) becomes the broker-side expiry. Waits for a connection at most
        ``broker.publish_timeout`` seconds in total; raises :class:`ConnectorError`
        ("broker is applying flow control or unreachable: ...") otherwise. Never retries
        a message the broker may already have (at-most-once). ``confirm=False`` sends
        without waiting for a receipt (None: confirm unless called on the receiver
        thread, where no receipt could be read).
        """
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError("body must be bytes")
        deadline = time.monotonic() + self.publish_timeout
        destination, headers = stomp_send(dest, self.flavour, ttl)
        if self._thread is None:
            self._publish_failed(f"not connected to {self.address} (connect() was not called)")
        if not self._connected.wait(self.publish_timeout):
            self._publish_failed(f"not connected to {self.address} after "
                                 f"{self.publish_timeout:g}s ({self.last_error or 'no answer'})")
        with self._lock:
            session = self._session
        if session is None or session.conn is None:
            self._publish_failed(f"connection to {self.address} lost")
        # On the receiver thread (a callback publishing) no RECEIPT could ever be read
        # while we wait for it: send unconfirmed there.
        if confirm is None or self._on_receiver_thread(session):
            confirm = not self._on_receiver_thread(session)
        receipt = self._new_receipt("p") if confirm else None
        if receipt is not None:
            headers = {**headers, "receipt": receipt}
        try:
            session.conn.send(destination=destination, body=bytes(body), headers=headers)
        except Exception as exc:  # noqa: BLE001 - anything from the socket layer
            self._receipt_done(receipt, ok=False, error=str(exc))
            # A half-written frame leaves the stream unusable: start over.
            self._session_lost(session, f"send failed: {exc}")
            self._publish_failed(f"sending to {destination} failed: {exc}")
        if receipt is None:
            with self._lock:
                self.stats["published"] += 1
            return
        try:
            self._await_receipts([receipt], deadline, f"SEND {destination}")
        except ConnectorError as exc:
            self._publish_failed(str(exc).removeprefix("broker is applying flow control or "
                                                        "unreachable: "))
        with self._lock:
            self.stats["published"] += 1

    @staticmethod
    def _on_receiver_thread(session: _Session | None) -> bool:
        transport = getattr(getattr(session, "conn", None), "transport", None)
        return threading.current_thread() is getattr(transport, "io_thread", None)

    def _publish_failed(self, why: str) -> None:
        with self._lock:
            self.stats["publish_failures"] += 1
        raise ConnectorError(f"broker is applying flow control or unreachable: {why}")

    # -- receipts ------------------------------------------------------------------
    def _new_receipt(self, prefix: str) -> str:
        rid = f"{prefix}-{uuid.uuid4().hex}"
        with self._receipts_lock:
            self._receipts[rid] = _Receipt()
        return rid

    def _receipt_done(self, rid: str | None, ok: bool, error: str | None = None) -> None:
        if rid is None:
            return
        with self._receipts_lock:
            rec = self._receipts.get(rid)
        if rec is not None:
            rec.ok, rec.error = ok, error
            rec.event.set()

    def _fail_receipts(self, error: str) -> None:
        with self._receipts_lock:
            pending = [r for r in self._receipts.values() if not r.event.is_set()]
        for rec in pending:
            rec.ok, rec.error = False, error
            rec.event.set()

    def _await_receipts(self, rids: list[str], deadline: float, what: str) -> None:
        try:
            for rid in rids:
                with self._receipts_lock:
                    rec = self._receipts.get(rid)
                if rec is None:
                    continue
                if not rec.event.wait(max(0.0, deadline - time.monotonic())):
                    raise ConnectorError(
                        f"broker is applying flow control or unreachable: no receipt for "
                        f"{what} within {self.publish_timeout:g}s")
                if not rec.ok:
                    raise ConnectorError(
                        f"broker is applying flow control or unreachable: {what}: "
                        f"{rec.error or 'failed'}")
        finally:
            with self._receipts_lock:
                for rid in rids:
                    self._receipts.pop(rid, None)

    # -- the supervisor ------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        base = min(self.reconnect_max, BACKOFF_INITIAL_S * (2 ** min(attempt, 30)))
        return base * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)

    def _run(self) -> None:
        attempt = 0
        ever_connected = False
        while not self._stop.is_set():
            session = _Session(gen=next(self._gen))
            try:
                self._establish(session)
            except Exception as exc:  # noqa: BLE001 - every failure means "retry later"
                self.last_error = session.error or str(exc) or type(exc).__name__
                self._close(session, graceful=False)
                if self._stop.is_set():
                    break
                delay = self._backoff(attempt)
                attempt += 1
                level = logging.WARNING if attempt <= 3 or attempt % 10 == 0 else logging.DEBUG
                unhealthy = "" if not self._subs else (
                    f"; unhealthy: {len(self._subs)} subscription(s) not in place")
                log.log(level, "cannot connect to broker %s (attempt %d): %s; retrying in "
                        "%.1fs%s", self.address, attempt, self.last_error, delay, unhealthy)
                self._stop.wait(delay)
                continue
            with self._lock:
                self.stats["connects"] += 1
                if ever_connected:
                    self.stats["reconnects"] += 1
            ever_connected = True
            self.last_error = self._refused = None
            up_since = time.monotonic()
            with self._lock:
                was_unhealthy = self._unhealthy_since
                self._unhealthy_since = None
            log.info("connected to broker %s (%s%s) as %s, %d subscription(s) in place%s",
                     self.address, self.flavour, ", TLS" if self._tls else "", self.client_id,
                     len(self._subs), "" if was_unhealthy is None or not self._subs else
                     f" (healthy again after {time.monotonic() - was_unhealthy:.1f}s)")
            self._connected.set()
            self._watch(session)
            self._connected.clear()
            with self._lock:
                if self._unhealthy_since is None:
                    self._unhealthy_since = time.monotonic()
            if self._stop.is_set():
                break
            with self._lock:
                self.stats["disconnects"] += 1
                if self._session is session:
                    self._session = None
            self._fail_receipts(f"connection lost ({session.error or 'closed'})")
            self._close(session, graceful=False)
            if time.monotonic() - up_since >= STABLE_AFTER_S:
                attempt = 0
            delay = self._backoff(attempt)
            attempt += 1
            self.last_error = session.error or "connection closed"
            log.warning("lost connection to broker %s (%s); reconnecting in %.1fs",
                        self.address, self.last_error, delay)
            self._stop.wait(delay)
        self._connected.clear()

    def _establish(self, session: _Session) -> None:
        """Connect, log in, re-subscribe; raise on any failure (caller retries)."""
        hb = max(0, self.heartbeat_ms)
        conn = stomp.StompConnection12(
            [(self.host, self.port)],
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_sleep_initial=0.0,
            reconnect_sleep_max=0.0,
            reconnect_attempts_max=1,
            timeout=self.connect_timeout,
            heartbeats=(hb, hb),
            heart_beat_receive_scale=HEARTBEAT_RECEIVE_SCALE,
            keepalive=True,
            vhost=self.vhost,
            auto_decode=False,
        )
        if self._tls is not None:
            conn.set_ssl(
                for_hosts=[(self.host, self.port)],
                key_file=self._tls["key_file"],
                cert_file=self._tls["cert_file"],
                ca_certs=self._tls["ca_file"],
                verify=self._tls["verify"],
                ssl_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        session.conn = conn
        conn.set_listener("collective", _Listener(self, session))
        with self._lock:
            if self._stop.is_set():
                raise ConnectorError("stopped")
        _attempt_errors.last = None
        deadline = time.monotonic() + self.connect_timeout
        try:
            conn.connect(username=self.user, passcode=self._password_source(), wait=False)
        except StompException as exc:
            raise ConnectorError(getattr(_attempt_errors, "last", None)
                                 or f"{type(exc).__name__} {exc}".strip()) from exc
        while not session.handshake.wait(0.05):
            if session.lost.is_set() or self._stop.is_set():
                raise ConnectorError(session.error or "connection closed during login")
            if time.monotonic() > deadline:
                raise ConnectorError(
                    f"no CONNECTED frame within {self.connect_timeout:g}s (not a STOMP broker?)")
        with self._lock:
            if self._stop.is_set():
                raise ConnectorError("stopped")
            self._session = session
            receipts = [r for r in (self._send_subscribe(session, sub)
                                    for sub in self._subs.values()) if r]
        try:
            self._await_receipts(receipts, time.monotonic() + self.publish_timeout,
                                 "re-subscription")
        except ConnectorError as exc:
            with self._lock:
                self.stats["subscribe_failures"] += 1
                if self._session is session:
                    self._session = None
            raise ConnectorError(f"subscriptions not confirmed: {exc}") from exc
        if session.lost.is_set():
            with self._lock:
                if self._session is session:
                    self._session = None
            raise ConnectorError(session.error or "connection closed after login")
        session.established = True

    def _watch(self, session: _Session) -> None:
        """Wait while ``session`` is up; declare it lost after too long a silence.

        stomp.py's own heart-beat check gives the first interval of a connection extra
        grace (a half-open link found 39 s after it went quiet in a test) and depends on
        the heart-beats the broker agreed to; this one counts from the last byte received
        and probes a broker that is silent by design.
        """
        ours = self.heartbeat_ms / 1000.0
        while not session.lost.wait(WATCH_INTERVAL_S):
            if ours <= 0:
                continue  # heart-beats off (broker.heartbeat_ms: 0): trust TCP alone
            beats = session.broker_heartbeat_s
            # a broker that beats about as often as we asked is trusted to keep beating
            # (RabbitMQ beats at 1 s at least); one that beats rarely or never is probed
            slow_broker = beats <= 0 or beats > 1.5 * ours
            interval = ours if slow_broker else max(ours, beats)
            silence = time.monotonic() - session.last_rx
            if silence > SILENCE_LIMIT_INTERVALS * interval:
                with self._lock:
                    self.stats["silence_timeouts"] += 1
                log.warning("nothing received from broker %s for %.1fs (heart-beat %gs): "
                            "the connection is dead", self.address, silence, interval)
                self._session_lost(session, f"nothing received for {silence:.1f}s")
                return
            if session.probe_at is not None and session.last_rx >= session.probe_at:
                session.probe_at = None  # answered (or something else arrived)
            if slow_broker and silence > PROBE_AFTER_INTERVALS * interval \
                    and session.probe_at is None:
                self._probe(session)

    def _probe(self, session: _Session) -> None:
        """Ask for a receipt (BEGIN + ABORT of an empty transaction): any answer is a sign
        of life, and neither needs a destination or a permission."""
        conn = session.conn
        if conn is None:
            return
        tx = f"probe-{uuid.uuid4().hex[:12]}"
        session.probe_at = time.monotonic()
        with self._lock:
            self.stats["probes"] += 1
        try:
            conn.begin(transaction=tx, headers={"receipt": f"h-{tx}"})
            conn.abort(transaction=tx)
        except Exception as exc:  # noqa: BLE001 - a failed probe is a lost connection
            self._session_lost(session, f"probe failed: {exc}")

    def _broker_heartbeat(self, frame: Any) -> float:
        """Seconds between the broker's heart-beats to us, as negotiated (0: none)."""
        try:
            sx = int(str((frame.headers or {}).get("heart-beat", "0,0")).split(",")[0])
        except (ValueError, IndexError):
            sx = 0
        ours = max(0, self.heartbeat_ms)
        return max(sx, ours) / 1000.0 if sx > 0 and ours > 0 else 0.0

    def _close(self, session: _Session, graceful: bool) -> None:
        conn = session.conn
        if conn is None:
            return
        if graceful and session.handshake.is_set() and not session.lost.is_set():
            try:
                conn.disconnect(receipt=None)  # sends DISCONNECT with a receipt, no wait
                session.lost.wait(DISCONNECT_GRACE_S)
            except Exception as exc:  # noqa: BLE001
                log.debug("DISCONNECT failed: %s", exc)
        try:
            conn.transport.disconnect_socket()
        except Exception as exc:  # noqa: BLE001
            log.debug("closing socket: %s", exc)
        try:
            conn.remove_listener("collective")
        except KeyError:
            pass

    # -- callbacks from stomp.py's threads -----------------------------------------
    def _tune_socket(self, session: _Session) -> None:
        conn = session.conn
        sock = getattr(getattr(conn, "transport", None), "socket", None)
        if sock is None:
            return
        try:
            # Small frames back to back (an ACK, then a reply) must not wait for the
            # peer's delayed ACK (Nagle): that added 40 ms to every ping.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            log.debug("TCP_NODELAY: %s", exc)
        if not getattr(conn.transport, "blocking", False):
            return  # TLS: stomp.py runs the socket non-blocking with its own send queue
        try:
            # The connect timeout must not apply to reads of an idle connection ...
            sock.settimeout(None)
            # ... but a send must not block forever when the broker stops reading.
            secs = max(1.0, self.publish_timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                            struct.pack("ll", int(secs), int((secs % 1) * 1_000_000)))
        except OSError as exc:
            log.debug("socket tuning failed: %s", exc)

    def _session_lost(self, session: _Session, why: str | None) -> None:
        if why and not session.error:
            session.error = why
        if not session.lost.is_set():
            session.lost.set()
            if session.established:
                self._connected.clear()
                self._fail_receipts(f"connection lost ({session.error or 'closed'})")

    def _broker_error(self, session: _Session, frame: Any) -> None:
        headers = frame.headers or {}
        message = headers.get("message") or "ERROR"
        body = frame.body.decode("utf-8", "replace") if isinstance(frame.body, bytes) else str(frame.body or "")
        detail = " ".join((f"{message}: {body}" if body.strip() else message).split())
        log.warning("broker %s sent ERROR: %s", self.address, detail[:500])
        session.error = detail[:500]
        if headers.get("receipt-id"):
            self._receipt_done(headers["receipt-id"], ok=False, error=session.error)
        if not session.handshake.is_set():
            self._refused = session.error
            session.lost.set()  # e.g. login refused: do not wait for the timeout

    def _dispatch(self, session: _Session, frame: Any) -> None:
        sub_id = frame.headers.get("subscription")
        with self._lock:
            sub = self._by_id.get(sub_id) if sub_id else None
            self.stats["received"] += 1
        if sub is None:
            log.debug("message for unknown subscription %r dropped", sub_id)
            return
        if sub.prefetch is not None:
            with self._lock:
                lane = self._lanes.get(sub.lane)
                if lane is None and not self._stop.is_set():
                    lane = self._lanes[sub.lane] = _Lane(self, sub.lane)
            if lane is not None:
                lane.put((session, sub, frame))
            return
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        try:
            sub.callback(body)
        except Exception:  # noqa: BLE001 - one bad message must not kill the receiver
            with self._lock:
                self.stats["callback_errors"] += 1
            log.exception("subscription callback for %s failed", sub.dest.logical())

    def _deliver(self, session: _Session, sub: _Subscription, frame: Any) -> None:
        """On a lane thread: run the callback, then acknowledge (unless it said no)."""
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        keep = True
        try:
            keep = sub.callback(body) is not False
        except Exception:  # noqa: BLE001 - one bad message must not stop the lane
            with self._lock:
                self.stats["callback_errors"] += 1
            log.exception("subscription callback for %s failed", sub.dest.logical())
        if not keep:
            return
        ack_id = frame.headers.get("ack") or frame.headers.get("message-id")
        conn = session.conn
        if not ack_id or conn is None or session.lost.is_set():
            return  # a lost connection's unacknowledged messages go back to the broker
        try:
            conn.ack(ack_id)  # STOMP 1.2: the MESSAGE's ack header names it
            with self._lock:
                self.stats["acked"] += 1
        except Exception as exc:  # noqa: BLE001 - the socket layer
            log.debug("ACK %s failed: %s", ack_id, exc)

    def quiesce(self, timeout: float) -> bool:
        """Wait until every lane has run the callbacks of the messages it was given.

        :returns: False when some were still waiting after ``timeout`` seconds
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            lanes = list(self._lanes.values())
        return all(lane.wait_idle(deadline) for lane in lanes)

    def __repr__(self) -> str:
        return (f"StompConnector({self.client_id!r}, {self.address}, flavour={self.flavour}, "
                f"connected={self.connected})")
