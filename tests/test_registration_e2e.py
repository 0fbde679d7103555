"""End to end: a real fleet registering every second, `mco registry collect` as a real
process filling an inventory, `mco registry list` / `forget`, and `mco find --dm inventory`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from collective.client import Client
from collective.client.discovery import discover
from collective.config import load_config
from collective.filters import Filter, parse_fact
from collective.fleet import BrokerSpec, fleet_down, fleet_up

NODES = ["node-001", "node-002", "node-003"]


@pytest.fixture(scope="module", params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def fleet(request, tmp_path_factory):
    spec = None
    if request.param == "rabbitmq":
        rmq = request.getfixturevalue("collective_rabbitmq")
        spec = BrokerSpec(flavour="rabbitmq", port=rmq.stomp_port, user=rmq.user,
                          password=rmq.password, vhost=rmq.vhost)
    directory = tmp_path_factory.mktemp("regfleet")
    started = fleet_up(directory, nodes=3, broker=spec, extra_server_config={
        "server": {"pidfile": "collectived.pid", "registration_interval": 1}})
    yield started
    fleet_down(directory)


def mco(fleet, *args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def collector(fleet, tmp_path):
    db = tmp_path / "inventory.db"
    proc = subprocess.Popen([sys.executable, "-m", "collective", "registry", "collect", "--db", str(db),
                             "-c", str(fleet.client_config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc, db
    if proc.poll() is None:
        proc.kill()
        proc.communicate(timeout=10)


def listed(fleet, db) -> list[dict]:
    code, out, err = mco(fleet, "registry", "list", "--db", str(db), "--json")
    assert code == 0, err
    return json.loads(out)


def test_collect_list_forget_and_find(fleet, collector):
    proc, db = collector
    deadline = time.monotonic() + 30
    nodes: list[dict] = []
    while time.monotonic() < deadline:
        if db.exists():
            nodes = listed(fleet, db)
            if [n["identity"] for n in nodes] == NODES:
                break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.3)
    assert [n["identity"] for n in nodes] == NODES
    first = nodes[0]
    assert first["interval"] == 1 and not first["stale"]
    assert first["facts"]["role"] == "web" and "role::web" in first["classes"]
    assert {"name": "rpcutil", "version": first["agents"][0]["version"]} in first["agents"]

    code, out, _ = mco(fleet, "registry", "list", "--db", str(db))
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("node-")]
    assert [r[0] for r in rows] == NODES
    assert all(r[-2] == "no" and int(r[-1]) >= 1 for r in rows)  # stale flag, agents count
    assert "3 node(s), 0 stale" in out

    # inventory discovery answers like broadcast discovery
    with Client(load_config(fleet.client_config)) as client:
        by_inventory = discover(client, "inventory", Filter(fact=[parse_fact("role=web")]), None,
                                {"db": str(db)})
        by_broadcast = discover(client, "broadcast", Filter(fact=[parse_fact("role=web")]), 2.0, {})
    assert by_inventory.nodes == by_broadcast.nodes == ["node-001"]
    code, out, err = mco(fleet, "find", "--dm", "inventory", "--do", f"db={db}", "-F", "role=web")
    assert (code, out.split()) == (0, ["node-001"]), err
    started = time.monotonic()
    code, out, err = mco(fleet, "rpc", "rpcutil", "ping", "--dm", "inventory", "--do", f"db={db}",
                         "-C", "/^role::(db|cache)$/", "--dt", "10")
    assert code == 0, err
    assert "Finished processing 2 / 2 hosts" in out
    assert time.monotonic() - started < 8, "inventory discovery waited like broadcast discovery"

    # forget: gone until the node registers again (every second)
    code, out, _ = mco(fleet, "registry", "forget", "node-002", "--db", str(db))
    assert code == 0 and "forgot node-002" in out
    code, _, err = mco(fleet, "registry", "forget", "nobody", "--db", str(db))
    assert code != 0 and "not in the inventory" in err
    time.sleep(2.5)
    assert [n["identity"] for n in listed(fleet, db)] == NODES

    # SIGTERM: a clean stop with a summary
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "collector stopped: received" in err and "refused 0" in err


def test_a_stopped_node_turns_stale(fleet, collector):
    proc, db = collector
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (db.exists() and len(listed(fleet, db)) == 3):
        time.sleep(0.3)
    victim = fleet.pids["node-003"]
    os.kill(victim, signal.SIGSTOP)  # frozen: no more registrations, restartable
    try:
        deadline = time.monotonic() + 15
        stale: list[str] = []
        while time.monotonic() < deadline:
            stale = [n["identity"] for n in listed(fleet, db) if n["stale"]]
            if stale:
                break
            time.sleep(0.5)
        assert stale == ["node-003"]
        code, out, err = mco(fleet, "find", "--dm", "inventory", "--do", f"db={db}")
        assert code == 0 and out.split() == NODES  # still listed ...
        assert "node-003" in err                    # ... and flagged
    finally:
        os.kill(victim, signal.SIGCONT)


def test_collect_without_a_broker_fails_cleanly(tmp_path):
    config = tmp_path / "client.yaml"
    config.write_text("identity: c\nbroker: {port: 1, connect_timeout: 1}\n"
                      f"security: {{provider: psk, psk_file: {tmp_path / 'psk'}}}\n")
    fd = os.open(tmp_path / "psk", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"0123456789abcdef0123456789")
    os.close(fd)
    proc = subprocess.run([sys.executable, "-m", "collective", "registry", "collect", "--db",
                           str(tmp_path / "i.db"), "-c", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "could not connect to broker" in proc.stderr
