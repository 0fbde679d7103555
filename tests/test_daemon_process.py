"""collectived as a real process: version, bad config, signals, broken plugins, broker outages,
subcollectives and TLS to the broker."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import collective_test_canary.plugin as canary_plugin
from collective.broker import EmbeddedBroker
from collective.client import Client, ClientError
from collective.config import Config
from collective.connectors.stomp import ConnectorError, StompConnector
from collective.plugins import get_plugin_manager
from collective.security.keys import generate_keypair
from collective.server.daemon import Daemon
from collective.testing import wait_for_ping
from collective.testing.processes import free_port


def make_keys(tmp: Path, nodes: list[str]) -> tuple[Path, Path]:
    keys, trust = tmp / "keys", tmp / "trust"
    for sub in ("clients", "nodes"):
        (trust / sub).mkdir(parents=True, exist_ok=True)
    generate_keypair("admin", keys)
    shutil.copy(keys / "admin.pub", trust / "clients" / "admin.pub")
    for node in nodes:
        generate_keypair(node, keys)
        shutil.copy(keys / f"{node}.pub", trust / "nodes" / f"{node}.pub")
    return keys, trust


def server_yaml(tmp: Path, identity: str, port: int, **extra) -> Path:
    keys, trust = tmp / "keys", tmp / "trust"
    data = {"identity": identity, "broker": {"port": port, "heartbeat_ms": 2000},
            "security": {"private_key": str(keys / f"{identity}.key"), "trust_dir": str(trust)},
            "audit": {"file": str(tmp / f"{identity}.audit")},
            "authorization": {"provider": "callers", "callers": ["cert=admin"]},
            "logging": {"file": str(tmp / f"{identity}.log")}, **extra}
    path = tmp / f"{identity}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def client_config(tmp: Path, port: int, **extra) -> Config:
    return Config({"identity": "admin-client", "broker": {"port": port, "heartbeat_ms": 2000},
                   "security": {"identity": "admin", "private_key": str(tmp / "keys" / "admin.key"),
                                "trust_dir": str(tmp / "trust")}, **extra}, kind="client", env={})


def start_daemon(config: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "collective.server.main", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})




@pytest.fixture
def proc_cleanup():
    procs: list[subprocess.Popen] = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_version_lists_plugins():
    out = subprocess.run([sys.executable, "-m", "collective.server.main", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("collectived 0.1.0")
    assert "test-canary-0.1.0 (collective-test-canary): ok" in out.stdout


@pytest.mark.parametrize(("text", "message"), [
    ("broker:\n  port: nope\n", "broker.port: 'nope' is not of type 'integer'"),
    ("security:\n  provider: ed2551\n", "Did you mean 'ed25519'"),
    ("bogus: 1\n", "bogus: unknown key"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, message):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "collective.server.main", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr
    assert str(path) in out.stderr or "Did you mean" in out.stderr
    assert "Traceback" not in out.stderr


def test_world_readable_private_key_is_refused(tmp_path):
    make_keys(tmp_path, ["n1"])
    os.chmod(tmp_path / "keys" / "n1.key", 0o644)
    out = subprocess.run([sys.executable, "-m", "collective.server.main", "-c",
                          str(server_yaml(tmp_path, "n1", 61999))], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "n1.key" in out.stderr and "644" in out.stderr


def test_sigterm_stops_cleanly_and_sighup_reloads_the_trust_store(tmp_path, collective_broker, proc_cleanup):
    make_keys(tmp_path, ["n1"])
    pidfile = tmp_path / "n1.pid"
    proc = start_daemon(server_yaml(tmp_path, "n1", collective_broker.port, server={"pidfile": str(pidfile)}))
    proc_cleanup(proc)
    cfg = client_config(tmp_path, collective_broker.port)
    assert wait_for_ping(cfg, "n1"), proc.stderr.read() if proc.poll() is not None else "no answer"
    assert pidfile.read_text().strip() == str(proc.pid)
    # revoke the client's key, SIGHUP: the node no longer accepts it, and keeps running
    (tmp_path / "trust" / "clients" / "admin.pub").unlink()
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    with Client(cfg) as client:
        assert client.ping(expected=["n1"], timeout=1.5).replies == []
    assert proc.poll() is None
    assert "unknown_key" in (tmp_path / "n1.audit").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not pidfile.exists()


def test_broken_plugin_is_skipped_and_the_daemon_serves(tmp_path, collective_broker, proc_cleanup):
    site = tmp_path / "site"
    dist = site / "collective_agent_broken-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: collective-agent-broken\nVersion: 0.1\n"
                                   "Requires-Dist: collective-core>=0.1,<0.2\n")
    (dist / "entry_points.txt").write_text("[collective]\nagent-broken = collective_agent_broken.plugin\n")
    (site / "collective_agent_broken").mkdir()
    (site / "collective_agent_broken" / "__init__.py").write_text("")
    (site / "collective_agent_broken" / "plugin.py").write_text("import no_such_module_xyz\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    listing = subprocess.run([sys.executable, "-m", "collective", "plugin", "list"], capture_output=True,
                             text=True, timeout=60, env={**os.environ, **env})
    assert listing.returncode == 0
    assert "agent-broken" in listing.stdout and "failed: ModuleNotFoundError" in listing.stdout
    assert "test-canary" in listing.stdout and "agents: canary, checksim, lb, pkgsim" in listing.stdout
    make_keys(tmp_path, ["n1"])
    proc = start_daemon(server_yaml(tmp_path, "n1", collective_broker.port), env=env)
    proc_cleanup(proc)
    assert wait_for_ping(client_config(tmp_path, collective_broker.port), "n1")
    assert 'While loading plugin "agent-broken"' in (tmp_path / "n1.log").read_text()


def test_daemon_waits_for_a_broker_that_is_down_at_start(tmp_path, proc_cleanup):
    port = free_port()
    make_keys(tmp_path, ["n1"])
    proc = start_daemon(server_yaml(tmp_path, "n1", port))
    proc_cleanup(proc)
    time.sleep(2.0)
    assert proc.poll() is None
    broker = EmbeddedBroker(port=port).start()
    try:
        assert wait_for_ping(client_config(tmp_path, port), "n1", timeout=40)
    finally:
        broker.stop()


def test_client_gives_up_quickly_when_the_broker_is_down(tmp_path):
    make_keys(tmp_path, [])
    cfg = client_config(tmp_path, free_port(), broker={"port": free_port(), "connect_timeout": 1.0})
    started = time.monotonic()
    with pytest.raises(ClientError, match="could not connect"):
        Client(cfg).connect()
    assert time.monotonic() - started < 3


def in_process(tmp: Path, identity: str, broker: dict, **extra) -> Daemon:
    cfg = Config({"identity": identity, "broker": broker,
                  "security": {"private_key": str(tmp / "keys" / f"{identity}.key"),
                               "trust_dir": str(tmp / "trust")},
                  "audit": {"file": str(tmp / f"{identity}.audit")},
                  "authorization": {"provider": "callers", "callers": ["cert=admin"]},
                  **extra}, kind="server", env={})
    daemon = Daemon(cfg, pm=get_plugin_manager(load_entrypoints=False, plugins=[canary_plugin]))
    daemon.start(connect_timeout=10)
    return daemon


def test_daemons_resubscribe_after_a_broker_restart(tmp_path):
    make_keys(tmp_path, ["n1", "n2"])
    broker = EmbeddedBroker(port=0).start()
    port = broker.port
    section = {"port": port, "heartbeat_ms": 1000, "reconnect_max": 1.0}
    daemons = [in_process(tmp_path, name, section) for name in ("n1", "n2")]
    try:
        cfg = client_config(tmp_path, port, broker=section)
        with Client(cfg) as client:
            assert len(client.ping(expected=["n1", "n2"], timeout=3).replies) == 2
        broker.stop()
        time.sleep(1.0)
        broker.start()
        deadline = time.monotonic() + 15
        answered: set[str] = set()
        while time.monotonic() < deadline and answered != {"n1", "n2"}:
            try:
                with Client(cfg) as client:
                    answered = {r.sender for r in client.ping(expected=["n1", "n2"], timeout=1).replies}
            except ClientError:
                time.sleep(0.2)
        assert answered == {"n1", "n2"}
        assert all(d.stats()["connector"]["reconnects"] >= 1 for d in daemons)
    finally:
        for daemon in daemons:
            daemon.stop()
        broker.stop()


def test_subcollectives(tmp_path, collective_broker):
    make_keys(tmp_path, ["uk1", "us1"])
    section = {"port": collective_broker.port}
    uk = in_process(tmp_path, "uk1", section, collectives=["mcollective", "uk"])
    us = in_process(tmp_path, "us1", section, collectives=["mcollective", "us"])
    try:
        cfg = client_config(tmp_path, collective_broker.port, collectives=["mcollective", "uk", "us"])
        for collective, expected in (("mcollective", ["uk1", "us1"]), ("uk", ["uk1"]), ("us", ["us1"])):
            with Client(cfg, collective=collective) as client:
                assert client.discover(timeout=1.0) == expected
                result = client.rpc("rpcutil", "collective_info", nodes=expected)
                assert [r.sender for r in result.ok] == expected
        # -T reaches a collective the nodes are in, even one the client config lacks
        only_main = client_config(tmp_path, collective_broker.port, collectives=["mcollective"])
        with Client(only_main, collective="uk") as client:
            assert client.discover(timeout=1.0) == ["uk1"]
            assert [r.sender for r in client.rpc("rpcutil", "collective_info",
                                                 nodes=["uk1"]).ok] == ["uk1"]
        with Client(only_main, collective="de") as client:  # nobody there
            assert client.discover(timeout=0.5) == []
        with pytest.raises(ClientError, match="not a valid collective name"):
            Client(cfg, collective="../x")
    finally:
        uk.stop()
        us.stop()


def _ca_and_cert(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def write(path: Path, data: bytes) -> Path:
        path.write_bytes(data)
        os.chmod(path, 0o600)
        return path

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (write(tmp / f"{name}-ca.pem", ca.public_bytes(pem)),
            write(tmp / f"{name}-cert.pem", cert.public_bytes(pem)),
            write(tmp / f"{name}-key.pem", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption())))


def test_tls_to_the_broker_with_a_ca_and_refusal_with_another_ca(tmp_path):
    ca, cert, key = _ca_and_cert(tmp_path, "good")
    other_ca, _, _ = _ca_and_cert(tmp_path, "other")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    broker = EmbeddedBroker(port=0, ssl_context=context).start()
    make_keys(tmp_path, ["n1"])
    section = {"port": broker.port, "tls": {"enabled": True, "ca_file": str(ca)}}
    daemon = in_process(tmp_path, "n1", section)
    try:
        with Client(client_config(tmp_path, broker.port, broker=section)) as client:
            assert [r.sender for r in client.ping(expected=["n1"], timeout=3).replies] == ["n1"]
        bad = Config({"broker": {"port": broker.port, "connect_timeout": 2.0,
                                 "tls": {"enabled": True, "ca_file": str(other_ca)}}}, env={})
        connector = StompConnector(bad, "wrong-ca")
        with pytest.raises(ConnectorError):
            connector.connect(timeout=2.0)
        connector.disconnect()
    finally:
        daemon.stop()
        broker.stop()


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(tmp_path):
    old = os.umask(0)
    try:
        out = subprocess.run([sys.executable, "-m", "collective", "keys", "generate", "alice",
                              "--dir", str(tmp_path / "k")], capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    assert out.returncode == 0, out.stderr
    assert oct((tmp_path / "k" / "alice.key").stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "k" / "alice.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    again = subprocess.run([sys.executable, "-m", "collective", "keys", "generate", "alice",
                            "--dir", str(tmp_path / "k")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "collective", "keys", "generate", "../evil",
                          "--dir", str(tmp_path / "k")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and not (tmp_path / "evil.key").exists()


def test_mco_help_lists_builtin_and_plugin_commands():
    out = subprocess.run([sys.executable, "-m", "collective", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for command in ("ping", "find", "rpc", "inventory", "facts", "plugin", "broker", "keys", "fleet"):
        assert f"  {command} " in out.stdout
    # the client never imports agent code
    code = ("import sys; from collective.cli.main import cli; from click.testing import CliRunner; "
            "CliRunner().invoke(cli, ['--help']); "
            "sys.exit(1 if any(m.endswith('.agent') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.rabbitmq
def test_rabbitmq_connector_flavour_in_a_daemon(tmp_path, collective_rabbitmq):
    make_keys(tmp_path, ["r1"])
    section = collective_rabbitmq.broker_config()
    daemon = in_process(tmp_path, "r1", section)
    try:
        with Client(client_config(tmp_path, 0, broker=section)) as client:
            result = client.rpc("rpcutil", "get_config_item", {"item": "broker.flavour"}, nodes=["r1"])
        assert [(r.sender, r.data["value"]) for r in result.ok] == [("r1", "rabbitmq")]
    finally:
        daemon.stop()


pytestmark = pytest.mark.timeout(120)
