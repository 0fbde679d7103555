"""The pieces of SIGHUP reload (collective.server.reload): fingerprint, preflight, argv,
handover; the daemon's pause and drain against a real embedded broker and a real
RabbitMQ; the Reloader's decisions. The whole thing (real wheels, a real re-exec) is
tests/test_reload_e2e.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from collective import hookimpl
from collective.agent import Agent, action
from collective.client import Client
from collective.config import Config
from collective.connectors.destinations import Destination
from collective.connectors.stomp import StompConnector
from collective.plugins import get_plugin_manager
from collective.security.base import SecurityError
from collective.security.freshness import ReplayGuard
from collective.security.keys import generate_keypair
from collective.server import reload as reload_mod
from collective.server.daemon import Daemon
from collective.server.reload import (
    HANDOVER_ENV,
    Fingerprint,
    Handover,
    Reloader,
    exec_argv,
    preflight,
    take_fingerprint,
)


# -- a site directory with one installed plugin distribution ----------------------------------
def install_fake(site: Path, name: str, version: str, body: str = "") -> Path:
    """A dist-info + package in ``site`` as pip would leave them (entry point group collective)."""
    package = f"collective_fake_{name}"
    for old in site.glob(f"collective_fake_{name}-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"collective_fake_{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: collective-fake-{name}\n"
                                   f"Version: {version}\n")
    (info / "entry_points.txt").write_text(f"[collective]\nfake-{name} = {package}.plugin\n")
    (info / "RECORD").write_text(f"{package}/plugin.py,sha256=x{version},1\n")
    (site / package).mkdir(exist_ok=True)
    (site / package / "__init__.py").write_text("")
    (site / package / "plugin.py").write_text(body or f"VERSION = {version!r}\n")
    return site / package


def test_fingerprint_sees_installs_upgrades_edits_removals_and_config(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    config = tmp_path / "server.yaml"
    config.write_text("identity: n1\n")
    base = take_fingerprint(config)
    assert base.changes(take_fingerprint(config)) == []

    install_fake(site, "one", "0.1.0")
    installed = take_fingerprint(config)
    assert base.changes(installed) == ["new plugin fake-one (collective-fake-one 0.1.0)"]

    install_fake(site, "one", "0.2.0")
    upgraded = take_fingerprint(config)
    assert installed.changes(upgraded) == ["plugin fake-one (collective-fake-one) 0.1.0 -> 0.2.0"]

    plugin = site / "collective_fake_one" / "plugin.py"
    plugin.write_text("VERSION = 'edited in place'\n")
    stat = plugin.stat()
    os.utime(plugin, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    edited = take_fingerprint(config)
    assert edited.changes(take_fingerprint(config)) == []
    assert upgraded.changes(edited) == ["files of collective_fake_one changed"]

    config.write_text("identity: n2\n")
    assert edited.changes(take_fingerprint(config)) == ["config file changed"]
    config.write_text("identity: n1\n")

    dep = site / "some_library-1.0.dist-info"  # a dependency of an agent, not a plugin
    dep.mkdir()
    (dep / "METADATA").write_text("Metadata-Version: 2.1\nName: Some_Library\nVersion: 1.0\n")
    with_dep = take_fingerprint(config)
    dep.rename(site / "some_library-1.1.dist-info")
    (site / "some_library-1.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: Some_Library\nVersion: 1.1\n")
    assert with_dep.changes(take_fingerprint(config)) == ["some-library 1.0 -> 1.1"]
    shutil.rmtree(site / "some_library-1.1.dist-info")

    for path in site.glob("collective_fake_one*"):
        shutil.rmtree(path)
    removed = take_fingerprint(config)
    assert edited.changes(removed) == ["removed plugin fake-one (collective-fake-one 0.2.0)"]


def test_fingerprint_of_a_missing_config_is_a_change_not_a_crash(tmp_path):
    before = take_fingerprint(tmp_path / "server.yaml")
    assert before.config.startswith("unreadable")
    (tmp_path / "server.yaml").write_text("identity: n1\n")
    assert before.changes(take_fingerprint(tmp_path / "server.yaml")) == ["config file changed"]


# -- the preflight ------------------------------------------------------------------------------
def node_config(tmp: Path, identity: str = "n1", **extra: Any) -> Path:
    keys, trust = tmp / "keys", tmp / "trust"
    if not (keys / f"{identity}.key").exists():
        generate_keypair(identity, keys)
    (trust / "clients").mkdir(parents=True, exist_ok=True)
    (trust / "nodes").mkdir(parents=True, exist_ok=True)
    shutil.copy(keys / f"{identity}.pub", trust / "nodes" / f"{identity}.pub")
    data = {"identity": identity,
            "security": {"private_key": str(keys / f"{identity}.key"), "trust_dir": str(trust)},
            "audit": {"file": str(tmp / f"{identity}.audit")}, **extra}
    path = tmp / f"{identity}.yaml"
    path.write_text(json.dumps(data))
    return path


def test_preflight_of_a_good_config_lists_what_would_be_served(tmp_path):
    check = preflight(node_config(tmp_path))
    assert check.ok, check.error
    assert check.agents["rpcutil"]  # a version string from the DDL
    assert check.seconds > 0


def test_preflight_of_a_broken_config_names_the_key(tmp_path):
    path = node_config(tmp_path)
    path.write_text(path.read_text()[:-1] + ', "bogus": 1}')
    check = preflight(path)
    assert not check.ok
    assert "bogus" in check.error and "unknown key" in check.error


def test_preflight_of_a_core_that_no_longer_imports(tmp_path):
    fake = tmp_path / "shadow" / "collective"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('half-upgraded core, on purpose')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    check = preflight(node_config(tmp_path), env=env)
    assert not check.ok
    assert "half-upgraded core, on purpose" in check.error


def test_preflight_reports_a_broken_plugin_by_name_and_stays_ok(tmp_path):
    site = tmp_path / "site"
    install_fake(site, "bad", "0.3.0", body="import collective_no_such_dependency_xyz\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = preflight(node_config(tmp_path), env=env)
    assert check.ok, check.error
    assert any("fake-bad" in p and "ModuleNotFoundError" in p for p in check.problems), check.problems
    assert "rpcutil" in check.agents


def test_check_command_for_admins(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "collective.server.main", "--check", "-c",
                           str(node_config(tmp_path))], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("collectived: OK, would serve") and "rpcutil" in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "collective.server.main", "--check", "-c",
                              str(tmp_path / "nope.yaml")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


# -- argv and handover ----------------------------------------------------------------------------
@pytest.mark.parametrize(("orig", "expected_tail"), [
    (["python3", "-m", "collective.server.main", "-c", "/etc/x.yaml"],
     ["-m", "collective.server.main", "-c", "/etc/x.yaml"]),
    (["/venv/bin/python", "/venv/bin/collectived", "-c", "x.yaml", "--pidfile", "p"],
     ["/venv/bin/collectived", "-c", "x.yaml", "--pidfile", "p"]),
    (["python", "-X", "dev", "-W", "error", "-m", "collective.server.main"],
     ["-X", "dev", "-W", "error", "-m", "collective.server.main"]),
])
def test_exec_argv_keeps_the_command_line_with_this_interpreter(monkeypatch, orig, expected_tail):
    monkeypatch.setattr(sys, "orig_argv", orig)
    assert exec_argv() == [sys.executable, *expected_tail]


def test_exec_argv_unknown_in_an_embedding_application(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", [])
    assert exec_argv() is None


def test_handover_round_trip_through_an_inherited_descriptor():
    handover = Handover(seen=[("cert=admin", "abc", 1e15)],
                        outbox=[(2e9, "mcollective.reply.x", b"\x00signed\xff")],
                        sighup_at=123.5, drain_seconds=0.25, changes=["new plugin x"], rehup=True)
    fd = handover.write()
    assert os.get_inheritable(fd)
    env = {HANDOVER_ENV: str(fd)}
    taken = Handover.take(env)
    assert taken == handover
    assert HANDOVER_ENV not in env
    with pytest.raises(OSError):
        os.fstat(fd)  # closed once read


def test_handover_garbage_is_ignored(caplog):
    assert Handover.take({}) is None
    caplog.set_level(logging.WARNING)
    assert Handover.take({HANDOVER_ENV: "not-a-number"}) is None
    assert Handover.take({HANDOVER_ENV: "987654"}) is None
    assert "ignoring" in caplog.text


def test_replay_cache_survives_export_and_restore():
    now = time.time()
    old = ReplayGuard(clock=lambda: now)
    old.check("cert=admin", "r1", int(now * 1000), 60)
    new = ReplayGuard(clock=lambda: now)
    assert new.restore(old.export()) == 1
    with pytest.raises(SecurityError, match="already seen"):
        new.check("cert=admin", "r1", int(now * 1000), 60)
    later = ReplayGuard(clock=lambda: now + 3600)
    assert later.restore(old.export()) == 0  # expired entries are not kept


# -- pause and drain on a real broker ----------------------------------------------------------
class _FileEvent:
    """``threading.Event`` across processes: the action runs in a worker process of the
    daemon, the test waits here (the path travels in the environment the zygote gets)."""

    def __init__(self) -> None:
        import tempfile

        path = os.environ.get("COLLECTIVE_TEST_SLOWTEST_STARTED")
        if not path:
            path = os.path.join(tempfile.mkdtemp(prefix="slowtest-"), "started")
            os.environ["COLLECTIVE_TEST_SLOWTEST_STARTED"] = path
        self.path = Path(path)

    def set(self) -> None:
        self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.path.exists()


STARTED = _FileEvent()

DDL = {
    "$schema": "urn:collective:ddl:agent:v1",
    "metadata": {"name": "slowtest", "description": "reload tests", "author": "collective developers",
                 "license": "Apache-2.0", "version": "1.0.0", "url": "https://example.invalid",
                 "timeout": 10},
    "actions": [
        {"action": "echo", "description": "echo", "display": "always",
         "input": {"type": "object", "properties": {"value": {"type": "string", "description": "v", "maxLength": 64}}},
         "output": {"value": {"description": "v", "display_as": "V", "type": "string"}}},
        {"action": "sleep", "description": "sleep", "display": "always",
         "input": {"type": "object", "required": ["seconds"],
                   "properties": {"seconds": {"type": "number", "description": "s",
                                             "minimum": 0, "maximum": 5}}},
         "output": {"value": {"description": "v", "display_as": "V", "type": "string"}}},
    ],
}


class Slowtest(Agent):
    name = "slowtest"

    @action
    def echo(self, request, reply):
        reply["value"] = f"{request.get('value', '')} from {self.node.start_time}"

    @action
    def sleep(self, request, reply):
        STARTED.set()
        time.sleep(float(request["seconds"]))
        reply["value"] = "slept"


@pytest.fixture(params=["embedded", "rabbitmq"])
def broker_section(request) -> dict[str, Any]:
    """The same tests on the embedded broker and on a real RabbitMQ (node queues there)."""
    if request.param == "embedded":
        return {"port": request.getfixturevalue("collective_broker").port, "heartbeat_ms": 2000}
    return {**request.getfixturevalue("collective_rabbitmq").broker_config(), "heartbeat_ms": 2000}


@pytest.fixture
def node(tmp_path, broker_section):
    ddl = tmp_path / "slowtest.json"
    ddl.write_text(json.dumps(DDL))
    plugin = SimpleNamespace(collective_agents=hookimpl(lambda: [Slowtest]),
                             collective_ddls=hookimpl(lambda: [ddl]))
    node_config(tmp_path)
    generate_keypair("admin", tmp_path / "keys")
    shutil.copy(tmp_path / "keys" / "admin.pub", tmp_path / "trust" / "clients" / "admin.pub")
    broker = broker_section
    server = Config({"identity": "n1", "broker": broker,
                     "security": {"private_key": str(tmp_path / "keys" / "n1.key"),
                                  "trust_dir": str(tmp_path / "trust")},
                     "audit": {"file": str(tmp_path / "n1.audit")},
                     "authorization": {"provider": "callers", "callers": ["cert=admin"]}},
                    kind="server", env={})
    client = Config({"identity": "admin-client", "broker": broker,
                     "security": {"identity": "admin", "private_key": str(tmp_path / "keys" / "admin.key"),
                                  "trust_dir": str(tmp_path / "trust")}}, kind="client", env={})

    def make() -> Daemon:
        daemon = Daemon(server, pm=get_plugin_manager(load_entrypoints=False, plugins=[plugin]))
        daemon.start(connect_timeout=10)
        return daemon

    STARTED.clear()
    daemons: list[Daemon] = []
    yield SimpleNamespace(
        make=lambda: daemons.append(make()) or daemons[-1], client_config=client,
        client=lambda: Client(client, pm=get_plugin_manager(load_entrypoints=False, plugins=[plugin])))
    for daemon in daemons:
        daemon.stop()


def test_pause_waits_for_the_accepted_request_and_directed_ones_wait_for_the_next_image(node):
    old = node.make()
    with node.client() as client:
        slow: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: slow.update(result=client.request(
            "slowtest", "sleep", {"seconds": 1.5}, targets=["n1"], timeout=10)))
        thread.start()
        assert STARTED.wait(5), "the slow action did not start"
        assert old.pending == 1
        old.pause()
        assert old.connector.subscriptions() == []
        queued = client.request("slowtest", "echo", {"value": "queued"}, targets=["n1"], timeout=0.5)
        assert queued.replies == [], "a paused daemon must not take new work"
        started = time.monotonic()
        assert old.drain() is True
        assert time.monotonic() - started < 5
        thread.join(5)
        assert [r.data["value"] for r in slow["result"].replies] == ["slept"]
        old.stop()
        # the request sent while paused waited in the node's queue for the new image
        new = node.make()
        assert new.start_time != old.start_time
        late = client.request("slowtest", "echo", {"value": "after"}, targets=["n1"], timeout=5)
        assert [r.data["value"] for r in late.replies] == [f"after from {new.start_time}"]
        deadline = time.monotonic() + 5
        while client.late_replies < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.late_replies == 1, "the request sent while paused was never answered"


def test_no_directed_request_is_lost_across_a_pause(node):
    """Requests keep coming while the daemon unsubscribes: each one is answered once, by
    the old image (delivered before the broker confirmed) or by the new one (queued)."""
    old = node.make()
    replies: list[bytes] = []
    collector = StompConnector(node.client_config, client_id="collector")
    collector.connect(timeout=5)
    collector.subscribe(Destination.reply("mcollective", "admin.collector"), replies.append)
    halfway, paused = threading.Event(), threading.Event()
    sent = {"total": 0, "after_pause": 0}
    try:
        with node.client() as client:
            client.connect()

            def burst() -> None:
                while sent["after_pause"] < 20:
                    after = paused.is_set()  # looked at before sending: surely queued
                    client.send("slowtest", "echo", {"value": str(sent["total"])}, nodes=["n1"],
                                reply_to="mcollective.reply.admin.collector")
                    sent["total"] += 1
                    sent["after_pause"] += after
                    if sent["total"] == 20:
                        halfway.set()

            sender = threading.Thread(target=burst)
            sender.start()
            assert halfway.wait(10)
            old.pause()  # while the sender goes on
            paused.set()
            assert old.drain(timeout=10)
            sender.join(20)
            old.stop()
            new = node.make()
            deadline = time.monotonic() + 10
            while len(replies) < sent["total"] and time.monotonic() < deadline:
                time.sleep(0.05)
            by = [client.security.verify_reply(wire)[1].data["value"].split(" from ") for wire in replies]
    finally:
        collector.disconnect()
    assert sorted(int(n) for n, _ in by) == list(range(sent["total"])), "lost or doubled requests"
    answered_by_old = sum(1 for _, image in by if image == str(old.start_time))
    answered_by_new = sum(1 for _, image in by if image == str(new.start_time))
    # the old image answered what it had taken before the pause; a directed request the
    # broker had delivered but the old image not yet acknowledged (at most the prefetch)
    # went back to the node's queue and was answered by the new image instead
    prefetch = int(node.client_config["broker"].get("prefetch") or 0)
    assert answered_by_old >= 20 - prefetch and answered_by_new >= 20
    assert answered_by_old + answered_by_new == sent["total"]


def test_drain_gives_up_at_its_timeout_and_says_so(node, caplog):
    daemon = node.make()
    with node.client() as client:
        threading.Thread(target=lambda: client.request("slowtest", "sleep", {"seconds": 2},
                                                       targets=["n1"], timeout=5),
                         daemon=True).start()
        assert STARTED.wait(5)
        caplog.set_level(logging.WARNING)
        assert daemon.drain(timeout=0.2) is False
        assert "still without a reply" in caplog.text
        assert daemon.drain() is True


# -- the Reloader's decisions --------------------------------------------------------------------
class FakeDaemon:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pending = 0
        self.guard = ReplayGuard()
        self.guard.check("cert=admin", "seen-1", int(time.time() * 1000), 60)

    def reload(self) -> None:
        self.calls.append("reload")

    def pause(self) -> None:
        self.calls.append("pause")

    def drain(self, stop: Any = None) -> bool:
        self.calls.append("drain")
        return True

    def take_outbox(self) -> list:
        return [(time.time() + 60, Destination.reply("mcollective", "x"), b"signed")]

    def stop(self) -> None:
        self.calls.append("stop")


def test_unchanged_code_reloads_in_place(tmp_path):
    config = node_config(tmp_path)
    daemon = FakeDaemon()
    reloader = Reloader(config, take_fingerprint(config), argv=["/nonexistent/python"])
    assert reloader.handle(daemon) is daemon
    assert daemon.calls == ["reload"]


def test_a_broken_config_aborts_with_one_line_and_touches_nothing(tmp_path, caplog):
    config = node_config(tmp_path)
    reloader = Reloader(config, take_fingerprint(config), argv=["/nonexistent/python"])
    config.write_text("broker: {port: nope}\n")
    daemon = FakeDaemon()
    caplog.set_level(logging.INFO)
    assert reloader.handle(daemon) is daemon
    assert daemon.calls == []
    aborted = [r for r in caplog.records if "reload aborted" in r.getMessage()]
    assert len(aborted) == 1 and "broker.port" in aborted[0].getMessage()


def test_without_reexec_changed_code_is_reported_and_reloaded_in_place(tmp_path, caplog):
    config = node_config(tmp_path)
    reloader = Reloader(config, Fingerprint(), argv=None)
    daemon = FakeDaemon()
    caplog.set_level(logging.WARNING)
    reloader.handle(daemon)
    assert daemon.calls == ["reload"]
    assert "cannot re-exec" in caplog.text


def test_a_failed_exec_restarts_in_process_with_the_handover(tmp_path, monkeypatch):
    config = node_config(tmp_path)
    seen: dict[str, Any] = {}

    def fail_exec(argv: list[str], handover: Handover) -> None:
        seen["argv"] = argv
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(reload_mod, "reexec", fail_exec)
    rebuilt = object()
    reloader = Reloader(config, Fingerprint(), argv=["/gone/python", "-m", "collective.server.main"],
                        rebuild=lambda handover: seen.update(handover=handover) or rebuilt)
    daemon = FakeDaemon()
    requested = threading.Event()
    requested.set()
    assert reloader.handle(daemon, threading.Event(), requested) is rebuilt
    assert daemon.calls == ["pause", "drain", "stop"]
    assert seen["argv"][0] == "/gone/python"
    handover = seen["handover"]
    assert [entry[:2] for entry in handover.seen] == [("cert=admin", "seen-1")]
    assert handover.outbox[0][1:] == ("mcollective.reply.x", b"signed")
    assert handover.rehup is True and "config file changed" in handover.changes


def test_sigterm_during_the_drain_does_not_exec(tmp_path, monkeypatch):
    config = node_config(tmp_path)
    monkeypatch.setattr(reload_mod, "reexec", lambda *a: pytest.fail("exec'd while stopping"))
    stop = threading.Event()
    daemon = FakeDaemon()
    daemon.drain = lambda stop=None: (stop.set(), False)[1]  # SIGTERM arrives while draining
    reloader = Reloader(config, Fingerprint(), argv=["/x"])
    assert reloader.handle(daemon, stop) is daemon
    assert daemon.calls == ["pause"]
