"""Logins, per-destination permissions, global limits and message retention of the
embedded broker, over real sockets on 127.0.0.1 (stomp.py clients and raw frames)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stomp

from collective.broker import BrokerAuth, BrokerLimits, EmbeddedBroker, User, hash_password
from collective.broker.auth import ROLES, Permissions, compile_pattern, verify_password
from collective.broker.config import BrokerConfigError, load_broker_config, parse_broker_config
from collective.broker.frames import SERVER_COMMANDS, FrameParser, encode_frame
from collective.testing import wait_for

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
N = 16  # cheap scrypt for tests




def user(login: str, role: str, password: str = "pw") -> User:
    return User(login, ROLES[role], password_hash=hash_password(password, n=N), role=role)


class Raw:
    """A raw STOMP socket: send frames, read frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.parser = FrameParser(commands=SERVER_COMMANDS)
        self.frames: list[Any] = []
        self.messages: list[Any] = []

    def send(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(command, headers, body))

    def connect(self, login: str | None = None, passcode: str | None = None) -> Any:
        headers = {"accept-version": "1.2"}
        if login is not None:
            headers.update(login=login, passcode=passcode or "")
        self.send("CONNECT", headers)
        return self.read()

    def read(self) -> Any:
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)

    def read_until_closed(self) -> list[Any]:
        out = []
        try:
            while True:
                out.append(self.read())
        except (EOFError, OSError):
            return out

    def request(self, command: str, headers: dict[str, str], body: bytes = b"") -> Any:
        """Send with a receipt; the RECEIPT, or the ERROR that answers instead."""
        rid = f"r{time.monotonic_ns()}"
        self.send(command, {**headers, "receipt": rid}, body)
        frame = self.read()
        while frame.command == "MESSAGE":
            self.messages.append(frame)
            frame = self.read()
        assert frame.headers.get("receipt-id") == rid, frame
        return frame

    def message(self) -> Any:
        """The next MESSAGE (one that arrived before a receipt first)."""
        return self.messages.pop(0) if self.messages else self.read()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raws() -> Iterator[Callable[[int], Raw]]:
    made: list[Raw] = []

    def make(port: int) -> Raw:
        made.append(Raw(port))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def secured() -> Iterator[EmbeddedBroker]:
    auth = BrokerAuth([user("node-001", "node"), user("node-002", "node"),
                       user("admin", "client"), user("bob", "client"), user("ops", "admin")])
    broker = EmbeddedBroker(HOST, 0, auth=auth).start()
    yield broker
    broker.stop()


# -- passwords and patterns ------------------------------------------------------------------


def test_password_hash_round_trip_and_format() -> None:
    stored = hash_password("s3cret", n=N)
    assert stored.startswith(f"scrypt${N}$8$1$") and "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret ", stored)
    assert hash_password("s3cret", n=N) != stored  # salted
    with pytest.raises(ValueError, match="not a password hash"):
        User("x", Permissions(), password_hash="plain-text")


@pytest.mark.parametrize(("pattern", "user_name", "dest", "expected"), [
    ("/queue/*.node.{user}", "node-001", "/queue/mcollective.node.node-001", True),
    ("/queue/*.node.{user}", "node-001", "/queue/mcollective.node.node-002", False),
    ("/queue/*.node.{user}", "b", "/queue/c.node.a.node.b", False),     # '*' is one segment
    ("/queue/*.reply.{user}.*", "bob", "/queue/mc.reply.bob.abc", True),
    ("/queue/*.reply.{user}.*", "bob", "/queue/mc.reply.bob.x.y", False),
    ("/queue/*.reply.{user}.*", "a", "/queue/mc.reply.a.reply.a.t", False),
    ("/queue/*.reply.{user}.*", "a.b", "/queue/mc.reply.a.b.t", True),  # {user} is literal
    ("/queue/*.reply.{user}.*", "a.b", "/queue/mc.reply.aXb.t", False),
    ("/queue/*.reply.**", "n", "/queue/mc.reply.bob.x", True),
    ("**", "n", "/topic/anything/at.all", True),
    ("/topic/*.broadcast.*", "n", "/topic/mc.broadcast.rpcutil", True),
    ("/topic/*.broadcast.*", "n", "/queue/mc.broadcast.rpcutil", False),
])
def test_patterns(pattern: str, user_name: str, dest: str, expected: bool) -> None:
    assert bool(compile_pattern(pattern, user_name).match(dest)) is expected


def test_pattern_with_an_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(ValueError, match="only placeholder"):
        compile_pattern("/queue/{identity}", "x")


# -- logins --------------------------------------------------------------------------------


def test_a_login_is_required_and_checked(secured: EmbeddedBroker, raws: Callable[[int], Raw]) -> None:
    for login, passcode in ((None, None), ("admin", "wrong"), ("nobody", "pw"), ("", "")):
        r = raws(secured.port)
        frame = r.connect(login, passcode)
        assert (frame.command, frame.headers["message"]) == ("ERROR", "authentication failed")
        assert r.read_until_closed() == []
    assert raws(secured.port).connect("admin", "pw").command == "CONNECTED"
    # a second login of the same user is answered from the cache (same result)
    assert raws(secured.port).connect("admin", "pw").command == "CONNECTED"
    assert raws(secured.port).connect("admin", "pwx").command == "ERROR"
    assert secured.stats()["auth_failures"] == 5


def test_frames_pipelined_behind_connect_wait_for_the_password_check(
        secured: EmbeddedBroker, raws: Callable[[int], Raw]) -> None:
    r = raws(secured.port)
    r.sock.sendall(
        encode_frame("CONNECT", {"accept-version": "1.2", "login": "node-001", "passcode": "pw"})
        + encode_frame("SUBSCRIBE", {"id": "1", "destination": "/queue/mcollective.node.node-001",
                                     "receipt": "s"})
        + encode_frame("SUBSCRIBE", {"id": "2", "destination": "/queue/mcollective.node.node-002",
                                     "receipt": "t"}))
    assert r.read().command == "CONNECTED"
    assert (r.read().command, r.read().headers.get("message")) == ("RECEIPT", "access refused")


def test_stomp_py_logs_in_with_a_password(secured: EmbeddedBroker) -> None:
    conn = stomp.Connection12([(HOST, secured.port)], auto_decode=False, reconnect_attempts_max=1)
    conn.connect("bob", "pw", wait=True)
    assert conn.is_connected()
    conn.disconnect()


# -- permissions -----------------------------------------------------------------------------


def test_node_reads_only_its_own_queue_and_the_broadcasts(
        secured: EmbeddedBroker, raws: Callable[[int], Raw]) -> None:
    node = raws(secured.port)
    node.connect("node-002", "pw")
    ok = {"/queue/mcollective.node.node-002", "/topic/mcollective.broadcast.rpcutil"}
    refused = {"/queue/mcollective.node.node-001", "/queue/mcollective.reply.admin.0123",
               "/topic/mcollective.registration", "/queue/x"}
    for i, dest in enumerate(sorted(ok | refused)):
        frame = node.request("SUBSCRIBE", {"id": str(i), "destination": dest})
        assert (frame.command == "RECEIPT") is (dest in ok), (dest, frame)
        if dest in refused:
            assert frame.headers["message"] == "access refused"
    # writes: replies and registrations only, never a request
    for dest, allowed in (("/queue/mcollective.reply.admin.0123", True),
                          ("/topic/mcollective.registration", True),
                          ("/topic/mcollective.broadcast.rpcutil", False),
                          ("/queue/mcollective.node.node-001", False)):
        frame = node.request("SEND", {"destination": dest}, b"x")
        assert (frame.command == "RECEIPT") is allowed, (dest, frame)
    assert secured.stats()["denied"] == len(refused) + 2


def test_a_node_cannot_take_another_nodes_requests(secured: EmbeddedBroker,
                                                   raws: Callable[[int], Raw]) -> None:
    victim, thief, client = raws(secured.port), raws(secured.port), raws(secured.port)
    victim.connect("node-001", "pw")
    thief.connect("node-002", "pw")
    client.connect("admin", "pw")
    assert thief.request("SUBSCRIBE", {"id": "1", "destination": "/queue/mcollective.node.node-001"}
                         ).command == "ERROR"
    assert victim.request("SUBSCRIBE", {"id": "1", "destination": "/queue/mcollective.node.node-001"}
                          ).command == "RECEIPT"
    for i in range(4):
        assert client.request("SEND", {"destination": "/queue/mcollective.node.node-001"},
                              b"req%d" % i).command == "RECEIPT"
    got = [victim.message().body for _ in range(4)]
    assert got == [b"req0", b"req1", b"req2", b"req3"]


def test_a_client_reads_only_its_own_reply_queues(secured: EmbeddedBroker,
                                                  raws: Callable[[int], Raw]) -> None:
    bob = raws(secured.port)
    bob.connect("bob", "pw")
    assert bob.request("SUBSCRIBE", {"id": "1", "destination": "/queue/mcollective.reply.admin.feed"}
                       ).headers.get("message") == "access refused"
    assert bob.request("SUBSCRIBE", {"id": "2", "destination": "/queue/mcollective.node.node-001"}
                       ).command == "ERROR"
    assert bob.request("SUBSCRIBE", {"id": "3", "destination": "/queue/mcollective.reply.bob.feed"}
                       ).command == "RECEIPT"
    assert bob.request("SEND", {"destination": "/topic/mcollective.broadcast.rpcutil"}, b"x"
                       ).command == "RECEIPT"
    # the admin role may do anything
    ops = raws(secured.port)
    ops.connect("ops", "pw")
    assert ops.request("SUBSCRIBE", {"id": "1", "destination": "/queue/mcollective.reply.admin.feed"}
                       ).command == "RECEIPT"


def test_a_refused_send_in_a_transaction_is_refused_at_once(
        secured: EmbeddedBroker, raws: Callable[[int], Raw]) -> None:
    node = raws(secured.port)
    node.connect("node-001", "pw")
    assert node.request("BEGIN", {"transaction": "t"}).command == "RECEIPT"
    frame = node.request("SEND", {"destination": "/topic/mcollective.broadcast.x", "transaction": "t"})
    assert frame.headers.get("message") == "access refused"


# -- limits --------------------------------------------------------------------------------


def test_global_storage_limit_refuses_with_an_error_and_keeps_the_connection(
        raws: Callable[[int], Raw]) -> None:
    limits = BrokerLimits(max_stored_bytes=64 * 1024, max_stored_messages=1000)
    broker = EmbeddedBroker(HOST, 0, limits=limits).start()
    try:
        r = raws(broker.port)
        r.connect()
        body = b"x" * 10_000
        answers = [r.request("SEND", {"destination": f"/queue/flood.{i}"}, body) for i in range(20)]
        stored = [a for a in answers if a.command == "RECEIPT"]
        refused = [a for a in answers if a.command == "ERROR"]
        assert len(stored) == 6 and len(refused) == 14
        assert refused[0].headers["message"] == "broker storage full"
        stats = broker.stats()
        assert stats["queued_bytes"] <= limits.max_stored_bytes
        assert stats["queues"] == 6  # refused sends leave no empty queue behind
        assert stats["refused_storage_full"] == 14
        # the same connection goes on working, and so does delivery
        assert r.request("SUBSCRIBE", {"id": "1", "destination": "/queue/flood.0"}).command == "RECEIPT"
        assert r.message().body == body
    finally:
        broker.stop()


def test_queue_count_limit(raws: Callable[[int], Raw]) -> None:
    broker = EmbeddedBroker(HOST, 0, limits=BrokerLimits(max_queues=3)).start()
    try:
        r = raws(broker.port)
        r.connect()
        answers = [r.request("SUBSCRIBE", {"id": str(i), "destination": f"/queue/q{i}"}).command
                   for i in range(5)]
        assert answers == ["RECEIPT"] * 3 + ["ERROR"] * 2
        assert broker.stats()["queues"] == 3 and broker.stats()["refused_queue_limit"] == 2
    finally:
        broker.stop()


def test_unauthenticated_and_per_user_connection_limits(raws: Callable[[int], Raw]) -> None:
    limits = BrokerLimits(max_unauthenticated=2, max_connections_per_user=2, connect_timeout=30)
    broker = EmbeddedBroker(HOST, 0, limits=limits, auth=BrokerAuth([user("a", "client")])).start()
    try:
        idle = [raws(broker.port), raws(broker.port)]  # connected, never log in
        assert wait_for(lambda: broker.stats()["unauthenticated"] == 2)
        frames = raws(broker.port).read_until_closed()
        assert frames[0].headers["message"] == "too many connections waiting to log in"
        for r in idle:
            r.close()
        assert wait_for(lambda: broker.stats()["unauthenticated"] == 0)
        sessions = [raws(broker.port), raws(broker.port)]
        assert [s.connect("a", "pw").command for s in sessions] == ["CONNECTED"] * 2
        third = raws(broker.port)
        frame = third.connect("a", "pw")
        assert frame.headers["message"] == "too many connections for this user"
        sessions[0].close()
        assert wait_for(lambda: broker.stats()["connections"] == 1)
        assert raws(broker.port).connect("a", "pw").command == "CONNECTED"
    finally:
        broker.stop()


# -- expiry and unclaimed messages ----------------------------------------------------------


def test_expiration_header_relative_ms_is_honoured(raws: Callable[[int], Raw]) -> None:
    broker = EmbeddedBroker(HOST, 0, limits=BrokerLimits(sweep_interval=0.05)).start()
    try:
        r = raws(broker.port)
        r.connect()
        r.request("SEND", {"destination": "/queue/exp", "expiration": "100"}, b"short")
        r.request("SEND", {"destination": "/queue/exp", "expiration": "60000"}, b"long")
        r.request("SEND", {"destination": "/queue/exp",
                           "expires": str(int(time.time() * 1000) + 100)}, b"absolute")
        assert wait_for(lambda: broker.stats()["expired"] == 2)
        r.request("SUBSCRIBE", {"id": "1", "destination": "/queue/exp"})
        assert r.message().body == b"long"
        assert broker.stats()["queued_messages"] == 0
    finally:
        broker.stop()


def test_replies_nobody_claims_are_dropped_with_their_queue(raws: Callable[[int], Raw]) -> None:
    """Replies for a client that is gone (no expiry header) do not stay forever."""
    limits = BrokerLimits(sweep_interval=0.05, queue_idle_expires=0.5)
    broker = EmbeddedBroker(HOST, 0, limits=limits).start()
    try:
        client, node = raws(broker.port), raws(broker.port)
        client.connect()
        node.connect()
        client.request("SUBSCRIBE", {"id": "1", "destination": "/queue/mc.reply.gone.1"})
        client.close()  # the client goes away
        assert wait_for(lambda: broker.stats()["subscriptions"] == 0)
        for i in range(10):
            node.request("SEND", {"destination": "/queue/mc.reply.gone.1"}, b"reply %d" % i)
        assert broker.stats()["queued_messages"] == 10
        assert wait_for(lambda: broker.stats()["queues"] == 0, timeout=10)
        stats = broker.stats()
        assert (stats["queued_messages"], stats["queued_bytes"], stats["dropped_unclaimed"]) == (0, 0, 10)
    finally:
        broker.stop()


def test_messages_older_than_max_message_age_are_dropped(raws: Callable[[int], Raw]) -> None:
    limits = BrokerLimits(sweep_interval=0.05, max_message_age=0.3, queue_idle_expires=0)
    broker = EmbeddedBroker(HOST, 0, limits=limits).start()
    try:
        r = raws(broker.port)
        r.connect()
        r.request("SEND", {"destination": "/queue/old"}, b"old")
        assert wait_for(lambda: broker.stats()["dropped_unclaimed"] == 1)
        r.request("SEND", {"destination": "/queue/old"}, b"new")
        r.request("SUBSCRIBE", {"id": "1", "destination": "/queue/old"})
        assert r.message().body == b"new"
    finally:
        broker.stop()


# -- the config file and mco broker ---------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(text)
    return path


def test_config_file_builds_listeners_users_and_limits(tmp_path: Path) -> None:
    h = hash_password("pw", n=N)
    conf = load_broker_config(write_config(tmp_path, f"""
listeners: [{{host: 127.0.0.1, port: 0}}, {{host: 127.0.0.1, port: 0}}]
users:
  node-001: {{password_hash: "{h}", role: node}}
  watcher: {{password_hash: "{h}", role: collector, write: ["/queue/extra"]}}
roles:
  collector: {{read: ["/topic/*.registration"]}}
limits: {{max_queues: 7, max_message_age: 30}}
"""))
    assert [(lst.host, lst.port) for lst in conf.listeners] == [(HOST, 0), (HOST, 0)]
    assert conf.limits.max_queues == 7 and conf.limits.max_message_age == 30
    watcher = conf.auth.users["watcher"]
    assert watcher.may_read("/topic/mcollective.registration")
    assert watcher.may_write("/queue/extra") and not watcher.may_write("/queue/other")
    broker = EmbeddedBroker(auth=conf.auth, listeners=conf.listeners, limits=conf.limits).start()
    try:
        ports = [lst.port for lst in broker.listeners]
        assert len(set(ports)) == 2 and 0 not in ports
        for port in ports:
            r = Raw(port)
            assert r.connect("node-001", "pw").command == "CONNECTED"
            r.close()
    finally:
        broker.stop()


@pytest.mark.parametrize(("text", "message"), [
    ("users: {}", "users: {} should be non-empty"),
    ("listeners: [{port: 1}]", "(top level): 'users' is a required property"),
    ("users: {a: {role: node}}", "users.a: 'password_hash' is a required property"),
    ("users: {a: {password_hash: x, role: node}}", "users.a.password_hash: not a password hash"),
    ("users: {a: {password_hash: HASH, role: nod}}", "users.a.role: 'nod' is not one of admin"),
    ("users: {a: {password_hash: HASH}}", "users.a: give a role"),
    ("users: {a: {password_hash: HASH, role: node, password: x}}", "users.a.password: unknown key"),
    ("users: {a: {password_hash: HASH, role: node}}\nlimits: {max_queus: 3}",
     "limits.max_queus: unknown key"),
    ("users: {a: {password_hash: HASH, role: node}}\nlisteners: [{port: 70000}]",
     "listeners.0.port: 70000 is greater than the maximum"),
    ("users: {a: {password_hash: HASH, role: node}}\n"
     "listeners: [{port: 1, tls: {cert_file: nope.pem, key_file: nope.key}}]",
     "listeners.0.tls.cert_file: cannot load"),
    ("users: {'a b': {password_hash: HASH, role: node}}", "users.a b: invalid broker login"),
    ("users: {a: {password_hash: HASH, read: ['/queue/{identity}']}}", "users.a: "),
    ("users: [", "not valid YAML"),
])
def test_bad_config_gives_one_error_naming_file_and_key(tmp_path: Path, text: str,
                                                        message: str) -> None:
    path = write_config(tmp_path, text.replace("HASH", hash_password("pw", n=N)))
    with pytest.raises(BrokerConfigError) as info:
        load_broker_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_parse_rejects_a_non_mapping() -> None:
    with pytest.raises(BrokerConfigError, match="expected a mapping"):
        parse_broker_config(["users"])


def mco_broker(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collective", "broker", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_mco_broker_requires_a_config_with_users(tmp_path: Path) -> None:
    proc = mco_broker()
    assert proc.returncode == 2 and "--config FILE is required" in proc.stderr
    bad = write_config(tmp_path, "users: {a: {password_hash: x, role: node}}")
    proc = mco_broker("--config", str(bad))
    assert proc.returncode == 1
    assert f"{bad}: users.a.password_hash: not a password hash" in proc.stderr


def test_mco_broker_hash_password_then_serve_with_it(tmp_path: Path) -> None:
    proc = mco_broker("--hash-password", stdin="correct horse\n")
    assert proc.returncode == 0, proc.stderr
    stored = proc.stdout.strip()
    assert verify_password("correct horse", stored)
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    path = write_config(tmp_path, f'listeners: [{{port: {port}}}]\n'
                                  f'users: {{admin: {{password_hash: "{stored}", role: client}}}}\n')
    broker = subprocess.Popen([sys.executable, "-m", "collective", "broker", "--config", str(path),
                               "--pidfile", str(tmp_path / "b.pid")],
                              stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for((tmp_path / "b.pid").exists, timeout=20)
        assert Raw(port).connect().headers["message"] == "authentication failed"
        assert Raw(port).connect("admin", "correct horse").command == "CONNECTED"
    finally:
        broker.terminate()
        broker.wait(10)
        if broker.stderr:
            broker.stderr.close()


def _pki(tmp: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker test CA")])

    def cert(name: str, key: Any, issuer: x509.Name, signer: Any, ca: bool = False) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]) if not ca else ca_name)
            .issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    out: dict[str, Path] = {}
    ca = cert("ca", ca_key, ca_name, ca_key, ca=True)
    out["ca"] = tmp / "ca.pem"
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        out[f"{name}_cert"] = tmp / f"{name}.pem"
        out[f"{name}_cert"].write_bytes(cert(name, key, ca_name, ca_key).public_bytes(
            serialization.Encoding.PEM))
        out[f"{name}_key"] = tmp / f"{name}.key"
        out[f"{name}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return out


def test_tls_listener_requiring_a_client_certificate(tmp_path: Path) -> None:
    import ssl

    pki = _pki(tmp_path)
    h = hash_password("pw", n=N)
    conf = load_broker_config(write_config(tmp_path, f"""
listeners:
  - host: 127.0.0.1
    port: 0
    tls: {{cert_file: server.pem, key_file: server.key, ca_file: ca.pem, require_client_cert: true}}
users: {{admin: {{password_hash: "{h}", role: client}}}}
"""))
    broker = EmbeddedBroker(auth=conf.auth, listeners=conf.listeners).start()
    try:
        def connect(with_cert: bool) -> bytes:
            context = ssl.create_default_context(cafile=str(pki["ca"]))
            if with_cert:
                context.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
            with socket.create_connection((HOST, broker.port), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.sendall(encode_frame("CONNECT", {"accept-version": "1.2", "login": "admin",
                                                     "passcode": "pw"}))
                return tls.recv(4096)

        assert connect(with_cert=True).startswith(b"CONNECTED")
        try:  # TLS 1.3 reports the missing certificate after the handshake: an alert or EOF
            answer = connect(with_cert=False)
        except (ssl.SSLError, OSError):
            answer = b""
        assert not answer.startswith(b"CONNECTED")
        assert broker.stats()["connections_total"] == 1  # the refused one never got a session
    finally:
        broker.stop()
