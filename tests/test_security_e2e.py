"""Negative tests over a real broker: each asserts the action did not run (canary log
untouched) and that the daemon's counter and audit line say why (docs/security.md)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import collective_test_canary.plugin as canary_plugin
from collective.client import Client
from collective.config import Config
from collective.connectors.destinations import Destination
from collective.connectors.stomp import StompConnector
from collective.message import ReplyMessage, RequestMessage, encode_wire
from collective.plugins import get_plugin_manager
from collective.security.ed25519 import Ed25519Provider
from collective.security.keys import generate_keypair, key_id, load_private_key
from collective.server.daemon import Daemon

NODE = "node-x"


class Env:
    """A daemon, its keys and a raw publisher on one embedded broker."""

    def __init__(self, tmp: Path, broker: dict, server_extra: dict | None = None) -> None:
        self.tmp = tmp
        self.broker = {**broker, "heartbeat_ms": 2000}
        self.keys = tmp / "keys"
        self.trust = tmp / "trust"
        for sub in ("clients", "nodes"):
            (self.trust / sub).mkdir(parents=True)
        for name in ("alice", "bob", "mallory", NODE, "evil-node"):
            generate_keypair(name, self.keys)
        for name in ("alice", "bob"):
            shutil.copy(self.keys / f"{name}.pub", self.trust / "clients" / f"{name}.pub")
        for name in (NODE, "evil-node"):
            shutil.copy(self.keys / f"{name}.pub", self.trust / "nodes" / f"{name}.pub")
        self.canary = tmp / "canary.log"
        self.audit = tmp / "audit.jsonl"
        server = {
            "identity": NODE,
            "broker": self.broker,
            "security": {"private_key": str(self.keys / f"{NODE}.key"), "trust_dir": str(self.trust)},
            "audit": {"file": str(self.audit)},
            "authorization": {"provider": "callers", "callers": ["cert=alice", "cert=bob"]},
            "plugins": {"canary": {"log": str(self.canary)}},
        }
        server.update(server_extra or {})
        pm = get_plugin_manager(load_entrypoints=False, plugins=[canary_plugin])
        self.daemon = Daemon(Config(server, kind="server", env={}), pm=pm)
        self.daemon.start(connect_timeout=10)
        self.replies: list[bytes] = []
        # alice's own reply destination: nodes reply only to the caller's (reply_to_refusal);
        # one per test: a daemon that stops sends the replies still on their way, and on
        # RabbitMQ a reply queue outlives its subscriber
        self.reply_dest = Destination.reply("mcollective", f"alice.raw-{uuid.uuid4().hex[:12]}")
        self.raw = StompConnector(self.client_config("alice"), client_id="raw-publisher")
        self.raw.connect(timeout=10)
        self.raw.subscribe(self.reply_dest, self.replies.append)

    def client_config(self, name: str) -> Config:
        return Config({
            "identity": "tester",
            "broker": self.broker,
            "security": {"identity": name, "private_key": str(self.keys / f"{name}.key"),
                         "trust_dir": str(self.trust)},
        }, kind="client", env={})

    def request(self, caller: str = "cert=alice", **fields) -> RequestMessage:
        base = dict(sender="tester", caller=caller, collective="mcollective", agent="canary",
                    action="run", data={"marker": "m"}, filter={}, ttl=60,
                    reply_to=self.reply_dest.logical(), targets=None)
        base.update(fields)
        return RequestMessage.new(**base)

    def signed(self, request: RequestMessage, as_name: str = "alice") -> bytes:
        return Ed25519Provider(self.client_config(as_name), role="client").sign(request.to_body(), "request")

    def send(self, wire: bytes) -> None:
        self.raw.publish(Destination.directed("mcollective", NODE), wire)

    def wait_for(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def counter(self, name: str) -> int:
        return self.daemon.stats()[name]

    def canary_lines(self) -> list[str]:
        return self.canary.read_text().splitlines() if self.canary.exists() else []

    def audit_lines(self) -> list[dict]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def decoded_replies(self) -> list[ReplyMessage]:
        return [ReplyMessage.from_body(base64.b64decode(json.loads(w)["body"])) for w in self.replies]

    def close(self) -> None:
        self.raw.disconnect()
        self.daemon.stop()


@pytest.fixture(params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
                        pytest.param("activemq", marks=pytest.mark.activemq)])
def broker(request):
    """The ``broker`` config section of a real broker: embedded, RabbitMQ's STOMP plugin
    or ActiveMQ."""
    if request.param == "embedded":
        return {"port": request.getfixturevalue("collective_broker").port}
    if request.param == "activemq":
        return request.getfixturevalue("collective_activemq").broker_config()
    return request.getfixturevalue("collective_rabbitmq").broker_config()


@pytest.fixture
def env(tmp_path, broker):
    environment = Env(tmp_path, broker)
    yield environment
    environment.close()


def assert_refused(env: Env, counter: str, reason: str, before: int) -> None:
    assert env.wait_for(lambda: env.counter(counter) == before + 1), f"{counter} did not rise"
    assert env.wait_for(lambda: any(a.get("reason") == reason for a in env.audit_lines())), \
        f"no audit line with reason {reason}: {env.audit_lines()}"
    time.sleep(0.2)
    assert env.canary_lines() == [], "the action ran"


def test_a_valid_request_runs_once_and_is_audited(env):
    env.send(env.signed(env.request()))
    assert env.wait_for(lambda: len(env.canary_lines()) == 1)
    assert env.wait_for(lambda: len(env.replies) == 1)
    reply = env.decoded_replies()[0]
    assert (reply.sender, reply.statuscode, reply.data) == (NODE, 0, {"ran": True})
    assert any(a["decision"] == "allow" and a["caller"] == "cert=alice" for a in env.audit_lines())


def test_forged_caller_is_refused(env):
    before = env.counter("unvalidated")
    env.send(env.signed(env.request(caller="cert=bob"), as_name="alice"))
    assert_refused(env, "unvalidated", "caller_mismatch", before)


def test_tampered_body_is_refused(env):
    wire = json.loads(env.signed(env.request()))
    body = base64.b64decode(wire["body"]).replace(b'"marker":"m"', b'"marker":"x"')
    wire["body"] = base64.b64encode(body).decode()
    before = env.counter("unvalidated")
    env.send(json.dumps(wire).encode())
    assert_refused(env, "unvalidated", "bad_signature", before)


@pytest.mark.parametrize("field", ["filter", "agent", "collective", "reply_to", "action"])
def test_every_signed_envelope_field_is_covered(env, field):
    request = env.request()
    wire = json.loads(env.signed(request))
    body = json.loads(base64.b64decode(wire["body"]))
    body[field] = {"filter": {"identity": ["other"]}, "agent": "rpcutil", "collective": "other",
                   "reply_to": "mcollective.reply.attacker", "action": "sleep"}[field]
    wire["body"] = base64.b64encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).decode()
    before = env.counter("unvalidated")
    env.send(json.dumps(wire).encode())
    assert_refused(env, "unvalidated", "bad_signature", before)


def test_replayed_request_runs_once(env):
    wire = env.signed(env.request())
    env.send(wire)
    assert env.wait_for(lambda: len(env.canary_lines()) == 1)
    before = env.counter("replayed")
    env.send(wire)
    assert env.wait_for(lambda: env.counter("replayed") == before + 1)
    time.sleep(0.3)
    assert len(env.canary_lines()) == 1
    assert any(a.get("reason") == "replayed" for a in env.audit_lines())


def test_expired_request_is_refused_and_the_client_is_told(env):
    before = env.counter("ttlexpired")
    env.send(env.signed(env.request(time=int((time.time() - 120) * 1000), ttl=60)))
    assert_refused(env, "ttlexpired", "expired", before)
    assert env.wait_for(lambda: len(env.replies) == 1)
    reply = env.decoded_replies()[0]
    assert reply.statuscode == 1 and "outside window" in reply.statusmsg


def test_future_dated_request_is_refused(env):
    before = env.counter("ttlexpired")
    env.send(env.signed(env.request(time=int((time.time() + 120) * 1000))))
    assert_refused(env, "ttlexpired", "future", before)


def test_ttl_over_the_maximum_is_refused(env):
    before = env.counter("ttlexpired")
    env.send(env.signed(env.request(ttl=10 * 365 * 86400)))
    assert_refused(env, "ttlexpired", "ttl_too_long", before)


def test_unknown_key_is_refused(env):
    before = env.counter("unvalidated")
    env.send(env.signed(env.request(caller="cert=mallory"), as_name="mallory"))
    assert_refused(env, "unvalidated", "unknown_key", before)


def test_node_key_cannot_act_as_a_client(env):
    request = env.request(caller=NODE)
    body = request.to_body()
    private = load_private_key(env.keys / "evil-node.key")
    public = private.public_key()
    signature = private.sign(b"collective/1 request\n" + body)
    wire = encode_wire("ed25519", key_id(public), signature, body)
    before = env.counter("unvalidated")
    env.send(wire)
    assert env.wait_for(lambda: env.counter("unvalidated") == before + 1)
    time.sleep(0.2)
    assert env.canary_lines() == []
    assert public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_revoked_key_stops_working_after_reload(env):
    (env.trust / "clients" / "bob.pub").unlink()
    env.daemon.reload()
    before = env.counter("unvalidated")
    env.send(env.signed(env.request(caller="cert=bob"), as_name="bob"))
    assert_refused(env, "unvalidated", "unknown_key", before)


def test_oversized_message_is_refused_before_parsing(env):
    before = env.counter("oversize")
    env.send(b'{"v":1,"body":"' + b"A" * (600 * 1024) + b'"}')
    assert_refused(env, "oversize", "oversize", before)


@pytest.mark.parametrize("wire", [b"not json", b"[" * 5000, b'{"v":1,"v":1}', b'{"v":NaN}', b"\xff\xfe"])
def test_malformed_messages_are_counted_and_the_daemon_keeps_serving(env, wire):
    before = env.counter("unvalidated")
    env.send(wire)
    assert env.wait_for(lambda: env.counter("unvalidated") == before + 1)
    env.send(env.signed(env.request()))
    assert env.wait_for(lambda: len(env.canary_lines()) == 1)


@pytest.mark.parametrize("action", ["__init__", "__class__", "_log", "ddl", "activate"])
def test_only_declared_actions_can_be_dispatched(env, action):
    env.send(env.signed(env.request(action=action, data={})))
    assert env.wait_for(lambda: len(env.replies) == 1)
    assert env.decoded_replies()[0].statuscode == 2
    assert env.canary_lines() == []


def test_undeclared_input_is_refused_on_the_node(env):
    env.send(env.signed(env.request(data={"marker": "m", "extra": "x; touch /tmp/pwn"})))
    assert env.wait_for(lambda: len(env.replies) == 1)
    assert env.decoded_replies()[0].statuscode == 4
    assert env.canary_lines() == []


def test_malformed_stomp_frame_closes_only_that_connection(tmp_path, collective_broker):
    env = Env(tmp_path, {"port": collective_broker.port})
    try:
        _malformed_frame(env, collective_broker)
    finally:
        env.close()


def _malformed_frame(env, collective_broker):
    with socket.create_connection(("127.0.0.1", collective_broker.port), timeout=5) as sock:
        sock.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n\n\0GARBAGE FRAME\nno colon here\n\n\0")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert b"ERROR" in data
    env.send(env.signed(env.request()))
    assert env.wait_for(lambda: len(env.canary_lines()) == 1)


def test_forged_reply_is_dropped_by_the_client(env):
    """A trusted but different node key signing a reply 'from' node-x is not accepted."""
    client = Client(env.client_config("alice"), pm=get_plugin_manager(load_entrypoints=False,
                                                                       plugins=[canary_plugin]))
    forger = Ed25519Provider(Config({"identity": "evil-node", "security": {
        "private_key": str(env.keys / "evil-node.key"), "trust_dir": str(env.trust)}},
        kind="server", env={}), role="node")
    client.connect()
    original = client._connector.publish

    def intercept(dest, wire, ttl=None):
        if dest.kind == "directed":
            request = RequestMessage.from_body(base64.b64decode(json.loads(wire)["body"]))
            body = base64.b64decode(json.loads(wire)["body"])
            fake = ReplyMessage.for_request(body, request, NODE, 0, "OK", {"ran": True})
            threading.Timer(0.05, original, (Destination.reply("mcollective", client.reply_dest.name),
                                             forger.sign(fake.to_body(), "reply"))).start()
            return None
        return original(dest, wire, ttl=ttl)

    client._connector.publish = intercept
    try:
        result = client.rpc("canary", "run", {"marker": "m"}, nodes=[NODE], timeout=1.5)
    finally:
        client.close()
    assert result.replies == []
    assert result.stats.no_response == [NODE]
    assert result.stats.forged_replies >= 1


def test_slow_actions_do_not_stop_rpcutil_and_overflow_is_busy(tmp_path, broker):
    environment = Env(tmp_path, broker,
                      server_extra={"server": {"max_concurrent": 2, "max_queued": 1}})
    try:
        client = Client(environment.client_config("alice"),
                        pm=get_plugin_manager(load_entrypoints=False, plugins=[canary_plugin]))
        for n in range(4):
            environment.send(environment.signed(environment.request(action="sleep", data={"seconds": 2.5, "marker": f"s{n}"})))
        assert environment.wait_for(lambda: environment.counter("busy") == 1)
        started = time.monotonic()
        result = client.rpc("rpcutil", "ping", nodes=[NODE], timeout=5)
        assert time.monotonic() - started < 1.0
        assert [r.statuscode for r in result.replies] == [0]
        client.close()
        busy = [r for r in environment.decoded_replies() if "busy" in r.statusmsg]
        assert len(busy) == 1 and busy[0].statuscode == 1
    finally:
        environment.close()


def test_action_past_its_ddl_timeout_gets_a_status_5_reply(env):
    env.send(env.signed(env.request(action="sleep", data={"seconds": 4.5, "marker": "slow"})))
    assert env.wait_for(lambda: len(env.replies) == 1, timeout=6)
    reply = env.decoded_replies()[0]
    assert reply.statuscode == 5 and "timed out after 3s" in reply.statusmsg
    assert env.counter("timeouts") == 1
