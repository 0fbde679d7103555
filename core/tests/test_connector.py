"""The STOMP connector against real brokers: a private RabbitMQ node and the embedded broker.

No mocks. RabbitMQ tests share one private node (module fixture, ~5 s to start); when
RabbitMQ is not installed they are skipped, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from collective.config import Config
from collective.connectors import (
    ConnectorConfigError,
    ConnectorError,
    Destination,
    StompConnector,
    create_connector,
)
from collective.connectors.destinations import stomp_send, stomp_subscribe
from collective.testing.activemq import ActiveMQServer, activemq_available
from collective.testing.rabbitmq import RabbitMQServer, free_port, rabbitmq_available

COLL = "mcollective"


class Inbox:
    """Collects message bodies delivered on the receiver thread."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._cond = threading.Condition()

    def __call__(self, body: bytes) -> None:
        with self._cond:
            self.bodies.append(body)
            self._cond.notify_all()

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.bodies) >= count, timeout)
            return list(self.bodies)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def broker_config(**broker: Any) -> Config:
    base = {"heartbeat_ms": 2000, "connect_timeout": 3.0, "publish_timeout": 3.0,
            "reconnect_max": 2.0}
    return Config({"broker": {**base, **broker}}, env={})


@pytest.fixture
def connectors() -> Iterator[Callable[..., StompConnector]]:
    """Factory ``make(client_id, **broker_keys)``; every connector is disconnected after the test."""
    made: list[StompConnector] = []

    def make(client_id: str, **broker: Any) -> StompConnector:
        conn = StompConnector(broker_config(**broker), client_id)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.disconnect()


# -- RabbitMQ ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rmq() -> Iterator[RabbitMQServer]:
    reason = rabbitmq_available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but RabbitMQ is not usable: {reason}", pytrace=False)
        pytest.skip(f"RabbitMQ not available: {reason}")
    import psutil

    with RabbitMQServer() as server:
        started = [psutil.Process(pid) for pid in server.pids]
        started += [child for proc in started for child in proc.children(recursive=True)]
        assert any("beam" in proc.name() for proc in started)
        yield server
    # stop() leaves nothing behind: no beam, no private epmd, no base dir
    gone, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"left running after stop(): {alive}"
    assert server.base_dir is not None and not server.base_dir.exists()


@pytest.fixture
def rmq_make(rmq: RabbitMQServer,
             connectors: Callable[..., StompConnector]) -> Callable[..., StompConnector]:
    def make(client_id: str, connect: bool = True, **broker: Any) -> StompConnector:
        conn = connectors(client_id, **{**rmq.broker_config(), **broker})
        if connect:
            conn.connect(timeout=5)
        return conn

    return make





@pytest.mark.rabbitmq
def test_rmq_broadcast_reaches_every_subscriber(rmq_make: Callable[..., StompConnector]) -> None:
    nodes = [rmq_make(f"node{i}") for i in (1, 2)]
    inboxes = [Inbox(), Inbox()]
    for node, inbox in zip(nodes, inboxes, strict=True):
        node.subscribe(Destination.broadcast(COLL, "rpcutil"), inbox)
    client = rmq_make("client")
    client.publish(Destination.broadcast(COLL, "rpcutil"), b"\x00ping\xff", ttl=30)
    for inbox in inboxes:
        assert inbox.wait_for(1) == [b"\x00ping\xff"]  # bodies are bytes, binary-safe
    # another agent's broadcast does not reach rpcutil subscribers
    client.publish(Destination.broadcast(COLL, "package"), b"other")
    time.sleep(0.2)
    assert all(len(i.bodies) == 1 for i in inboxes)
    assert client.stats["published"] == 2 and nodes[0].stats["received"] == 1


@pytest.mark.rabbitmq
def test_rmq_directed_goes_to_its_node_only(rmq: RabbitMQServer,
                                           rmq_make: Callable[..., StompConnector]) -> None:
    n1, n2 = rmq_make("dnode1"), rmq_make("dnode2")
    in1, in2 = Inbox(), Inbox()
    n1.subscribe(Destination.directed(COLL, "dnode1"), in1)
    n2.subscribe(Destination.directed(COLL, "dnode2"), in2)
    client = rmq_make("dclient")
    client.publish(Destination.directed(COLL, "dnode1"), b"for-1", ttl=30)
    client.publish(Destination.directed(COLL, "dnode2"), b"for-2", ttl=30)
    # a node nobody runs: silently dropped, no queue created
    client.publish(Destination.directed(COLL, "ghost"), b"nobody")
    assert in1.wait_for(1) == [b"for-1"]
    assert in2.wait_for(1) == [b"for-2"]
    assert f"{COLL}.node.ghost" not in rmq_queues(rmq)


def rmq_queues(server: RabbitMQServer) -> dict[str, list[str]]:
    """name -> [durable, auto_delete, arguments, messages] for the test vhost."""
    out = server.rabbitmqctl("list_queues", "-q", "-p", server.vhost, "name", "durable",
                             "auto_delete", "arguments", "messages").stdout
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    return {row[0]: row[1:] for row in rows if row[0] != "name"}


@pytest.mark.rabbitmq
def test_rmq_node_queue_holds_messages_while_node_is_away(
        rmq: RabbitMQServer, rmq_make: Callable[..., StompConnector]) -> None:
    dest = Destination.directed(COLL, "flaky")
    first, inbox1 = rmq_make("flaky"), Inbox()
    first.subscribe(dest, inbox1)
    queues = rmq_queues(rmq)
    durable, auto_delete, arguments, _ = queues[f"{COLL}.node.flaky"]
    assert (durable, auto_delete) == ("true", "false")
    assert "x-expires" in arguments and "x-max-length" in arguments and "x-message-ttl" in arguments
    first.disconnect()  # the node goes away briefly; its queue stays (x-expires)

    client = rmq_make("flaky-client")
    client.publish(dest, b"while-away", ttl=60)
    assert rmq_queues(rmq)[f"{COLL}.node.flaky"][3] == "1"

    again, inbox2 = rmq_make("flaky"), Inbox()
    again.subscribe(dest, inbox2)  # same arguments: no PRECONDITION_FAILED
    assert inbox2.wait_for(1) == [b"while-away"]
    assert inbox1.bodies == []


@pytest.mark.rabbitmq
def test_rmq_reply_queue(rmq_make: Callable[..., StompConnector]) -> None:
    client, node = rmq_make("rclient"), rmq_make("rnode")
    inbox = Inbox()
    reply = Destination.reply(COLL, "rclient-1f2e")
    client.subscribe(reply, inbox)
    node.publish(reply, b"reply-1")
    node.publish(reply, b"reply-2")
    assert inbox.wait_for(2) == [b"reply-1", b"reply-2"]
    client.unsubscribe(reply)
    node.publish(reply, b"reply-3")
    time.sleep(0.3)
    assert len(inbox.bodies) == 2


@pytest.mark.rabbitmq
def test_rmq_wrong_password_is_reported(rmq_make: Callable[..., StompConnector]) -> None:
    conn = rmq_make("intruder", connect=False, password="not-the-password")
    t0 = time.monotonic()
    with pytest.raises(ConnectorError) as err:
        conn.connect(timeout=2)
    assert time.monotonic() - t0 < 1  # a refused login fails at once, not at the timeout
    assert "access refused" in str(err.value).lower() or "login" in str(err.value).lower()


@pytest.mark.rabbitmq
def test_rmq_reconnects_and_resubscribes_after_connections_are_cut(
        rmq: RabbitMQServer, rmq_make: Callable[..., StompConnector]) -> None:
    node, client = rmq_make("cutnode"), rmq_make("cutclient")
    bcast, direct, reply = Inbox(), Inbox(), Inbox()
    node.subscribe(Destination.broadcast(COLL, "cutagent"), bcast)
    node.subscribe(Destination.directed(COLL, "cutnode"), direct)
    client.subscribe(Destination.reply(COLL, "cutclient"), reply)

    t0 = time.monotonic()
    rmq.rabbitmqctl("close_all_connections", "-p", rmq.vhost, "test")
    wait_until(lambda: node.stats["reconnects"] >= 1 and client.stats["reconnects"] >= 1,
               10, "both connectors to reconnect")
    wait_until(lambda: node.connected and client.connected, 5, "connected")
    elapsed = time.monotonic() - t0
    assert node.stats["disconnects"] >= 1 and node.stats["connects"] >= 2
    assert elapsed < 10

    client.publish(Destination.broadcast(COLL, "cutagent"), b"after-cut-b")
    client.publish(Destination.directed(COLL, "cutnode"), b"after-cut-d")
    node.publish(Destination.reply(COLL, "cutclient"), b"after-cut-r")
    assert bcast.wait_for(1) == [b"after-cut-b"]
    assert direct.wait_for(1) == [b"after-cut-d"]
    assert reply.wait_for(1) == [b"after-cut-r"]


@pytest.mark.rabbitmq
def test_rmq_survives_broker_restart(rmq: RabbitMQServer,
                                     rmq_make: Callable[..., StompConnector]) -> None:
    node, client = rmq_make("rsnode"), rmq_make("rsclient")
    direct = Inbox()
    node.subscribe(Destination.directed(COLL, "rsnode"), direct)
    rmq.rabbitmqctl("stop_app")
    wait_until(lambda: not node.connected, 5, "node to notice the broker is gone")
    with pytest.raises(ConnectorError, match="flow control or unreachable"):
        client.publish(Destination.directed(COLL, "rsnode"), b"lost")
    rmq.rabbitmqctl("start_app")
    wait_until(lambda: node.connected and client.connected, 15, "reconnect after start_app")
    client.publish(Destination.directed(COLL, "rsnode"), b"after-restart")
    assert direct.wait_for(1) == [b"after-restart"]


@pytest.mark.rabbitmq
def test_rmq_flow_control_makes_publish_fail_in_time(
        rmq: RabbitMQServer, rmq_make: Callable[..., StompConnector]) -> None:
    """docs/security.md R9: a memory alarm blocks publishers; publish must fail, not hang."""
    client = rmq_make("fcclient", publish_timeout=1.5)
    node, inbox = rmq_make("fcnode"), Inbox()
    node.subscribe(Destination.directed(COLL, "fcnode"), inbox)
    rmq.rabbitmqctl("set_vm_memory_high_watermark", "0.000001")
    try:
        wait_until(lambda: "memory" in rmq.rabbitmqctl("eval", "rabbit_alarm:get_alarms().").stdout,
                   10, "the memory alarm")
        # RabbitMQ still takes the frame that flips a connection to "blocked"; from
        # then on nothing is read: the next publish must fail within publish_timeout.
        failures: list[float] = []
        for i in range(3):
            t0 = time.monotonic()
            try:
                client.publish(Destination.directed(COLL, "fcnode"), b"blocked-%d" % i)
            except ConnectorError as exc:
                assert "broker is applying flow control or unreachable" in str(exc)
                failures.append(time.monotonic() - t0)
                break
        assert failures, "publish never failed under a memory alarm"
        assert failures[0] < 1.5 + 1
        assert client.stats["publish_failures"] == 1
    finally:
        rmq.rabbitmqctl("set_vm_memory_high_watermark", "0.4")
    # once the alarm clears the same connector publishes again (the held frame arrives too)
    wait_until(lambda: client.connected, 10, "connected")
    client.publish(Destination.directed(COLL, "fcnode"), b"unblocked")
    assert b"unblocked" in inbox.wait_for(3)


class BlackholeProxy:
    """127.0.0.1 TCP proxy; ``blackhole()`` stops forwarding on existing connections
    without closing them (a half-open link, docs/security.md R3). New connections still pass."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[dict[str, Any]] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target_port))
            pair = {"socks": (down, up), "frozen": False}
            self.pairs.append(pair)
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: dict[str, Any]) -> None:
        import select

        while not self.closed:
            if pair["frozen"]:
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = select.select([src], [], [], 0.05)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data or pair["frozen"]:
                    if not data:
                        break
                    continue
                dst.sendall(data)
            except OSError:
                break
        if not pair["frozen"]:
            for sock in pair["socks"]:
                sock.close()

    def blackhole(self) -> None:
        for pair in self.pairs:
            pair["frozen"] = True

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for pair in self.pairs:
            for sock in pair["socks"]:
                sock.close()


@pytest.mark.rabbitmq
def test_rmq_heartbeat_detects_half_open_connection(
        rmq: RabbitMQServer, rmq_make: Callable[..., StompConnector]) -> None:
    proxy = BlackholeProxy(rmq.stomp_port)
    try:
        node = rmq_make("hbnode", port=proxy.port, heartbeat_ms=500)
        inbox = Inbox()
        # acknowledged after the callback (as the daemon subscribes): RabbitMQ may still
        # hand a message to the dead connection's consumer until it notices the silence
        # itself, and gives it to the live one when it does
        node.subscribe(Destination.directed(COLL, "hbnode"), inbox, prefetch=4)
        proxy.blackhole()
        t0 = time.monotonic()
        wait_until(lambda: node.stats["disconnects"] >= 1, 5, "missed heartbeats to be noticed")
        detected = time.monotonic() - t0
        # RabbitMQ beats at >= 1 s here; dead after 2 missed beats, plus stomp.py's grace
        # for the first beat of a fresh connection: well under 5 s (20-40 s at the 10 s default)
        assert detected < 5.0, detected
        # the supervisor reconnects through a fresh (working) proxied connection
        wait_until(lambda: node.connected and node.stats["reconnects"] >= 1, 10, "reconnect")
        rmq_make("hbclient").publish(Destination.directed(COLL, "hbnode"), b"after-hb")
        assert inbox.wait_for(1, timeout=20) == [b"after-hb"]
    finally:
        proxy.close()


# -- failures without a broker ----------------------------------------------------------

def test_connect_timeout_on_closed_port(connectors: Callable[..., StompConnector]) -> None:
    port = free_port()
    conn = connectors("nobody", port=port, connect_timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(ConnectorError) as err:
        conn.connect(timeout=1.0)
    assert time.monotonic() - t0 < 1.0 + 1
    assert f"could not connect to broker 127.0.0.1:{port} within 1s" in str(err.value)
    assert "refused" in str(err.value).lower()
    assert not conn.connected


def test_connect_timeout_when_broker_never_answers(
        connectors: Callable[..., StompConnector]) -> None:
    """A listener that accepts TCP but never sends CONNECTED must not hang connect()."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        conn = connectors("patient", port=port, connect_timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(ConnectorError, match=f"127.0.0.1:{port} within 1.5s"):
            conn.connect(timeout=1.5)
        assert time.monotonic() - t0 < 1.5 + 1


def test_publish_without_connection_fails_in_time(
        connectors: Callable[..., StompConnector]) -> None:
    dest = Destination.directed(COLL, "n1")
    never = connectors("never-started", port=free_port())
    t0 = time.monotonic()
    with pytest.raises(ConnectorError, match="broker is applying flow control or unreachable"):
        never.publish(dest, b"x")
    assert time.monotonic() - t0 < 1

    down = connectors("down", port=free_port(), publish_timeout=1.0)
    down.start()  # the daemon's way: keeps trying in the background
    t0 = time.monotonic()
    with pytest.raises(ConnectorError, match="broker is applying flow control or unreachable"):
        down.publish(dest, b"x", ttl=10)
    assert time.monotonic() - t0 < 1.0 + 1
    assert down.stats["publish_failures"] == 1 and down.stats["published"] == 0


def test_tls_without_ca_file_is_refused() -> None:
    cfg = broker_config(tls={"enabled": True})
    with pytest.raises(ConnectorConfigError, match=r"broker\.tls\.ca_file") as err:
        StompConnector(cfg, "tls")
    assert isinstance(err.value, ValueError) and isinstance(err.value, ConnectorError)


def test_tls_verify_false_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    cfg = broker_config(tls={"enabled": True, "verify": False})
    with caplog.at_level("WARNING", logger="collective.connectors.stomp"):
        StompConnector(cfg, "tls")
    assert "NOT verified" in caplog.text


def test_tls_missing_files_name_the_key(tmp_path: Any) -> None:
    cfg = broker_config(tls={"enabled": True, "ca_file": str(tmp_path / "missing-ca.pem")})
    with pytest.raises(ConnectorConfigError, match=r"broker\.tls\.ca_file"):
        StompConnector(cfg, "tls")


def test_create_connector_by_name() -> None:
    assert isinstance(create_connector(broker_config(), "x"), StompConnector)
    with pytest.raises(ConnectorConfigError, match="broker.connector"):
        create_connector(broker_config(connector="carrier-pigeon"), "x")


# -- the embedded broker ----------------------------------------------------------------

@pytest.fixture
def eb() -> Iterator[Any]:
    from collective.broker import EmbeddedBroker  # written in parallel; fails until it exists

    broker = EmbeddedBroker(host="127.0.0.1", port=0)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def eb_make(eb: Any, connectors: Callable[..., StompConnector]) -> Callable[..., StompConnector]:
    def make(client_id: str, **broker: Any) -> StompConnector:
        conn = connectors(client_id, flavour="embedded", port=eb.port, **broker)
        conn.connect(timeout=5)
        return conn

    return make


def test_eb_broadcast_directed_reply(eb_make: Callable[..., StompConnector]) -> None:
    n1, n2, client = eb_make("ebnode1"), eb_make("ebnode2"), eb_make("ebclient")
    b1, b2, d1, d2, replies = Inbox(), Inbox(), Inbox(), Inbox(), Inbox()
    n1.subscribe(Destination.broadcast(COLL, "rpcutil"), b1)
    n2.subscribe(Destination.broadcast(COLL, "rpcutil"), b2)
    n1.subscribe(Destination.directed(COLL, "ebnode1"), d1)
    n2.subscribe(Destination.directed(COLL, "ebnode2"), d2)
    client.subscribe(Destination.reply(COLL, "ebclient"), replies)

    client.publish(Destination.broadcast(COLL, "rpcutil"), b"all", ttl=30)
    assert b1.wait_for(1) == [b"all"] and b2.wait_for(1) == [b"all"]
    client.publish(Destination.directed(COLL, "ebnode2"), b"just-2", ttl=30)
    assert d2.wait_for(1) == [b"just-2"]
    n1.publish(Destination.reply(COLL, "ebclient"), b"r1")
    n2.publish(Destination.reply(COLL, "ebclient"), b"r2")
    assert sorted(replies.wait_for(2)) == [b"r1", b"r2"]
    time.sleep(0.2)
    assert d1.bodies == []


def test_eb_reconnect_after_broker_restart(eb: Any,
                                          eb_make: Callable[..., StompConnector]) -> None:
    node, client = eb_make("ebrnode"), eb_make("ebrclient")
    bcast, direct = Inbox(), Inbox()
    node.subscribe(Destination.broadcast(COLL, "rpcutil"), bcast)
    node.subscribe(Destination.directed(COLL, "ebrnode"), direct)
    eb.stop()
    wait_until(lambda: not node.connected and not client.connected, 5, "disconnect noticed")
    eb.start()  # same port
    wait_until(lambda: node.connected and client.connected, 10, "reconnect")
    assert node.stats["reconnects"] >= 1 and node.stats["disconnects"] >= 1
    client.publish(Destination.broadcast(COLL, "rpcutil"), b"after-b")
    client.publish(Destination.directed(COLL, "ebrnode"), b"after-d")
    assert bcast.wait_for(1) == [b"after-b"]
    assert direct.wait_for(1) == [b"after-d"]


# -- ActiveMQ ---------------------------------------------------------------------------
# One private ActiveMQ Classic broker for the module (STOMP on 127.0.0.1 only). Checks the
# MCollective-style mapping against the real thing: agent topics, the shared node queue
# with a selector per identity, reply queues, the registration topic.

@pytest.fixture(scope="module")
def amq() -> Iterator[ActiveMQServer]:
    reason = activemq_available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but ActiveMQ is not usable: {reason}", pytrace=False)
        pytest.skip(f"ActiveMQ not available: {reason}")
    import psutil

    with ActiveMQServer() as server:
        started = [psutil.Process(pid) for pid in server.pids]
        started += [child for proc in started for child in proc.children(recursive=True)]
        assert any("java" in proc.name() for proc in started)
        # nothing listens but the one STOMP connector, and only on loopback
        listening = {(c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)
                     for proc in started for c in proc.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM)}
        assert listening == {("127.0.0.1", server.stomp_port)}, listening
        yield server
    gone, alive = psutil.wait_procs(started, timeout=5)
    assert not alive, f"left running after stop(): {alive}"
    assert server.base_dir is not None and not server.base_dir.exists()


@pytest.fixture
def amq_make(amq: ActiveMQServer,
             connectors: Callable[..., StompConnector]) -> Callable[..., StompConnector]:
    def make(client_id: str, connect: bool = True, **broker: Any) -> StompConnector:
        conn = connectors(client_id, **{**amq.broker_config(), **broker})
        if connect:
            conn.connect(timeout=5)
        return conn

    return make


@pytest.mark.activemq
def test_amq_broadcast_reaches_every_subscriber(amq_make: Callable[..., StompConnector]) -> None:
    assert stomp_subscribe(Destination.broadcast(COLL, "rpcutil"), "activemq") == (
        f"/topic/{COLL}.rpcutil.agent", {})
    nodes = [amq_make(f"anode{i}") for i in (1, 2)]
    inboxes = [Inbox(), Inbox()]
    for node, inbox in zip(nodes, inboxes, strict=True):
        node.subscribe(Destination.broadcast(COLL, "rpcutil"), inbox)
    client = amq_make("aclient")
    client.publish(Destination.broadcast(COLL, "rpcutil"), b"\x00ping\xff", ttl=30)
    for inbox in inboxes:
        assert inbox.wait_for(1) == [b"\x00ping\xff"]  # binary-safe (content-length)
    client.publish(Destination.broadcast(COLL, "package"), b"other")
    time.sleep(0.3)
    assert all(len(i.bodies) == 1 for i in inboxes)
    assert client.stats["published"] == 2 and nodes[0].stats["received"] == 1


@pytest.mark.activemq
def test_amq_directed_goes_to_the_selected_identity_only(
        amq_make: Callable[..., StompConnector]) -> None:
    d1, d2 = Destination.directed(COLL, "adnode1"), Destination.directed(COLL, "adnode2")
    # both nodes consume the *same* queue; only the selector tells them apart
    (q1, h1), (q2, h2) = stomp_subscribe(d1, "activemq"), stomp_subscribe(d2, "activemq")
    assert q1 == q2 == f"/queue/{COLL}.nodes"
    assert h1 == {"selector": "mc_identity = 'adnode1'"}
    assert h2 == {"selector": "mc_identity = 'adnode2'"}
    assert stomp_send(d2, "activemq") == (f"/queue/{COLL}.nodes", {"mc_identity": "adnode2"})

    n1, n2 = amq_make("adnode1"), amq_make("adnode2")
    in1, in2 = Inbox(), Inbox()
    n1.subscribe(d1, in1)
    n2.subscribe(d2, in2)
    client = amq_make("adclient")
    for i in range(5):  # several, so a round-robin between the two consumers would show
        client.publish(d1, b"for-1-%d" % i, ttl=30)
        client.publish(d2, b"for-2-%d" % i, ttl=30)
    # a node nobody runs: the message waits on the queue for its selector until it expires
    client.publish(Destination.directed(COLL, "ghost"), b"nobody", ttl=2)
    assert in1.wait_for(5) == [b"for-1-%d" % i for i in range(5)]
    assert in2.wait_for(5) == [b"for-2-%d" % i for i in range(5)]
    time.sleep(0.3)
    assert len(in1.bodies) == 5 and len(in2.bodies) == 5


@pytest.mark.activemq
def test_amq_directed_request_waits_for_its_node_until_it_expires(
        amq_make: Callable[..., StompConnector]) -> None:
    dest = Destination.directed(COLL, "aflaky")
    first, inbox1 = amq_make("aflaky"), Inbox()
    first.subscribe(dest, inbox1)
    first.disconnect()  # the node goes away briefly
    client = amq_make("aflaky-client")
    client.publish(dest, b"short-lived", ttl=1)
    client.publish(dest, b"while-away", ttl=60)
    time.sleep(1.5)  # the first one's `expires` has passed (broker-side expiry)
    again, inbox2 = amq_make("aflaky"), Inbox()
    again.subscribe(dest, inbox2)
    assert inbox2.wait_for(1) == [b"while-away"]
    time.sleep(0.3)
    assert inbox2.bodies == [b"while-away"] and inbox1.bodies == []


@pytest.mark.activemq
def test_amq_reply_queue(amq_make: Callable[..., StompConnector]) -> None:
    reply = Destination.reply(COLL, "arclient-1f2e")
    assert stomp_send(reply, "activemq") == (f"/queue/{COLL}.reply.arclient-1f2e", {})
    client, node = amq_make("arclient"), amq_make("arnode")
    inbox = Inbox()
    client.subscribe(reply, inbox)
    node.publish(reply, b"reply-1")
    node.publish(reply, b"reply-2")
    assert inbox.wait_for(2) == [b"reply-1", b"reply-2"]
    client.unsubscribe(reply)
    node.publish(reply, b"reply-3")
    time.sleep(0.3)
    assert len(inbox.bodies) == 2


@pytest.mark.activemq
def test_amq_registration_topic(amq_make: Callable[..., StompConnector]) -> None:
    reg = Destination.registration(COLL)
    assert stomp_send(reg, "activemq") == (f"/topic/{COLL}.registration.agent", {})
    collectors = [amq_make(f"acollector{i}") for i in (1, 2)]
    inboxes = [Inbox(), Inbox()]
    for collector, inbox in zip(collectors, inboxes, strict=True):
        collector.subscribe(reg, inbox)
    other = Inbox()
    amq_make("aother").subscribe(Destination.broadcast(COLL, "rpcutil"), other)
    node = amq_make("aregnode")
    node.publish(reg, b"registration-1", ttl=60)
    for inbox in inboxes:  # a topic: every collector gets each registration
        assert inbox.wait_for(1) == [b"registration-1"]
    time.sleep(0.3)
    assert other.bodies == []


@pytest.mark.activemq
def test_amq_wrong_password_is_reported(amq_make: Callable[..., StompConnector]) -> None:
    conn = amq_make("aintruder", connect=False, password="not-the-password")
    t0 = time.monotonic()
    with pytest.raises(ConnectorError) as err:
        conn.connect(timeout=3)
    assert time.monotonic() - t0 < 3  # refused at once, not at the timeout
    assert "password is invalid" in str(err.value)


class CuttingProxy(BlackholeProxy):
    """127.0.0.1 TCP proxy; ``cut()`` closes every current connection (both ends see
    EOF, as when a broker drops its clients). New connections still pass."""

    def cut(self) -> None:
        pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair["socks"]:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


@pytest.mark.activemq
def test_amq_reconnects_and_resubscribes_after_the_connection_drops(
        amq: ActiveMQServer, amq_make: Callable[..., StompConnector]) -> None:
    proxy = CuttingProxy(amq.stomp_port)
    try:
        node = amq_make("acutnode", port=proxy.port)
        client = amq_make("acutclient", port=proxy.port)
        bcast, direct, reply = Inbox(), Inbox(), Inbox()
        node.subscribe(Destination.broadcast(COLL, "acutagent"), bcast)
        node.subscribe(Destination.directed(COLL, "acutnode"), direct)
        client.subscribe(Destination.reply(COLL, "acutclient"), reply)

        proxy.cut()
        wait_until(lambda: node.stats["reconnects"] >= 1 and client.stats["reconnects"] >= 1,
                   15, "both connectors to reconnect")
        wait_until(lambda: node.connected and client.connected, 10, "connected")
        assert node.stats["disconnects"] >= 1 and node.stats["connects"] >= 2

        client.publish(Destination.broadcast(COLL, "acutagent"), b"after-cut-b")
        client.publish(Destination.directed(COLL, "acutnode"), b"after-cut-d", ttl=30)
        node.publish(Destination.reply(COLL, "acutclient"), b"after-cut-r")
        assert bcast.wait_for(1) == [b"after-cut-b"]
        assert direct.wait_for(1) == [b"after-cut-d"]  # the selector came back too
        assert reply.wait_for(1) == [b"after-cut-r"]
        # the old consumers are gone on the broker side: nothing is delivered twice
        time.sleep(0.3)
        assert (len(bcast.bodies), len(direct.bodies), len(reply.bodies)) == (1, 1, 1)
    finally:
        proxy.close()


@pytest.mark.activemq
def test_amq_heartbeat_detects_half_open_connection(
        amq: ActiveMQServer, amq_make: Callable[..., StompConnector]) -> None:
    proxy = BlackholeProxy(amq.stomp_port)
    try:
        node = amq_make("ahbnode", port=proxy.port, heartbeat_ms=500)
        inbox = Inbox()
        # acknowledged after the callback, as the daemon subscribes (see the RabbitMQ case)
        node.subscribe(Destination.directed(COLL, "ahbnode"), inbox, prefetch=4)
        proxy.blackhole()
        wait_until(lambda: node.stats["disconnects"] >= 1, 10, "missed heartbeats to be noticed")
        wait_until(lambda: node.connected and node.stats["reconnects"] >= 1, 15, "reconnect")
        amq_make("ahbclient").publish(Destination.directed(COLL, "ahbnode"), b"after-hb",
                                      ttl=30)
        # ActiveMQ may still hold the half-open consumer for a while: the message goes to
        # whichever consumer with the selector it picks; the live one must get it once
        # the broker's own inactivity monitor has dropped the dead one.
        assert inbox.wait_for(1, timeout=20) == [b"after-hb"]
    finally:
        proxy.close()
