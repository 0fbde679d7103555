"""Broker faults on every broker (embedded, RabbitMQ's STOMP plugin, ActiveMQ), through a
fault proxy (collective.testing.faultproxy): a half-open connection is noticed within
25 s at the default heart-beat, a daemon whose subscriptions are not confirmed keeps
retrying and says it is unhealthy until they all are, a prefetch keeps a flood on one
subscription from delaying another, and replies carry their expiry."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import stomp

import collective_test_canary.plugin as canary_plugin
from collective.client import Client
from collective.config import Config
from collective.connectors.destinations import Destination, stomp_subscribe
from collective.connectors.stomp import StompConnector
from collective.plugins import get_plugin_manager
from collective.security.keys import generate_keypair
from collective.server.daemon import Daemon
from collective.testing import wait_for
from collective.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(240)

COLL = "mcollective"


@pytest.fixture(params=["embedded", "rabbitmq", "activemq"])
def broker(request) -> dict[str, Any]:
    """The ``broker`` config section of a real broker."""
    if request.param == "embedded":
        return {"flavour": "embedded", "host": "127.0.0.1",
                "port": request.getfixturevalue("collective_broker").port}
    if request.param == "activemq":
        return request.getfixturevalue("collective_activemq").broker_config()
    return request.getfixturevalue("collective_rabbitmq").broker_config()




def connector(section: dict[str, Any], name: str, **extra: Any) -> StompConnector:
    return StompConnector(Config({"broker": {**section, **extra}}, env={}), name)


@pytest.mark.slow
def test_a_half_open_connection_is_noticed_within_25_s(broker):
    """The default heart-beat (10 s), and the link goes quiet right after the connect: the
    worst case for stomp.py's own check, which gives a fresh connection an extra interval
    (39 s in this very test before the connector watched the line itself)."""
    with FaultProxy(broker["port"]) as proxy:
        conn = connector(broker, "halfopen", port=proxy.port)
        conn.subscribe(Destination.broadcast(COLL, "halfopen"), lambda body: None)
        conn.connect(timeout=15)
        try:
            assert conn.heartbeat_ms == 10_000
            proxy.blackhole()
            started = time.monotonic()
            assert wait_for(lambda: not conn.connected, 40)
            noticed = time.monotonic() - started
            assert noticed < 25, f"noticed after {noticed:.1f}s"
            assert not conn.health()["ok"]
            proxy.heal()
            assert wait_for(lambda: conn.connected, 30), conn.last_error
            assert conn.stats["reconnects"] >= 1
        finally:
            conn.disconnect()


class Node:
    """An in-process daemon (canary agent) whose broker is reached through ``port``."""

    def __init__(self, tmp: Path, section: dict[str, Any], port: int) -> None:
        keys, trust = tmp / "keys", tmp / "trust"
        for sub in ("clients", "nodes"):
            (trust / sub).mkdir(parents=True, exist_ok=True)
        for name in ("admin", "n1"):
            generate_keypair(name, keys)
        shutil.copy(keys / "admin.pub", trust / "clients" / "admin.pub")
        shutil.copy(keys / "n1.pub", trust / "nodes" / "n1.pub")
        self.canary = tmp / "canary.log"
        self.config = Config({
            "identity": "n1",
            "broker": {**section, "port": port, "publish_timeout": 1.5, "reconnect_max": 2.0},
            "security": {"private_key": str(keys / "n1.key"), "trust_dir": str(trust)},
            "audit": {"file": str(tmp / "audit.jsonl")},
            "authorization": {"provider": "callers", "callers": ["cert=admin"]},
            "plugins": {"canary": {"log": str(self.canary)}},
        }, kind="server", env={})
        self.client_config = Config({
            "identity": "admin-client", "broker": section,
            "security": {"identity": "admin", "private_key": str(keys / "admin.key"),
                         "trust_dir": str(trust)}}, kind="client", env={})
        self.daemon = Daemon(self.config, pm=get_plugin_manager(load_entrypoints=False,
                                                                plugins=[canary_plugin]))

    def ping(self, timeout: float = 3.0) -> list[str]:
        with Client(self.client_config, pm=get_plugin_manager(
                load_entrypoints=False, plugins=[canary_plugin])) as client:
            result = client.request("rpcutil", "ping", {}, expected=["n1"], timeout=timeout)
        return [r.sender for r in result.replies if r.statuscode == 0]


def test_subscriptions_the_broker_does_not_confirm_are_retried_until_in_place(tmp_path, broker):
    """A broker too busy to confirm SUBSCRIBEs (seen on RabbitMQ with 100 daemons starting
    at once) once left daemons connected with no subscription, silent for good."""
    with FaultProxy(broker["port"]) as proxy:
        proxy.drop_receipts("s-")  # the connector's SUBSCRIBE receipts
        node = Node(tmp_path, broker, proxy.port)
        errors: list[BaseException] = []

        def start() -> None:
            try:
                node.daemon.start()  # waits for the broker, however long it takes
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        try:
            assert wait_for(lambda: node.daemon.connector.stats["subscribe_failures"] >= 2, 30)
            health = node.daemon.health()
            assert health["ok"] is False and "not every subscription is in place" in health["state"]
            assert node.daemon.stats()["health"]["ok"] is False
            assert node.ping(timeout=2.0) == [], "a node without subscriptions answered?"
            assert proxy.dropped_receipts >= 2
            proxy.heal()
            assert wait_for(lambda: node.daemon.health()["ok"], 30), node.daemon.health()
            thread.join(10)
            assert errors == []
            assert wait_for(lambda: node.ping() == ["n1"], 15)
            with Client(node.client_config, pm=get_plugin_manager(
                    load_entrypoints=False, plugins=[canary_plugin])) as client:
                ran = client.request("canary", "run", {"marker": "after"}, targets=["n1"],
                                     timeout=10)
            assert [r.statuscode for r in ran.replies] == [0]
        finally:
            node.daemon.stop()


def test_a_flood_on_one_subscription_does_not_delay_another(broker):
    """With a prefetch each subscription takes at most that many unacknowledged messages;
    the broker holds the rest, so another subscription of the same connection is not
    queued behind them (the node's rpcutil requests behind a flood of another agent's)."""
    flooded, quiet = Destination.broadcast(COLL, "flooded"), Destination.broadcast(COLL, "quiet")
    release = threading.Event()
    got: dict[str, list[bytes]] = {"flooded": [], "quiet": []}

    def slow(body: bytes) -> None:
        got["flooded"].append(body)
        release.wait(30)

    node = connector(broker, "prefetch-node")
    node.subscribe(flooded, slow, prefetch=2, lane="work")
    node.subscribe(quiet, got["quiet"].append, prefetch=2, lane="reserved")
    node.connect(timeout=15)
    sender = connector(broker, "prefetch-sender")
    sender.connect(timeout=15)
    try:
        for i in range(200):
            sender.publish(flooded, f"f{i}".encode(), ttl=60, confirm=False)
        sender.publish(flooded, b"last", ttl=60)  # confirmed: the broker has them all
        sender.publish(quiet, b"q", ttl=60)
        assert wait_for(lambda: got["quiet"] == [b"q"], 10), "the quiet subscription waited"
        time.sleep(0.5)
        # the stuck lane took one, at most one more waits for it; the broker keeps the rest
        assert got["flooded"] == [b"f0"]
        assert node.stats["received"] <= 1 + 2 + 1, node.stats
        release.set()
        assert wait_for(lambda: len(got["flooded"]) == 201, 30), len(got["flooded"])
        assert got["flooded"][-1] == b"last" and node.stats["acked"] >= 202
    finally:
        release.set()
        sender.disconnect()
        node.disconnect()


class _Headers(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.frames: list[dict[str, str]] = []

    def on_message(self, frame: Any) -> None:
        self.frames.append(dict(frame.headers))


def test_replies_carry_an_expiry(tmp_path, broker):
    """A reply expires on the broker with its request (``expires``, absolute ms, for the
    embedded broker and ActiveMQ; ``expiration``, relative ms, for RabbitMQ)."""
    node = Node(tmp_path, broker, broker["port"])
    node.daemon.start(connect_timeout=15)
    reply_dest = Destination.reply(COLL, "admin.expiry")
    destination, headers = stomp_subscribe(reply_dest, broker["flavour"])
    raw = stomp.StompConnection12([("127.0.0.1", broker["port"])], vhost=broker.get("vhost"))
    listener = _Headers()
    raw.set_listener("h", listener)
    raw.connect(username=broker.get("user"), passcode=broker.get("password"), wait=True)
    try:
        raw.subscribe(destination, id="1", ack="auto", headers=headers)
        time.sleep(0.5)
        with Client(node.client_config, pm=get_plugin_manager(
                load_entrypoints=False, plugins=[canary_plugin])) as client:
            client.send("canary", "run", {"marker": "exp"}, nodes=["n1"],
                        reply_to=reply_dest.logical())
        sent = time.time()
        assert wait_for(lambda: listener.frames, 10)
        frame = listener.frames[0]
        ttl = int(node.client_config["security"]["ttl"])
        if broker["flavour"] == "rabbitmq":
            assert 0 < int(frame["expiration"]) <= ttl * 1000
        else:
            expires = int(frame["expires"]) / 1000
            assert sent - 5 < expires <= sent + ttl + 1, (expires, sent)
    finally:
        raw.disconnect()
        node.daemon.stop()


def test_the_embedded_broker_drops_a_reply_nobody_claimed_before_it_expired(tmp_path,
                                                                         collective_broker):
    section = {"flavour": "embedded", "host": "127.0.0.1", "port": collective_broker.port}
    node = Node(tmp_path, section, collective_broker.port)
    node.client_config.data["security"]["ttl"] = 1  # the shortest request TTL
    node.daemon.start(connect_timeout=15)
    gone = Destination.reply(COLL, "admin.gone")
    try:
        with Client(node.client_config, pm=get_plugin_manager(
                load_entrypoints=False, plugins=[canary_plugin])) as client:
            client.send("canary", "run", {"marker": "gone"}, nodes=["n1"], reply_to=gone.logical())
        assert wait_for(lambda: node.canary.exists(), 10)
        time.sleep(11.5)  # a reply lives until its request's TTL, and at least 10 s
        late: list[bytes] = []
        reader = connector(section, "late-reader")
        reader.subscribe(gone, late.append)
        reader.connect(timeout=10)
        time.sleep(1.0)
        reader.disconnect()
        assert late == []
        assert collective_broker.stats()["expired"] >= 1
    finally:
        node.daemon.stop()
