"""Actions in worker processes (collective.server.workers), on a real embedded broker: a
timed-out action is ended with its children and its slot comes back, a crash is a
status 5 reply and the daemon serves on, children an action leaves running on purpose
survive later timeouts but not the daemon, and agents the zygote cannot load run on
threads as before. The process-level faults (SIGKILL, SIGTERM, a flood) are
tests/test_workers_e2e.py."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import collective_test_canary.plugin as canary_plugin
from collective import hookimpl
from collective.agent import Agent, action
from collective.client import Client
from collective.config import Config
from collective.plugins import get_plugin_manager
from collective.security.keys import generate_keypair
from collective.server.daemon import Daemon
from collective.testing import wait_for
from collective_test_canary.children import children_named

pytestmark = pytest.mark.timeout(180)






class Node:
    """One in-process daemon with the canary agent, and a client, on one broker."""

    def __init__(self, tmp: Path, port: int, server: dict[str, Any] | None = None,
                 plugins: list[Any] | None = None) -> None:
        keys, trust = tmp / "keys", tmp / "trust"
        for sub in ("clients", "nodes"):
            (trust / sub).mkdir(parents=True, exist_ok=True)
        for name in ("admin", "n1"):
            if not (keys / f"{name}.key").exists():
                generate_keypair(name, keys)
        shutil.copy(keys / "admin.pub", trust / "clients" / "admin.pub")
        shutil.copy(keys / "n1.pub", trust / "nodes" / "n1.pub")
        self.canary = tmp / "canary.log"
        self.plugins = plugins or [canary_plugin]
        self.config = Config({
            "identity": "n1", "broker": {"port": port},
            "security": {"private_key": str(keys / "n1.key"), "trust_dir": str(trust)},
            "audit": {"file": str(tmp / "audit.jsonl")},
            "authorization": {"provider": "callers", "callers": ["cert=admin"]},
            "server": server or {},
            "plugins": {"canary": {"log": str(self.canary)}},
        }, kind="server", env={})
        self.daemon = Daemon(self.config, pm=get_plugin_manager(load_entrypoints=False,
                                                                plugins=self.plugins))
        self.daemon.start(connect_timeout=10)
        self.client_config = Config({
            "identity": "admin-client", "broker": {"port": port},
            "security": {"identity": "admin", "private_key": str(keys / "admin.key"),
                         "trust_dir": str(trust)}}, kind="client", env={})

    def client(self) -> Client:
        return Client(self.client_config, pm=get_plugin_manager(load_entrypoints=False,
                                                                plugins=self.plugins))

    def call(self, agent: str, action_name: str, data: dict[str, Any], timeout: float = 10.0):
        with self.client() as client:
            result = client.request(agent, action_name, data, targets=["n1"], timeout=timeout)
        return result.replies[0] if result.replies else None

    def lines(self) -> list[str]:
        return self.canary.read_text().splitlines() if self.canary.exists() else []


@pytest.fixture
def node(tmp_path, collective_broker):
    made: list[Node] = []

    def make(**kwargs: Any) -> Node:
        made.append(Node(tmp_path, collective_broker.port, **kwargs))
        return made[-1]

    yield make
    for each in made:
        each.daemon.stop()


def test_timed_out_actions_are_ended_with_their_children_and_their_slots_come_back(node):
    n = node(server={"max_concurrent": 4})
    markers = [f"t{i}" for i in range(4)]
    replies: dict[str, Any] = {}

    def call(marker: str, detach: bool) -> None:
        replies[marker] = n.call("canary", "spawn", {"marker": marker, "seconds": 30,
                                                     "detach": detach})

    started = time.monotonic()
    threads = [threading.Thread(target=call, args=(m, i % 2 == 1)) for i, m in enumerate(markers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert sorted(replies) == markers
    assert all(r is not None and r.statuscode == 5 and "timed out after 3s" in r.statusmsg
               for r in replies.values()), replies
    assert elapsed < 15, "the timed-out replies waited for the actions"
    # every child is gone, those in a session of their own too (kill grace is 2 s)
    assert wait_for(lambda: not any(children_named(m) for m in markers), 10), \
        [children_named(m) for m in markers]
    assert len([line for line in n.lines() if line.startswith("spawned")]) == 4
    # the four slots are free again: four quick actions run at once, at once
    started = time.monotonic()
    quick: list[Any] = []
    threads = [threading.Thread(target=lambda: quick.append(n.call("canary", "run", {"marker": "q"})))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [r.statuscode for r in quick if r is not None] == [0, 0, 0, 0]
    assert time.monotonic() - started < 10
    stats = n.daemon.stats()
    assert stats["timeouts"] == 4 and stats["workers"]["killed"] == 4


@pytest.mark.parametrize("how", ["exit", "segv", "kill"])
def test_an_action_that_kills_its_worker_gets_status_5_and_the_daemon_serves_on(node, how):
    n = node()
    reply = n.call("canary", "crash", {"how": how, "marker": how})
    assert reply is not None and reply.statuscode == 5
    assert "its worker process died" in reply.statusmsg
    expected = {"exit": "exited with status 3", "segv": "signal 11", "kill": "signal 9"}[how]
    assert expected in reply.statusmsg
    assert [line.split()[0] for line in n.lines()] == ["crash"]
    after = n.call("canary", "run", {"marker": "after"})
    assert after is not None and after.statuscode == 0
    crash_pid = int(n.lines()[0].split()[4])
    run_pid = int(n.lines()[1].split()[3])
    assert crash_pid != os.getpid() and run_pid != crash_pid
    assert n.daemon.stats()["workers"]["crashed"] == 1


def test_children_an_action_leaves_running_outlive_later_timeouts_but_not_the_daemon(node):
    n = node(server={"max_concurrent": 1})
    reply = n.call("canary", "spawn", {"marker": "kept", "seconds": 0, "detach": True})
    assert reply is not None and reply.statuscode == 0
    assert len(children_named("kept")) == 1
    # the same (only) slot times out on another action: the kept child is not touched
    late = n.call("canary", "sleep", {"seconds": 20, "marker": "late"})
    assert late is not None and late.statuscode == 5
    time.sleep(2.5)  # past the kill grace of the timed-out worker
    assert len(children_named("kept")) == 1, "a later timeout killed a child it did not start"
    assert n.daemon.stats()["workers"]["retired"] == 1
    n.daemon.stop()
    assert wait_for(lambda: not children_named("kept"), 10), "the child outlived the daemon"


def test_stop_ends_running_actions_with_a_status_5_reply(node):
    n = node()
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(reply=n.call(
        "canary", "spawn", {"marker": "stopped", "seconds": 2.5})))
    thread.start()
    assert wait_for(lambda: any(line.startswith("spawned") for line in n.lines()), 10)
    n.daemon.stop()
    thread.join(15)
    reply = box.get("reply")
    assert reply is not None and reply.statuscode == 5
    assert "stopped: the daemon is stopping" in reply.statusmsg
    assert wait_for(lambda: not children_named("stopped"), 10)


def test_threads_mode_runs_actions_in_the_daemon(node):
    n = node(server={"workers": "threads"})
    reply = n.call("canary", "run", {"marker": "threads"})
    assert reply is not None and reply.statuscode == 0
    assert int(n.lines()[0].split()[3]) == os.getpid()
    assert n.daemon.stats()["workers"] == {"mode": "threads"}


def test_an_agent_the_zygote_cannot_import_runs_on_threads(node, tmp_path):
    def make_agent() -> type:
        class Local(Agent):  # defined in a function: no worker process can import it
            name = "localtest"

            @action
            def where(self, request, reply):
                reply["pid"] = os.getpid()

        return Local

    ddl = tmp_path / "localtest.json"
    ddl.write_text("""{"$schema": "urn:collective:ddl:agent:v1",
      "metadata": {"name": "localtest", "description": "t", "author": "t", "license": "MIT",
                   "version": "1.0.0", "url": "https://example.invalid", "timeout": 5},
      "actions": [{"action": "where", "description": "pid", "display": "always",
                   "input": {"type": "object", "properties": {}},
                   "output": {"pid": {"description": "pid", "display_as": "Pid",
                                      "type": "integer"}}}]}""")
    local = make_agent()
    plugin = SimpleNamespace(collective_agents=hookimpl(lambda: [local]),
                             collective_ddls=hookimpl(lambda: [ddl]))
    n = node(plugins=[canary_plugin, plugin])
    reply = n.call("localtest", "where", {})
    assert reply is not None and reply.statuscode == 0 and reply.data["pid"] == os.getpid()
    assert any("agent localtest runs on the daemon's threads" in p for p in n.daemon.problems)
    ran = n.call("canary", "run", {"marker": "w"})
    assert ran is not None and ran.statuscode == 0
    assert int(n.lines()[0].split()[3]) != os.getpid()


def test_threads_mode_answers_queued_requests_when_the_daemon_stops(node):
    """Python threads cannot be killed, so a running action keeps its thread; but an
    action still queued behind it when the daemon stops gets "node busy", not silence."""
    n = node(server={"workers": "threads", "max_concurrent": 1})
    box: dict[str, Any] = {}
    first = threading.Thread(target=lambda: box.update(running=n.call(
        "canary", "sleep", {"seconds": 2.5, "marker": "running"}, timeout=6)))
    first.start()
    assert wait_for(lambda: any(line.startswith("start running") for line in n.lines()), 10)
    second = threading.Thread(target=lambda: box.update(queued=n.call(
        "canary", "run", {"marker": "queued"}, timeout=6)))
    second.start()
    assert wait_for(lambda: n.daemon.pending == 2, 10)
    n.daemon.stop()
    second.join(15)
    first.join(15)
    queued = box.get("queued")
    assert queued is not None and queued.statuscode == 1, queued
    assert queued.statusmsg == "node busy: the daemon is stopping"
    assert not any(line.startswith("run queued") for line in n.lines())
