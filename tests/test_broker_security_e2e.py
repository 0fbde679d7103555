"""What a local process can still do to a fleet through its broker (docs/security.md S21).

On a real fleet (``mco fleet up``: embedded broker with a user per node and client,
real ``collectived`` processes, the real ``mco``): no login, no access; a node login
cannot take another node's requests nor send requests; a client login cannot read
another client's replies; a queue-creation flood is refused instead of growing the
broker; a signed ``reply_to`` that is not the caller's own is refused by the node.
The same permission set on RabbitMQ (``collective.testing.rabbitmq``) is tested for real.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import stomp

from collective.client import Client
from collective.config import Config
from collective.filters import Filter
from collective.fleet import add_broker_login, fleet_down, fleet_up

COLL = "mcollective"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("brokersec")
    started = fleet_up(directory, nodes=3, clients=["admin", "bob"], extra_server_config={
        "plugins": {"canary": {"log": str(directory / "canary.log")}}})
    started.canary = directory / "canary.log"
    yield started
    fleet_down(directory)


def mco(fleet, *args, client="admin", timeout=60):
    proc = subprocess.run([sys.executable, "-m", "collective", *args,
                           "-c", str(fleet.client_config_for(client))],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def canary(fleet, marker):
    if not fleet.canary.exists():
        return []
    return [line.split()[2] for line in fleet.canary.read_text().splitlines()
            if line.split()[1] == marker]


def password(fleet, login: str) -> str:
    return (fleet.directory / "keys" / f"{login}.broker-password").read_text().strip()


class Probe(stomp.ConnectionListener):
    """A local process speaking STOMP to the fleet's broker with stomp.py."""

    def __init__(self, port: int, login: str | None = None, passcode: str | None = None) -> None:
        self.messages: list[Any] = []
        self.errors: list[Any] = []
        self.receipts: list[str] = []
        self.conn = stomp.Connection12([("127.0.0.1", port)], auto_decode=False,
                                       reconnect_attempts_max=1)
        self.conn.set_listener("probe", self)
        self.conn.connect(login, passcode, wait=True)

    def on_message(self, frame: Any) -> None:
        self.messages.append(frame)

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.append(frame.headers["receipt-id"])

    def answer(self, rid: str, timeout: float = 5.0) -> str:
        """'ok' for the RECEIPT of ``rid``, the ERROR message if refused."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if rid in self.receipts:
                return "ok"
            for frame in self.errors:
                if frame.headers.get("receipt-id") == rid:
                    return frame.headers.get("message", "ERROR")
            time.sleep(0.01)
        raise AssertionError(f"no answer for {rid}")

    def subscribe(self, dest: str, ack: str = "auto") -> str:
        rid = f"sub-{time.monotonic_ns()}"
        self.conn.subscribe(dest, id=rid, ack=ack, headers={"receipt": rid})
        return self.answer(rid)

    def send(self, dest: str, body: bytes) -> str:
        rid = f"send-{time.monotonic_ns()}"
        self.conn.send(dest, body, headers={"receipt": rid})
        return self.answer(rid)

    def close(self) -> None:
        if self.conn.is_connected():
            self.conn.disconnect()


def raw_connect(port: int, headers: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"CONNECT\naccept-version:1.2\n{headers}\n\x00".encode())
        data = b""
        while b"\x00" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data


def test_a_local_process_without_the_fleets_login_is_refused(fleet):
    port = fleet.broker.port
    assert raw_connect(port).startswith(b"ERROR\n")
    assert b"authentication failed" in raw_connect(port, "login:admin\npasscode:guess\n")
    assert raw_connect(port, f"login:admin\npasscode:{password(fleet, 'admin')}\n").startswith(
        b"CONNECTED\n")
    assert (fleet.directory / "broker.yaml").stat().st_mode & 0o777 == 0o600
    assert (fleet.directory / "keys" / "node-001.broker-password").stat().st_mode & 0o777 == 0o600
    assert password(fleet, "node-001") not in (fleet.directory / "broker.yaml").read_text()


def test_a_node_login_cannot_take_another_nodes_requests(fleet):
    thief = Probe(fleet.broker.port, "node-002", password(fleet, "node-002"))
    try:
        # ack=client and never ack: before logins, this took every other request for good
        assert thief.subscribe(f"/queue/{COLL}.node.node-001", ack="client") == "access refused"
        for i in range(4):
            code, out, err = mco(fleet, "rpc", "canary", "run", f"marker=steal{i}", "-I", "node-001")
            assert code == 0, out + err
            assert "Finished processing 1 / 1 hosts" in out
        assert [canary(fleet, f"steal{i}") for i in range(4)] == [["node-001"]] * 4
        assert thief.messages == []
        # its own queue and the broadcasts are fine
        assert thief.subscribe(f"/queue/{COLL}.node.node-002") == "ok"
        assert thief.subscribe(f"/topic/{COLL}.broadcast.canary") == "ok"
    finally:
        thief.close()


def test_sighup_serves_the_broker_users_as_edited(fleet):
    import yaml

    port = fleet.broker.port
    assert raw_connect(port, "login:node-009\npasscode:x\n").startswith(b"ERROR\n")
    section = add_broker_login(fleet, "node-009")  # edits broker.yaml, sends SIGHUP
    assert section["user"] == "node-009"
    node9 = Probe(port, "node-009", password(fleet, "node-009"))
    try:
        assert node9.subscribe(f"/queue/{COLL}.node.node-009") == "ok"
        assert node9.subscribe(f"/queue/{COLL}.node.node-001") == "access refused"
        # remove the user again: its live connection is closed, its login refused
        path = fleet.directory / "broker.yaml"
        data = yaml.safe_load(path.read_text())
        del data["users"]["node-009"]
        path.write_text(yaml.safe_dump(data))
        import os
        import signal

        os.kill(fleet.pids["broker"], signal.SIGHUP)
        deadline = time.monotonic() + 10
        while node9.conn.is_connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not node9.conn.is_connected()
        assert any("login no longer valid" in f.headers.get("message", "") for f in node9.errors)
        assert b"authentication failed" in raw_connect(
            port, f"login:node-009\npasscode:{password(fleet, 'node-009')}\n")
        # a broken edit keeps the users the broker has
        path.write_text("users: [not, a, mapping]\n")
        os.kill(fleet.pids["broker"], signal.SIGHUP)
        time.sleep(1.0)
        assert raw_connect(port, f"login:admin\npasscode:{password(fleet, 'admin')}\n").startswith(
            b"CONNECTED\n")
        log = (fleet.directory / "broker.log").read_text()
        assert "SIGHUP: keeping the current users" in log
    finally:
        path.write_text(yaml.safe_dump(data))
        node9.close()
    code, out, err = mco(fleet, "ping")
    assert code == 0 and "3 replies" in out, out + err


def test_a_node_login_cannot_send_requests(fleet):
    node = Probe(fleet.broker.port, "node-001", password(fleet, "node-001"))
    try:
        assert node.send(f"/topic/{COLL}.broadcast.canary", b"{}") == "access refused"
        assert node.send(f"/queue/{COLL}.node.node-002", b"{}") == "access refused"
        assert node.send(f"/topic/{COLL}.registration", b"{}") == "ok"  # what nodes do write
    finally:
        node.close()


def test_a_client_login_cannot_read_another_clients_replies(fleet):
    with Client(_client_config(fleet, "admin")) as admin:
        admin.connect()
        queue = f"/queue/{admin.reply_dest.logical()}"
        assert admin.reply_dest.name.startswith("admin.")
        bob = Probe(fleet.broker.port, "bob", password(fleet, "bob"))
        try:
            assert bob.subscribe(queue) == "access refused"
            assert bob.subscribe(f"/queue/{COLL}.reply.admin.anything") == "access refused"
            assert bob.subscribe(f"/queue/{COLL}.reply.bob.mine") == "ok"
            result = admin.rpc("rpcutil", "ping", {}, nodes=["node-001", "node-002"])
            assert sorted(r.sender for r in result.replies) == ["node-001", "node-002"]
            assert bob.messages == []
        finally:
            bob.close()


def _client_config(fleet, name: str) -> Config:
    from collective.config import load_config

    return load_config(fleet.client_config_for(name))


def node_stats(fleet, node: str) -> dict:
    code, out, err = mco(fleet, "rpc", "rpcutil", "daemon_stats", "-I", node, "--json")
    assert code == 0, out + err
    return json.loads(out)[0]["data"]


def audit(fleet, node: str) -> list[dict]:
    path = fleet.directory / "nodes" / node / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_reply_to_that_is_not_the_callers_own_is_refused(fleet):
    """admin signs a request whose replies would go to bob's queue: the node refuses it
    (count + audit), runs nothing and replies nowhere; bob receives nothing."""
    bob = Probe(fleet.broker.port, "bob", password(fleet, "bob"))
    before = node_stats(fleet, "node-003").get("bad_reply_to", 0)
    try:
        assert bob.subscribe(f"/queue/{COLL}.reply.bob.trap") == "ok"
        with Client(_client_config(fleet, "admin")) as admin:
            admin.connect()
            for target in (f"{COLL}.reply.bob.trap", f"{COLL}.reply.admin", f"{COLL}.node.node-001"):
                message, _body, wire = admin._sign("canary", "run", {"marker": "redirect"}, Filter(),
                                                   ["node-003"], reply_to=target)
                admin._publish("canary", wire, ["node-003"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = node_stats(fleet, "node-003")
            if stats.get("bad_reply_to", 0) >= before + 3:
                break
            time.sleep(0.2)
        assert stats["bad_reply_to"] == before + 3
        time.sleep(0.5)
        assert canary(fleet, "redirect") == []
        assert bob.messages == []
        lines = [a for a in audit(fleet, "node-003") if a.get("reason") == "reply_to"]
        assert len(lines) == 3 and all(a["decision"] == "refused" and a["caller"] == "cert=admin"
                                       for a in lines)
    finally:
        bob.close()
    # the caller's own destination still works: mco rpc --reply-to / mco replies
    code, _out, err = mco(fleet, "rpc", "canary", "run", "marker=x", "-I", "node-001",
                          "--reply-to", f"{COLL}.reply.bob.job")
    assert code == 1 and "not a reply destination of this caller" in err
    code, _out, err = mco(fleet, "replies", f"{COLL}.reply.bob.job", "-t", "1")
    assert code == 1 and "expected mcollective.reply.admin.TAG" in err


@pytest.fixture
def small_fleet(tmp_path):
    started = fleet_up(tmp_path / "flood", nodes=1)
    yield started
    fleet_down(tmp_path / "flood")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_queue_creation_flood_is_refused_and_the_fleet_keeps_answering(small_fleet):
    """200 queues of 512 KiB each from a logged-in client: the broker refuses past its
    global limit (64 MiB stored) with an ERROR instead of growing, and keeps serving."""
    pid = small_fleet.pids["broker"]
    start = rss_mib(pid)
    flooder = Probe(small_fleet.broker.port, "admin", password(small_fleet, "admin"))
    body = b"x" * (512 * 1024)
    answers = []
    try:
        for i in range(200):
            answers.append(flooder.send(f"/queue/{COLL}.node.flood-{i}", body))
    finally:
        flooder.close()
    grown = rss_mib(pid) - start
    assert "broker storage full" in answers
    stored = answers.count("ok")
    assert 100 <= stored <= 128, answers  # 64 MiB of 512 KiB messages
    assert grown < 150, f"broker RSS grew by {grown:.0f} MiB"
    code, out, err = mco(small_fleet, "ping")
    assert code == 0 and "node-001" in out, out + err


# -- RabbitMQ: the same permission set, for real --------------------------------------------


@pytest.fixture(scope="module")
def rabbit(request):
    return request.getfixturevalue("collective_rabbitmq")


class RmqProbe(Probe):
    def __init__(self, section: dict) -> None:
        self.messages, self.errors, self.receipts = [], [], []
        self.disconnected = threading.Event()
        self.conn = stomp.Connection12([("127.0.0.1", section["port"])], auto_decode=False,
                                       reconnect_attempts_max=1, vhost=section["vhost"])
        self.conn.set_listener("probe", self)
        self.conn.connect(section["user"], section["password"], wait=True)

    def answer(self, rid: str, timeout: float = 5.0) -> str:
        # RabbitMQ answers a refusal with an ERROR without receipt-id, *then* the RECEIPT,
        # and closes the connection: an ERROR seen by the time of the receipt wins
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.errors:
                return self.errors[0].headers.get("message", "ERROR")
            if rid in self.receipts:
                return "ok"
            time.sleep(0.01)
        raise AssertionError(f"no answer for {rid}")


def _keys(tmp: Path, nodes: list[str], clients: list[str]) -> None:
    import shutil

    from collective.security.keys import generate_keypair

    for sub in ("clients", "nodes"):
        (tmp / "trust" / sub).mkdir(parents=True, exist_ok=True)
    for name in nodes + clients:
        generate_keypair(name, tmp / "keys")
        kind = "nodes" if name in nodes else "clients"
        shutil.copy(tmp / "keys" / f"{name}.pub", tmp / "trust" / kind / f"{name}.pub")


@pytest.mark.rabbitmq
def test_rabbitmq_fleet_works_with_per_user_permissions(rabbit, tmp_path):
    from collective.plugins import get_plugin_manager
    from collective.server.daemon import Daemon

    _keys(tmp_path, ["rnode-1", "rnode-2"], ["radmin"])
    daemons = []
    try:
        for name in ("rnode-1", "rnode-2"):
            section = rabbit.add_collective_user(name, "node")
            config = Config({"identity": name, "broker": {**section, "heartbeat_ms": 2000},
                             "security": {"private_key": str(tmp_path / "keys" / f"{name}.key"),
                                          "trust_dir": str(tmp_path / "trust")},
                             "audit": {"file": str(tmp_path / f"{name}.audit")}},
                            kind="server", env={})
            daemon = Daemon(config, pm=get_plugin_manager(load_entrypoints=False))
            daemon.start(connect_timeout=20)
            daemons.append(daemon)
        section = rabbit.add_collective_user("radmin", "client")
        client_config = Config({"identity": "radmin-client", "broker": section,
                                "security": {"identity": "radmin",
                                             "private_key": str(tmp_path / "keys" / "radmin.key"),
                                             "trust_dir": str(tmp_path / "trust")}},
                               kind="client", env={})
        with Client(client_config, pm=get_plugin_manager(load_entrypoints=False)) as client:
            result = client.ping(expected=["rnode-1", "rnode-2"], timeout=10)  # broadcast
            assert sorted(r.sender for r in result.replies) == ["rnode-1", "rnode-2"]
            result = client.ping(filter=Filter(identity=["rnode-2"]), timeout=10)  # directed
            assert [r.sender for r in result.replies] == ["rnode-2"]
    finally:
        for daemon in daemons:
            daemon.stop()


@pytest.mark.rabbitmq
def test_rabbitmq_node_user_cannot_read_another_nodes_queue_nor_send_requests(rabbit):
    rabbit.add_collective_user("pnode-1", "node")
    thief_section = rabbit.add_collective_user("pnode-2", "node")
    queue_args = {"durable": "true", "auto-delete": "false", "x-expires": "120000",
                  "x-message-ttl": "600000", "x-max-length": "1000"}
    own = RmqProbe(thief_section)
    try:  # the positive case, so the refusals below are not a broken setup
        rid = "own"
        own.conn.subscribe(f"/queue/{COLL}.node.pnode-2", id="1", ack="auto",
                           headers={**queue_args, "receipt": rid})
        assert own.answer(rid) == "ok"
        own.conn.subscribe(f"/topic/{COLL}.broadcast.rpcutil", id="2", ack="auto",
                           headers={"receipt": "bc"})
        assert own.answer("bc") == "ok"
    finally:
        own.close()
    cases = [
        ("subscribe", f"/queue/{COLL}.node.pnode-1", queue_args),
        ("send", f"/topic/{COLL}.broadcast.rpcutil", {}),
        ("subscribe", f"/topic/{COLL}.registration", {}),
        ("subscribe", f"/queue/{COLL}.reply.radmin.x", {"durable": "true", "auto-delete": "false"}),
    ]
    for verb, dest, extra in cases:
        probe = RmqProbe(thief_section)
        try:
            if verb == "subscribe":
                probe.conn.subscribe(dest, id="1", ack="auto", headers={**extra, "receipt": "r"})
            else:
                probe.conn.send(dest, b"{}", headers={"receipt": "r"})
            assert probe.answer("r") != "ok", (verb, dest)
            assert "access_refused" in (probe.errors[0].body or b"").decode() + \
                probe.errors[0].headers.get("message", ""), probe.errors[0].headers
        finally:
            probe.close()


@pytest.mark.rabbitmq
def test_rabbitmq_client_user_cannot_read_another_clients_replies(rabbit):
    admin = rabbit.add_collective_user("cadmin", "client")
    bob = rabbit.add_collective_user("cbob", "client")
    args = {"durable": "true", "auto-delete": "false", "x-expires": "120000", "x-max-length": "10000"}
    mine = RmqProbe(admin)
    try:
        mine.conn.subscribe(f"/queue/{COLL}.reply.cadmin.q1", id="1", ack="auto",
                            headers={**args, "receipt": "r"})
        assert mine.answer("r") == "ok"
        mine.conn.send(f"/topic/{COLL}.broadcast.rpcutil", b"{}", headers={"receipt": "s"})
        assert mine.answer("s") == "ok"
    finally:
        mine.close()
    thief = RmqProbe(bob)
    try:
        thief.conn.subscribe(f"/queue/{COLL}.reply.cadmin.q1", id="1", ack="auto",
                             headers={**args, "receipt": "r"})
        assert thief.answer("r") != "ok"
    finally:
        thief.close()


# -- ActiveMQ: the documented authorizationEntries, for real ---------------------------------


@pytest.fixture(scope="module")
def amq_acl():
    from collective.testing import require
    from collective.testing.activemq import (
        ActiveMQServer,
        activemq_available,
        collective_authorization,
    )

    reason = activemq_available()
    require(reason is None, f"ActiveMQ is not usable: {reason}")
    groups, entries = collective_authorization(nodes=["anode-1", "anode-2"],
                                               clients=["aadmin", "abob"])
    with ActiveMQServer(users=groups, authorization=entries) as server:
        yield server


class AmqProbe(RmqProbe):
    def __init__(self, section: dict) -> None:
        self.messages, self.errors, self.receipts = [], [], []
        self.conn = stomp.Connection12([("127.0.0.1", section["port"])], auto_decode=False,
                                       reconnect_attempts_max=1)
        self.conn.set_listener("probe", self)
        self.conn.connect(section["user"], section["password"], wait=True)


@pytest.mark.activemq
def test_activemq_fleet_works_with_the_documented_authorization(amq_acl, tmp_path):
    from collective.plugins import get_plugin_manager
    from collective.server.daemon import Daemon

    _keys(tmp_path, ["anode-1", "anode-2"], ["aadmin"])
    daemons = []
    try:
        for name in ("anode-1", "anode-2"):
            config = Config({"identity": name,
                             "broker": {**amq_acl.broker_config(name), "heartbeat_ms": 2000},
                             "security": {"private_key": str(tmp_path / "keys" / f"{name}.key"),
                                          "trust_dir": str(tmp_path / "trust")},
                             "audit": {"file": str(tmp_path / f"{name}.audit")}},
                            kind="server", env={})
            daemon = Daemon(config, pm=get_plugin_manager(load_entrypoints=False))
            daemon.start(connect_timeout=20)
            daemons.append(daemon)
        client_config = Config({"identity": "aadmin-client", "broker": amq_acl.broker_config("aadmin"),
                                "security": {"identity": "aadmin",
                                             "private_key": str(tmp_path / "keys" / "aadmin.key"),
                                             "trust_dir": str(tmp_path / "trust")}},
                               kind="client", env={})
        with Client(client_config, pm=get_plugin_manager(load_entrypoints=False)) as client:
            result = client.ping(expected=["anode-1", "anode-2"], timeout=10)
            assert sorted(r.sender for r in result.replies) == ["anode-1", "anode-2"]
            result = client.ping(filter=Filter(identity=["anode-2"]), timeout=10)
            assert [r.sender for r in result.replies] == ["anode-2"]
    finally:
        for daemon in daemons:
            daemon.stop()


@pytest.mark.activemq
def test_activemq_refuses_what_the_roles_do_not_grant(amq_acl):
    allowed = [("anode-1", "subscribe", f"/topic/{COLL}.rpcutil.agent"),
               ("anode-1", "send", f"/queue/{COLL}.reply.aadmin.x1"),
               ("abob", "subscribe", f"/queue/{COLL}.reply.abob.x1"),
               ("abob", "send", f"/topic/{COLL}.rpcutil.agent")]
    refused = [("anode-1", "send", f"/topic/{COLL}.rpcutil.agent"),       # a node sends a request
               ("anode-1", "send", f"/queue/{COLL}.nodes"),
               ("anode-1", "subscribe", f"/queue/{COLL}.reply.aadmin.x1"),  # ... reads replies
               ("abob", "subscribe", f"/queue/{COLL}.reply.aadmin.x1"),     # another client's
               ("abob", "subscribe", f"/queue/{COLL}.nodes")]
    for login, verb, dest in allowed + refused:
        probe = AmqProbe(amq_acl.broker_config(login))
        try:
            if verb == "subscribe":
                probe.conn.subscribe(dest, id="1", ack="auto", headers={"receipt": "r"})
            else:
                probe.conn.send(dest, b"{}", headers={"receipt": "r"})
            answer = probe.answer("r")
            assert (answer == "ok") is ((login, verb, dest) in allowed), (login, verb, dest, answer)
            if answer != "ok":
                assert "not authorized" in answer.lower() or "not authorized" in (
                    probe.errors[0].body or b"").decode().lower(), (login, verb, dest, answer)
        finally:
            probe.close()
