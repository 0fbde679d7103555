"""Tests of the embedded STOMP broker over real sockets on 127.0.0.1, with real stomp.py
clients for interoperability and raw sockets for malformed input."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp

from collective.broker import BrokerLimits, EmbeddedBroker
from collective.broker.frames import ALL_COMMANDS, Frame, FrameParser, encode_frame

pytestmark = pytest.mark.timeout(30)

HOST = "127.0.0.1"


# -- helpers -----------------------------------------------------------------------------


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(cond, '__name__', cond)}")
        time.sleep(interval)


class Collector(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.receipts: list[str] = []
        self.errors: list[Any] = []
        self.heartbeats = 0
        self.disconnected = threading.Event()
        self.lock = threading.Lock()

    def on_message(self, frame: Any) -> None:
        with self.lock:
            self.messages.append(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.append(frame.headers["receipt-id"])

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)

    def on_heartbeat(self) -> None:
        self.heartbeats += 1

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [m.body for m in self.messages]


class Client:
    """A stomp.py StompConnection12 with a collecting listener."""

    def __init__(self, port: int, *, heartbeats: tuple[int, int] = (0, 0), login: str | None = None,
                 passcode: str | None = None, ssl_ca: str | None = None) -> None:
        self.port = port
        self.conn = stomp.Connection12([(HOST, port)], heartbeats=heartbeats, auto_decode=False,
                                       reconnect_attempts_max=1, timeout=5)
        if ssl_ca:
            self.conn.set_ssl(for_hosts=[(HOST, port)], ca_certs=ssl_ca)
        self.listener = Collector()
        self.conn.set_listener("collector", self.listener)
        self.login, self.passcode = login, passcode

    def connect(self) -> Client:
        self.conn.connect(self.login, self.passcode, wait=True)
        return self

    def subscribe(self, dest: str, sub_id: str, ack: str = "auto", sync: bool = True) -> None:
        if sync:
            rid = f"sub-{sub_id}-{time.monotonic_ns()}"
            self.conn.subscribe(dest, id=sub_id, ack=ack, headers={"receipt": rid})
            wait_for(lambda: rid in self.listener.receipts)
        else:
            self.conn.subscribe(dest, id=sub_id, ack=ack)

    def send(self, dest: str, body: bytes | str, **headers: Any) -> None:
        self.conn.send(dest, body, headers=headers)

    def sync(self) -> None:
        """Round trip a receipt so everything sent before has been handled."""
        rid = f"sync-{time.monotonic_ns()}"
        self.conn.send("/topic/__sync__", b"", headers={"receipt": rid})
        wait_for(lambda: rid in self.listener.receipts)

    def close(self) -> None:
        try:
            if self.conn.is_connected():
                self.conn.disconnect()
        except Exception:
            pass


class Raw:
    """A raw socket speaking STOMP by hand."""

    def __init__(self, port: int, *, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.parser = FrameParser(commands=ALL_COMMANDS, max_body=64 * 1024 * 1024,
                                  max_headers=1000)
        self.frames: list[Frame] = []
        self.heartbeats = 0
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, **headers: str) -> Frame:
        hdrs = {"accept-version": "1.2", "host": "localhost", **headers}
        self.send(encode_frame("CONNECT", hdrs))
        frame = self.read()
        assert frame.command == "CONNECTED", frame
        return frame

    def _recv(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return False
        before = self.parser.heartbeats
        self.frames.extend(self.parser.feed(data))
        self.heartbeats += self.parser.heartbeats - before
        return True

    def read(self, timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not self._recv():
                raise EOFError("connection closed")
        return self.frames.pop(0)

    def read_until_closed(self, timeout: float = 5.0) -> list[Frame]:
        deadline = time.monotonic() + timeout
        while not self.closed:
            if time.monotonic() > deadline:
                raise AssertionError("connection not closed by broker")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                self._recv()
            except TimeoutError:
                continue
        frames, self.frames = self.frames, []
        return frames

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(HOST, 0, limits=BrokerLimits(linger_seconds=1.0))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(port: int, **kw: Any) -> Client:
        c = Client(port, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def assert_healthy(client_a: Client, client_b: Client, topic: str = "/topic/health") -> None:
    """client_b subscribes (if needed) and receives what client_a sends."""
    tag = f"ping-{time.monotonic_ns()}".encode()
    if not getattr(client_b, "_health_sub", False):
        client_b.subscribe(topic, "health")
        client_b._health_sub = True  # type: ignore[attr-defined]
    client_a.send(topic, tag)
    wait_for(lambda: tag in client_b.listener.bodies())


# -- basic messaging ---------------------------------------------------------------------


def test_connected_frame(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    frame = raw.connect(**{"accept-version": "1.0,1.1,1.2", "heart-beat": "0,0"})
    assert frame.headers["version"] == "1.2"
    assert frame.headers["server"].startswith("collective/")
    assert frame.headers["session"]
    assert "heart-beat" in frame.headers
    raw.close()


def test_version_11_and_unsupported(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    assert raw.connect(**{"accept-version": "1.1"}).headers["version"] == "1.1"
    raw.close()
    raw = Raw(broker.port)
    raw.send(b"CONNECT\naccept-version:1.0\n\n\x00")
    frames = raw.read_until_closed()
    assert frames[0].command == "ERROR"
    assert "version" in frames[0].headers["message"]


def test_topic_fanout_three_subscribers(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    subs = [clients(broker.port).connect() for _ in range(3)]
    for i, c in enumerate(subs):
        c.subscribe("/topic/news", f"s{i}")
    pub = clients(broker.port).connect()
    for i in range(5):
        pub.send("/topic/news", f"m{i}".encode(), **{"x-custom": "v"})
    for c in subs:
        wait_for(lambda c=c: len(c.listener.messages) == 5)
        assert c.listener.bodies() == [f"m{i}".encode() for i in range(5)]
        h = c.listener.messages[0].headers
        assert h["destination"] == "/topic/news"
        assert h["message-id"]
        assert h["subscription"].startswith("s")
        assert h["x-custom"] == "v"
        assert h["content-length"] == "2"
        assert "ack" not in h
    stats = broker.stats()
    assert stats["messages_in"] >= 5
    assert stats["messages_out"] >= 15
    assert stats["subscriptions"] == 3


def test_topic_no_retention(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    pub = clients(broker.port).connect()
    pub.send("/topic/t", b"before")
    pub.sync()
    sub = clients(broker.port).connect()
    sub.subscribe("/topic/t", "1")
    pub.send("/topic/t", b"after")
    wait_for(lambda: sub.listener.bodies() == [b"after"])
    time.sleep(0.1)
    assert sub.listener.bodies() == [b"after"]


def test_queue_delivers_to_exactly_one(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    a = clients(broker.port).connect()
    b = clients(broker.port).connect()
    a.subscribe("/queue/work", "a")
    b.subscribe("/queue/work", "b")
    pub = clients(broker.port).connect()
    n = 40
    for i in range(n):
        pub.send("/queue/work", f"job{i}".encode())
    wait_for(lambda: len(a.listener.messages) + len(b.listener.messages) == n)
    time.sleep(0.1)
    got_a, got_b = a.listener.bodies(), b.listener.bodies()
    assert len(got_a) + len(got_b) == n
    assert sorted(got_a + got_b) == sorted(f"job{i}".encode() for i in range(n))
    assert not set(got_a) & set(got_b)
    assert abs(len(got_a) - len(got_b)) <= 2  # round-robin


def test_queue_keeps_messages_for_later_subscriber(broker: EmbeddedBroker,
                                                   clients: Callable[..., Client]) -> None:
    pub = clients(broker.port).connect()
    for i in range(10):
        pub.send("/queue/later", f"q{i}".encode())
    pub.sync()
    assert broker.stats()["queued_messages"] == 10
    sub = clients(broker.port).connect()
    sub.subscribe("/queue/later", "1")
    wait_for(lambda: len(sub.listener.messages) == 10)
    assert sub.listener.bodies() == [f"q{i}".encode() for i in range(10)]
    assert broker.stats()["queued_messages"] == 0


def test_queue_overflow_drops_oldest() -> None:
    b = EmbeddedBroker(HOST, 0, limits=BrokerLimits(max_queue_messages=5)).start()
    try:
        pub = Client(b.port).connect()
        for i in range(8):
            pub.send("/queue/small", f"{i}".encode())
        pub.sync()
        assert b.stats()["dropped_queue_overflow"] == 3
        sub = Client(b.port).connect()
        sub.subscribe("/queue/small", "1")
        wait_for(lambda: len(sub.listener.messages) == 5)
        assert sub.listener.bodies() == [b"3", b"4", b"5", b"6", b"7"]
        pub.close()
        sub.close()
    finally:
        b.stop()


def test_expired_queue_message_not_delivered(broker: EmbeddedBroker,
                                             clients: Callable[..., Client]) -> None:
    pub = clients(broker.port).connect()
    now_ms = int(time.time() * 1000)
    pub.send("/queue/exp", b"already-expired", expires=str(now_ms - 1000))
    pub.send("/queue/exp", b"expires-soon", expires=str(now_ms + 150))
    pub.send("/queue/exp", b"never", expires="0")
    pub.send("/queue/exp", b"later", expires=str(now_ms + 60_000))
    pub.sync()
    time.sleep(0.3)
    sub = clients(broker.port).connect()
    sub.subscribe("/queue/exp", "1")
    wait_for(lambda: len(sub.listener.messages) == 2)
    time.sleep(0.1)
    assert sub.listener.bodies() == [b"never", b"later"]
    assert sub.listener.messages[1].headers["expires"] == str(now_ms + 60_000)
    assert broker.stats()["expired"] == 2


def test_expired_topic_message_not_delivered(broker: EmbeddedBroker,
                                             clients: Callable[..., Client]) -> None:
    sub = clients(broker.port).connect()
    sub.subscribe("/topic/exp", "1")
    pub = clients(broker.port).connect()
    pub.send("/topic/exp", b"old", expires=str(int(time.time() * 1000) - 1))
    pub.send("/topic/exp", b"fresh")
    wait_for(lambda: sub.listener.bodies() == [b"fresh"])


def test_receipts(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    c = clients(broker.port).connect()
    c.conn.subscribe("/topic/r", id="1", headers={"receipt": "r-sub"})
    c.conn.send("/topic/r", b"x", headers={"receipt": "r-send"})
    c.conn.unsubscribe(id="1", headers={"receipt": "r-unsub"})
    c.conn.begin(transaction="t1", headers={"receipt": "r-begin"})
    c.conn.abort(transaction="t1", headers={"receipt": "r-abort"})
    wait_for(lambda: len(c.listener.receipts) == 5)
    assert c.listener.receipts == ["r-sub", "r-send", "r-unsub", "r-begin", "r-abort"]


def test_disconnect_with_receipt_stomppy(broker: EmbeddedBroker) -> None:
    c = Client(broker.port).connect()
    c.conn.disconnect(receipt="bye-1")  # stomp.py waits for this receipt
    assert "bye-1" in c.listener.receipts
    wait_for(lambda: broker.stats()["connections"] == 0)


def test_disconnect_with_receipt_raw(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"DISCONNECT\nreceipt:77\n\n\x00")
    frames = raw.read_until_closed()
    assert [(f.command, f.headers) for f in frames] == [("RECEIPT", {"receipt-id": "77"})]


def test_binary_body_with_nul(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    sub = clients(broker.port).connect()
    sub.subscribe("/queue/bin", "1")
    pub = clients(broker.port).connect()
    body = bytes(range(256)) * 4 + b"\x00\x00end\x00"
    pub.send("/queue/bin", body)
    wait_for(lambda: len(sub.listener.messages) == 1)
    assert sub.listener.messages[0].body == body
    assert sub.listener.messages[0].headers["content-length"] == str(len(body))


def test_binary_body_raw(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"SUBSCRIBE\nid:0\ndestination:/topic/b\nreceipt:s\n\n\x00")
    assert raw.read().command == "RECEIPT"
    body = b"\x00a\x00\nb\x00"
    raw.send(b"SEND\ndestination:/topic/b\ncontent-length:%d\n\n" % len(body) + body + b"\x00")
    msg = raw.read()
    assert msg.command == "MESSAGE" and msg.body == body


def test_header_escaping_roundtrip(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    sub = clients(broker.port).connect()
    sub.subscribe("/topic/esc", "1")
    pub = clients(broker.port).connect()
    value = "a:b\nc\\d e:"
    pub.send("/topic/esc", b"x", **{"x-tricky": value})
    wait_for(lambda: len(sub.listener.messages) == 1)
    assert sub.listener.messages[0].headers["x-tricky"] == value
    # raw: escaped names, \r and a destination needing escapes round trip exactly
    raw = Raw(broker.port)
    raw.connect()
    dest = "/queue/odd:name\\x"
    raw.send(encode_frame("SUBSCRIBE", {"id": "s:1", "destination": dest, "receipt": "ok"}))
    assert raw.read().command == "RECEIPT"
    raw.send(encode_frame("SEND", {"destination": dest, "k:ey": "v\r\n\\:"}, b"y"))
    msg = raw.read()
    assert msg.headers["destination"] == dest
    assert msg.headers["subscription"] == "s:1"
    assert msg.headers["k:ey"] == "v\r\n\\:"


def test_transport_headers_not_copied(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"SUBSCRIBE\nid:1\ndestination:/queue/h\nack:client-individual\n\n\x00")
    raw.send(b"BEGIN\ntransaction:tx\n\n\x00")
    raw.send(b"SEND\ndestination:/queue/h\ntransaction:tx\nreceipt:r1\nreply-to:/queue/r\n"
             b"content-type:text/plain\n\nhello\x00")
    assert raw.read().headers == {"receipt-id": "r1"}
    raw.send(b"COMMIT\ntransaction:tx\n\n\x00")
    msg = raw.read()
    assert msg.command == "MESSAGE"
    assert "transaction" not in msg.headers and "receipt" not in msg.headers
    assert msg.headers["reply-to"] == "/queue/r"
    assert msg.headers["content-type"] == "text/plain"
    assert msg.headers["ack"] and msg.headers["subscription"] == "1"


def test_transactions(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    sub = clients(broker.port).connect()
    sub.subscribe("/topic/tx", "1")
    pub = clients(broker.port).connect()
    pub.conn.begin("t1")
    pub.conn.send("/topic/tx", b"in-tx-1", transaction="t1")
    pub.conn.send("/topic/tx", b"in-tx-2", transaction="t1")
    pub.conn.begin("t2")
    pub.conn.send("/topic/tx", b"aborted", transaction="t2")
    pub.sync()
    time.sleep(0.05)
    assert sub.listener.bodies() == []
    pub.conn.abort("t2")
    pub.conn.commit("t1")
    wait_for(lambda: len(sub.listener.messages) == 2)
    pub.sync()
    time.sleep(0.05)
    assert sub.listener.bodies() == [b"in-tx-1", b"in-tx-2"]


def test_client_ack_requeue_on_disconnect(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    pub = clients(broker.port).connect()
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"SUBSCRIBE\nid:1\ndestination:/queue/acked\nack:client-individual\nreceipt:s\n\n\x00")
    assert raw.read().command == "RECEIPT"
    for i in range(3):
        pub.send("/queue/acked", f"m{i}".encode())
    msgs = [raw.read() for _ in range(3)]
    raw.send(encode_frame("ACK", {"id": msgs[0].headers["ack"]}))
    raw.send(encode_frame("NACK", {"id": msgs[1].headers["ack"], "receipt": "n"}))
    assert raw.read().command == "RECEIPT"
    raw.close()  # m2 was never acknowledged: it goes back to the queue
    wait_for(lambda: broker.stats()["queued_messages"] == 1)
    sub = clients(broker.port).connect()
    sub.subscribe("/queue/acked", "x")
    wait_for(lambda: sub.listener.bodies() == [b"m2"])
    assert broker.stats()["nacked"] == 1


def test_unacked_limit_holds_queue_messages(clients: Callable[..., Client]) -> None:
    b = EmbeddedBroker(HOST, 0, limits=BrokerLimits(max_unacked_frames=3)).start()
    try:
        raw = Raw(b.port)
        raw.connect()
        raw.send(b"SUBSCRIBE\nid:1\ndestination:/queue/pf\nack:client\nreceipt:s\n\n\x00")
        assert raw.read().command == "RECEIPT"
        pub = clients(b.port).connect()
        for i in range(5):
            pub.send("/queue/pf", f"m{i}".encode())
        pub.sync()
        msgs = [raw.read() for _ in range(3)]
        with pytest.raises(TimeoutError):
            raw.read(timeout=0.2)
        assert b.stats()["queued_messages"] == 2
        raw.send(encode_frame("ACK", {"id": msgs[1].headers["ack"]}))  # cumulative: m0, m1
        rest = [raw.read(), raw.read()]
        assert [m.body for m in msgs + rest] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert b.stats()["queued_messages"] == 0
    finally:
        b.stop()


def test_transaction_limits(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"COMMIT\ntransaction:nope\n\n\x00")
    assert raw.read().headers["message"] == "unknown transaction"
    raw.send(b"SEND\ndestination:/topic/a\ntransaction:nope\n\nx\x00")
    assert raw.read().headers["message"] == "unknown transaction"
    raw.send(b"BEGIN\ntransaction:t\n\n\x00BEGIN\ntransaction:t\n\n\x00")
    assert raw.read().headers["message"] == "transaction already started"


def test_unknown_destination_keeps_connection(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"SEND\ndestination:/exchange/foo\nreceipt:r\n\nx\x00")
    err = raw.read()
    assert err.command == "ERROR"
    assert "/exchange/foo" in err.body.decode()
    assert "destination" in err.headers["message"]
    assert err.headers["receipt-id"] == "r"
    raw.send(b"SUBSCRIBE\nid:1\ndestination:/bogus/x\n\n\x00")
    assert raw.read().command == "ERROR"
    raw.send(b"SUBSCRIBE\nid:1\ndestination:/topic/ok\nreceipt:r2\n\n\x00")
    assert raw.read().headers == {"receipt-id": "r2"}


# -- heart-beats -------------------------------------------------------------------------


@pytest.fixture
def hb_broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(HOST, 0, limits=BrokerLimits(heartbeat_send_ms=50, heartbeat_recv_ms=50,
                                                    linger_seconds=0.5))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_heartbeat_negotiation_and_server_beats(hb_broker: EmbeddedBroker) -> None:
    raw = Raw(hb_broker.port)
    connected = raw.connect(**{"heart-beat": "0,100"})  # we send none, want one every 100 ms
    assert connected.headers["heart-beat"] == "50,50"
    deadline = time.monotonic() + 0.55
    while time.monotonic() < deadline:
        try:
            raw.sock.settimeout(0.05)
            raw._recv()
        except TimeoutError:
            pass
    assert 3 <= raw.heartbeats <= 12
    assert not raw.closed  # cx=0: the broker expects no heart-beats from us


def test_close_on_missed_client_heartbeats(hb_broker: EmbeddedBroker) -> None:
    raw = Raw(hb_broker.port)
    raw.connect(**{"heart-beat": "100,0"})  # promise a beat every 100 ms, then go silent
    start = time.monotonic()
    frames = raw.read_until_closed(timeout=3)
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.0
    assert frames and frames[-1].command == "ERROR"
    assert "heart-beat" in frames[-1].headers["message"]
    assert hb_broker.stats()["heartbeat_timeouts"] == 1


def test_client_heartbeats_keep_connection(hb_broker: EmbeddedBroker) -> None:
    raw = Raw(hb_broker.port)
    raw.connect(**{"heart-beat": "100,0"})
    for _ in range(8):
        time.sleep(0.08)
        raw.send(b"\n")
    raw.send(b"SUBSCRIBE\nid:1\ndestination:/topic/x\nreceipt:alive\n\n\x00")
    assert raw.read().headers == {"receipt-id": "alive"}


def test_stomppy_heartbeats(hb_broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    c = clients(hb_broker.port, heartbeats=(100, 100)).connect()
    c.subscribe("/topic/hb", "1")
    time.sleep(0.8)
    assert c.conn.is_connected()
    assert c.listener.heartbeats >= 3
    c.send("/topic/hb", b"still-here")
    wait_for(lambda: c.listener.bodies() == [b"still-here"])
    assert hb_broker.stats()["heartbeat_timeouts"] == 0


# -- malformed input ---------------------------------------------------------------------

MiB = 1024 * 1024
MALFORMED = {
    "unknown-command": (b"FROB\n\n\x00", "unknown command"),
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unknown command"),
    "header-without-colon": (b"SEND\ndestination /queue/a\n\nx\x00", "header without colon"),
    "non-utf8-header": (b"SEND\ndestination:/queue/\xc3\x28\n\nx\x00", "non-UTF-8 header"),
    "content-length-too-large": (b"SEND\ndestination:/queue/a\ncontent-length:5000000\n\n",
                                 "content-length exceeds"),
    "content-length-no-nul": (b"SEND\ndestination:/queue/a\ncontent-length:2\n\nabc\x00",
                              "content-length does not match"),
    "content-length-longer-than-body": (
        b"SEND\ndestination:/queue/a\ncontent-length:10\n\nabc\x00SEND\ndestination:/queue/a\n\nz\x00",
        "content-length does not match"),
    "bad-content-length": (b"SEND\ndestination:/queue/a\ncontent-length:1e3\n\nabc\x00",
                           "invalid content-length"),
    "too-many-headers": (b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(100_000)) + b"\nx\x00",
                         "too many headers"),
    "header-line-too-long": (b"SEND\nx:" + b"a" * 20_000 + b"\n\n\x00", "header line too long"),
    "command-too-long": (b"S" * 100 + b"\n\n\x00", "frame command too long"),
    "bad-escape": (b"SEND\ndestination:/queue/a\\t\n\nx\x00", "invalid escape"),
    "oversize-body-no-content-length": (b"SEND\ndestination:/queue/a\n\n" + b"x" * (2 * MiB) + b"\x00",
                                        "body exceeds maximum size"),
    "oversize-body-content-length": (
        b"SEND\ndestination:/queue/a\ncontent-length:%d\n\n" % (2 * MiB) + b"x" * (2 * MiB) + b"\x00",
        "content-length exceeds"),
    "server-command": (b"MESSAGE\n\n\x00", "unknown command"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frame_closes_only_that_connection(
        case: str, broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    data, reason = MALFORMED[case]
    a = clients(broker.port).connect()
    b = clients(broker.port).connect()
    assert_healthy(a, b)
    errors_before = broker.stats()["errors"]
    raw = Raw(broker.port)
    raw.connect()
    try:
        raw.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the broker may have closed while we were still writing
    frames = raw.read_until_closed()
    errors = [f for f in frames if f.command == "ERROR"]
    assert len(errors) == 1, frames
    assert reason in errors[0].headers["message"]
    assert broker.stats()["errors"] == errors_before + 1
    # everybody else keeps working
    assert_healthy(a, b)
    c = clients(broker.port).connect()
    assert_healthy(c, b)


@pytest.mark.parametrize("data", [
    b"SEND\ndestination:/queue/a\n\nx\x00",
    b"SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\x00",
    b"\n\n\x00",
])
def test_frames_before_connect_rejected(broker: EmbeddedBroker, data: bytes) -> None:
    raw = Raw(broker.port)
    raw.send(data)
    frames = raw.read_until_closed()
    assert frames and frames[0].command == "ERROR"


def test_malformed_frame_after_valid_ones_in_same_packet(broker: EmbeddedBroker) -> None:
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:first\n\n\x00BAD\n\n\x00")
    frames = raw.read_until_closed()
    assert [f.command for f in frames] == ["RECEIPT", "ERROR"]


def test_connect_timeout() -> None:
    b = EmbeddedBroker(HOST, 0, limits=BrokerLimits(connect_timeout=0.2)).start()
    try:
        raw = Raw(b.port)
        frames = raw.read_until_closed(timeout=3)
        assert frames[0].headers["message"] == "no CONNECT frame"
    finally:
        b.stop()


# -- slow consumers ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_slow_topic_consumer_bounded_and_counted(clients: Callable[..., Client]) -> None:
    limits = BrokerLimits(max_outbound_frames=500, max_outbound_bytes=2 * MiB)
    b = EmbeddedBroker(HOST, 0, limits=limits).start()
    try:
        slow = Raw(b.port, rcvbuf=4096)
        slow.connect()
        slow.send(b"SUBSCRIBE\nid:1\ndestination:/topic/firehose\nreceipt:s\n\n\x00")
        assert slow.read().command == "RECEIPT"
        # from now on `slow` never reads again
        healthy = clients(b.port).connect()
        healthy.subscribe("/topic/firehose", "h")
        pub = clients(b.port).connect()
        payload = b"p" * 4096
        n = 4000
        peak = 0
        for i in range(n):
            pub.send("/topic/firehose", payload + str(i).encode())
            if i % 200 == 199:
                wait_for(lambda i=i: len(healthy.listener.messages) >= i - 300, timeout=10)
                st = b.stats()
                peak = max(peak, st["max_outbound_queued_frames"])
                assert st["max_outbound_queued_frames"] <= limits.max_outbound_frames
                assert st["max_outbound_queued_bytes"] <= limits.max_outbound_bytes
        wait_for(lambda: len(healthy.listener.messages) == n, timeout=15)
        stats = b.stats()
        assert stats["dropped_slow_consumer"] > 0
        assert stats["max_outbound_queued_frames"] <= limits.max_outbound_frames
        assert peak > 0
        # messages arrive in order and complete at the healthy subscriber
        assert healthy.listener.bodies()[-1] == payload + str(n - 1).encode()
        slow.close()
    finally:
        b.stop()


@pytest.mark.timeout(60)
def test_slow_queue_consumer_does_not_starve_queue(clients: Callable[..., Client]) -> None:
    b = EmbeddedBroker(HOST, 0).start()
    try:
        slow = Raw(b.port, rcvbuf=4096)
        slow.connect()
        slow.send(b"SUBSCRIBE\nid:1\ndestination:/queue/jobs\nreceipt:s\n\n\x00")
        assert slow.read().command == "RECEIPT"
        healthy = clients(b.port).connect()
        healthy.subscribe("/queue/jobs", "h")
        pub = clients(b.port).connect()
        payload = b"q" * 4096
        n = 3000
        for _ in range(n):
            pub.send("/queue/jobs", payload)
        pub.sync()
        # the stalled subscriber takes only what fits in its buffers; the rest goes to the
        # healthy one, nothing is dropped and nothing is left behind
        wait_for(lambda: len(healthy.listener.messages) > n // 2, timeout=15)
        stats = b.stats()
        assert stats["dropped_slow_consumer"] == 0
        wait_for(lambda: b.stats()["queued_messages"] == 0)
        assert stats["max_outbound_queued_bytes"] <= 2 * BrokerLimits().write_high_water
        slow.close()
    finally:
        b.stop()


def test_sigstopped_consumer_process_bounded(tmp_path: Path, clients: Callable[..., Client]) -> None:
    """A real stomp.py subscriber process frozen with SIGSTOP."""
    limits = BrokerLimits(max_outbound_frames=300, max_outbound_bytes=1 * MiB)
    b = EmbeddedBroker(HOST, 0, limits=limits).start()
    script = tmp_path / "sub.py"
    script.write_text(
        "import sys, time, stomp\n"
        "c = stomp.Connection12([('127.0.0.1', int(sys.argv[1]))], auto_decode=False)\n"
        "c.connect(wait=True)\n"
        "c.subscribe('/topic/big', id='1', headers={'receipt': 'r'})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, str(script), str(b.port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        wait_for(lambda: b.stats()["subscriptions"] == 1)
        os.kill(proc.pid, signal.SIGSTOP)
        healthy = clients(b.port).connect()
        healthy.subscribe("/topic/big", "h")
        pub = clients(b.port).connect()
        payload = b"z" * 16384
        n = 1500
        for i in range(n):
            pub.send("/topic/big", payload)
            if i % 100 == 99:
                wait_for(lambda i=i: len(healthy.listener.messages) >= i - 150, timeout=10)
        wait_for(lambda: len(healthy.listener.messages) == n, timeout=15)
        stats = b.stats()
        assert stats["dropped_slow_consumer"] > 0
        assert stats["max_outbound_queued_bytes"] <= limits.max_outbound_bytes
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        b.stop()


# -- lifecycle, auth, TLS ------------------------------------------------------------------


def test_stop_start_same_port_and_stomppy_reconnects(clients: Callable[..., Client]) -> None:
    b = EmbeddedBroker(HOST, 0).start()
    port = b.port
    try:
        c = clients(port).connect()
        c.subscribe("/topic/r", "1")
        b.stop()
        assert c.listener.disconnected.wait(5)
        wait_for(lambda: not c.conn.is_connected())
        b.start()
        assert b.port == port
        c.connect()
        c.subscribe("/topic/r", "1")
        c.send("/topic/r", b"after-restart")
        wait_for(lambda: c.listener.bodies() == [b"after-restart"])
        assert b.stats()["connections"] == 1
    finally:
        b.stop()
    b.stop()  # idempotent


STATS_KEYS = ("connections", "frames_in", "messages_in", "messages_out",
              "dropped_slow_consumer", "errors", "subscriptions")


def test_stats_before_start_and_after_stop() -> None:
    b = EmbeddedBroker(HOST, 0)
    assert all(b.stats()[k] == 0 for k in STATS_KEYS)
    b.start()
    try:
        c = Client(b.port).connect()
        c.subscribe("/topic/s", "1")
        c.send("/topic/s", b"x")
        wait_for(lambda: len(c.listener.messages) == 1)
        stats = b.stats()
        assert all(isinstance(stats[k], int) for k in STATS_KEYS)
        assert stats["connections"] == 1 and stats["subscriptions"] == 1
        assert stats["messages_in"] == 1 and stats["messages_out"] == 1
    finally:
        b.stop()
    after = b.stats()
    assert after["messages_in"] == 1 and after["connections"] == 0
    assert after["subscriptions"] == 0


def test_unsubscribe_stops_delivery(broker: EmbeddedBroker, clients: Callable[..., Client]) -> None:
    c = clients(broker.port).connect()
    c.subscribe("/topic/u", "1")
    c.subscribe("/queue/u", "2")
    c.conn.unsubscribe(id="1")
    c.conn.unsubscribe(id="2")
    c.send("/topic/u", b"t")
    c.send("/queue/u", b"q")
    c.sync()
    time.sleep(0.05)
    assert c.listener.bodies() == []
    assert broker.stats()["subscriptions"] == 0
    assert broker.stats()["queued_messages"] == 1


def test_max_connections() -> None:
    b = EmbeddedBroker(HOST, 0, limits=BrokerLimits(max_connections=2)).start()
    try:
        keep = [Raw(b.port), Raw(b.port)]
        for r in keep:
            r.connect()
        extra = Raw(b.port)
        frames = extra.read_until_closed()
        assert frames[0].headers["message"] == "too many connections"
        assert b.stats()["rejected_connections"] == 1
        keep[0].send(b"SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:r\n\n\x00")
        assert keep[0].read().command == "RECEIPT"
    finally:
        b.stop()


def test_non_loopback_refused_without_users() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        EmbeddedBroker("0.0.0.0", 0)
    with pytest.raises(ValueError, match="non-loopback"):
        EmbeddedBroker("10.1.2.3", 0)
    EmbeddedBroker("0.0.0.0", 0, users={"a": "b"})  # allowed (not started)
    EmbeddedBroker("::1", 0)
    EmbeddedBroker("localhost", 0)


def test_login_required_when_users_set(clients: Callable[..., Client]) -> None:
    b = EmbeddedBroker(HOST, 0, users={"alice": "s3cret"}).start()
    try:
        for hdrs in ({}, {"login": "alice", "passcode": "wrong"}, {"login": "bob", "passcode": "s3cret"}):
            raw = Raw(b.port)
            raw.send(encode_frame("CONNECT", {"accept-version": "1.2", **hdrs}))
            frames = raw.read_until_closed()
            assert [f.command for f in frames] == ["ERROR"]
            assert frames[0].headers["message"] == "authentication failed"
        c = clients(b.port, login="alice", passcode="s3cret").connect()
        c.subscribe("/topic/auth", "1")
        c.send("/topic/auth", b"hello")
        wait_for(lambda: c.listener.bodies() == [b"hello"])
    finally:
        b.stop()


def _make_tls(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collective test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path = tmp_path / "server.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = tmp_path / "server.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx, str(ca_path)


def test_tls(tmp_path: Path, clients: Callable[..., Client]) -> None:
    ctx, ca = _make_tls(tmp_path)
    b = EmbeddedBroker(HOST, 0, ssl_context=ctx).start()
    try:
        sub = clients(b.port, ssl_ca=ca).connect()
        sub.subscribe("/queue/tls", "1")
        pub = clients(b.port, ssl_ca=ca).connect()
        body = b"secret\x00payload" * 100
        pub.send("/queue/tls", body)
        wait_for(lambda: sub.listener.bodies() == [body])
        # a malformed frame over TLS still gets its ERROR and only that connection closes
        raw_sock = socket.create_connection((HOST, b.port), timeout=5)
        client_ctx = ssl.create_default_context(cafile=ca)
        tls = client_ctx.wrap_socket(raw_sock, server_hostname="127.0.0.1")
        tls.sendall(b"CONNECT\naccept-version:1.2\n\n\x00BOGUS\n\n\x00")
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
        tls.close()
        assert b"CONNECTED" in data and b"ERROR" in data and b"unknown command" in data
        pub.send("/queue/tls", b"still fine")
        wait_for(lambda: sub.listener.bodies()[-1:] == [b"still fine"])
    finally:
        b.stop()


def test_many_clients_burst(clients: Callable[..., Client]) -> None:
    """20 subscribers x 3 topics, a burst of 1000 messages, everyone gets everything."""
    b = EmbeddedBroker(HOST, 0).start()
    try:
        subs = []
        for i in range(20):
            c = clients(b.port).connect()
            for t in range(3):
                c.subscribe(f"/topic/t{t}", f"{i}-{t}", sync=(t == 2))
            c.subscribe(f"/queue/node{i}", f"q{i}")
            subs.append(c)
        pub = clients(b.port).connect()
        start = time.monotonic()
        for k in range(1000):
            pub.send(f"/topic/t{k % 3}", b"m%d" % k)
        for i in range(20):
            pub.send(f"/queue/node{i}", b"direct")
        for c in subs:
            wait_for(lambda c=c: len(c.listener.messages) == 1001, timeout=20)
        elapsed = time.monotonic() - start
        assert b.stats()["messages_out"] >= 20 * 1001
        assert b.stats()["dropped_slow_consumer"] == 0
        assert elapsed < 20
    finally:
        b.stop()


def test_run_broker_sigterm_and_pidfile(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    pidfile = tmp_path / "broker.pid"
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO);"
            "from collective.broker import run_broker;"
            f"run_broker('127.0.0.1', {port}, pidfile={str(pidfile)!r}, users={{'a': 'b'}})")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        wait_for(pidfile.exists, timeout=10)
        assert int(pidfile.read_text()) == proc.pid
        c = Client(port, login="a", passcode="b").connect()
        c.subscribe("/topic/x", "1")
        c.send("/topic/x", b"served")
        wait_for(lambda: c.listener.bodies() == [b"served"])
        c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_internal_error_does_not_kill_server(broker: EmbeddedBroker, clients: Callable[..., Client],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from collective.broker import server as server_mod

    a = clients(broker.port).connect()
    b = clients(broker.port).connect()
    assert_healthy(a, b)

    original = server_mod._Connection._on_begin

    def boom(self: Any, frame: Frame) -> None:
        if frame.headers.get("transaction") == "boom":
            raise RuntimeError("injected")
        original(self, frame)

    monkeypatch.setitem(server_mod._Connection._handlers, "BEGIN", boom)
    raw = Raw(broker.port)
    raw.connect()
    raw.send(b"BEGIN\ntransaction:boom\n\n\x00")
    frames = raw.read_until_closed()
    assert frames[0].headers["message"] == "internal error"
    assert broker.stats()["internal_errors"] == 1
    assert_healthy(a, b)
