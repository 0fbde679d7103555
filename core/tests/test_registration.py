"""The registration publisher: what a node publishes, when, and that nothing is fatal."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from types import SimpleNamespace

import pytest

from collective.config import Config
from collective.connectors.destinations import Destination
from collective.connectors.stomp import ConnectorError
from collective.message import MAX_REGISTRATION_BYTES
from collective.security.ed25519 import Ed25519Provider
from collective.security.keys import generate_keypair
from collective.server.registration import RegistrationPublisher


class FakeConnector:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[Destination, bytes, float | None]] = []
        self.event = threading.Event()

    def publish(self, dest, body, ttl=None):
        if self.fail:
            raise ConnectorError("broker is applying flow control or unreachable: test")
        self.sent.append((dest, body, ttl))
        self.event.set()


@pytest.fixture
def keys(tmp_path):
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    for sub in ("clients", "nodes"):
        (trust / sub).mkdir(parents=True)
    for name, kind in (("admin", "clients"), ("n1", "nodes")):
        generate_keypair(name, keys)
        shutil.copy(keys / f"{name}.pub", trust / kind / f"{name}.pub")
    return keys, trust


def providers(keys):
    keys, trust = keys
    node = Ed25519Provider(Config({"identity": "n1", "security": {
        "private_key": str(keys / "n1.key"), "trust_dir": str(trust)}}, kind="server", env={}), "node")
    client = Ed25519Provider(Config({"identity": "c", "security": {
        "identity": "admin", "private_key": str(keys / "admin.key"), "trust_dir": str(trust)}},
        kind="client", env={}), "client")
    return node, client


def fake_daemon(keys, facts=None, fail=False, collectives=("mcollective", "uk")):
    node, _ = providers(keys)
    ddl = SimpleNamespace(metadata={"version": "2.1.0"})
    return SimpleNamespace(
        identity="n1", collectives=list(collectives), clock=lambda: 1_700_000_000.0,
        facts=lambda: facts if facts is not None else {"role": "web"},
        classes=lambda: ["base", "role::web"],
        host=SimpleNamespace(agents={"rpcutil": SimpleNamespace(ddl=ddl),
                                     "nodoc": SimpleNamespace(ddl=None)}),
        security=node, connector=FakeConnector(fail), _stopping=threading.Event())


def test_publishes_one_signed_registration_per_collective(keys):
    daemon = fake_daemon(keys)
    publisher = RegistrationPublisher(daemon, 300)
    assert publisher.publish_once() == 2
    _, client = providers(keys)
    seen = []
    for dest, wire, ttl in daemon.connector.sent:
        verified, registration = client.verify_registration(wire)
        assert verified.signer == "n1"
        assert dest == Destination.registration(registration.collective)
        assert ttl == 600
        seen.append(registration)
    assert [r.collective for r in seen] == ["mcollective", "uk"]
    first = seen[0]
    assert first.collectives == ["mcollective", "uk"]
    assert first.facts == {"role": "web"} and first.classes == ["base", "role::web"]
    assert first.agents == [{"name": "nodoc", "version": None}, {"name": "rpcutil", "version": "2.1.0"}]
    assert first.interval == 300 and first.time == 1_700_000_000_000
    assert publisher.stats == {"published": 2, "failed": 0, "skipped": 0}


def test_oversize_is_logged_and_skipped(keys, caplog):
    daemon = fake_daemon(keys, facts={"blob": "x" * MAX_REGISTRATION_BYTES})
    publisher = RegistrationPublisher(daemon, 60)
    with caplog.at_level(logging.WARNING, logger="collective.server.registration"):
        assert publisher.publish_once() == 0
    assert daemon.connector.sent == []
    assert publisher.stats["skipped"] == 2
    assert "oversize" in caplog.text and "skipped" in caplog.text


def test_unencodable_facts_are_skipped_not_fatal(keys):
    import datetime

    daemon = fake_daemon(keys, facts={"when": datetime.date(2024, 1, 1)})
    publisher = RegistrationPublisher(daemon, 60)
    assert publisher.publish_once() == 0
    assert publisher.stats["skipped"] == 2


def test_publish_failures_are_logged_not_fatal(keys, caplog):
    daemon = fake_daemon(keys, fail=True)
    publisher = RegistrationPublisher(daemon, 0.2, first_delay=0.0)
    with caplog.at_level(logging.WARNING, logger="collective.server.registration"):
        publisher.start()
        time.sleep(0.7)
        assert publisher.running  # still trying
        publisher.stop()
    assert publisher.stats["failed"] >= 4
    assert "not published" in caplog.text
    assert not publisher.running


def test_unexpected_errors_do_not_kill_the_thread(keys):
    daemon = fake_daemon(keys)
    calls = []

    def facts():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("fact source exploded")
        return {"role": "web"}

    daemon.facts = facts
    publisher = RegistrationPublisher(daemon, 0.1, first_delay=0.0)
    publisher.start()
    assert daemon.connector.event.wait(3)
    publisher.stop()
    assert publisher.stats["failed"] >= 1 and publisher.stats["published"] >= 1


def test_first_publish_is_soon_and_then_every_interval_with_jitter(keys):
    daemon = fake_daemon(keys, collectives=("mcollective",))
    publisher = RegistrationPublisher(daemon, 0.5)
    assert 0 <= publisher.first_delay <= 0.05
    assert 0 <= RegistrationPublisher(daemon, 3600).first_delay <= 1.0
    delays = [publisher.next_delay() for _ in range(500)]
    assert all(0.45 <= d <= 0.55 for d in delays)
    assert max(delays) - min(delays) > 0.05  # really jittered
    started = time.monotonic()
    publisher.start()
    assert daemon.connector.event.wait(2)
    assert time.monotonic() - started < 0.5
    time.sleep(1.3)
    publisher.stop()
    assert 3 <= len(daemon.connector.sent) <= 4


def test_stops_with_the_daemon(keys):
    daemon = fake_daemon(keys)
    publisher = RegistrationPublisher(daemon, 0.05, first_delay=0.0)
    publisher.start()
    assert daemon.connector.event.wait(2)
    daemon._stopping.set()
    time.sleep(0.2)
    assert not publisher.running


def test_interval_must_be_positive(keys):
    with pytest.raises(ValueError):
        RegistrationPublisher(fake_daemon(keys), 0)


def test_config_keys():
    cfg = Config({"discovery": {"inventory": "inv.db", "stale_after": 90}}, kind="client", env={})
    assert cfg.get("discovery.inventory").endswith("/inv.db")  # resolved like every path key
    assert cfg.get("discovery.stale_after") == 90
    assert Config({}, kind="client", env={}).get("discovery.inventory") is None
    from collective.config import ConfigError

    with pytest.raises(ConfigError, match="stale_after"):
        Config({"discovery": {"stale_after": 0}}, kind="client", env={})
    with pytest.raises(ConfigError, match="registration_interval"):
        Config({"server": {"registration_interval": -1}}, kind="server", env={})
