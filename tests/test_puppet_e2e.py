"""End to end: the puppet agent (collective-agent-puppet) on a real 2-node fleet, driven by
the real ``mco puppet`` and ``mco rpc``. Each node manages its own real puppet 7 agent (its
own confdir, certificate and state files), and every run fetches and applies a catalog
that this module writes from the session's private puppetserver (Debian's puppetserver
on 127.0.0.1, collective_agent_puppet.testing): every node gets one file resource, and
node-002 also a resource that fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from collective.fleet import fleet_down, fleet_up
from collective.testing import require

NODES = ["node-001", "node-002"]


@pytest.fixture(scope="module")
def puppet_server(request):
    require(importlib.util.find_spec("collective_agent_puppet") is not None,
            "collective-agent-puppet is not installed (make install)")
    from collective_agent_puppet.testing import shared_server

    return shared_server(request.config)


class World:
    def __init__(self, fleet, server, agents, files, token):
        self.fleet, self.server, self.agents, self.files, self.token = (
            fleet, server, agents, files, token)

    def managed_file(self, identity):
        return self.files / f"{self.agents[identity].certname}.txt"

    def write_catalog(self):
        from collective_agent_puppet.testing import site_manifest

        self.server.write_manifest(site_manifest(self.files, self.token,
                                                 failing=(self.agents["node-002"].certname,)))


@pytest.fixture(scope="module")
def world(puppet_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("puppete2e")
    files = base / "managed"
    files.mkdir()
    agents = {identity: puppet_server.node(base / "puppet" / identity,
                                           f"e2e-{identity}-{os.getpid()}")
              for identity in NODES}
    directory = tmp_path_factory.mktemp("fleet")
    fleet = fleet_up(directory, nodes=2, server_config_for=lambda index, identity: {
        "plugins": {"puppet": agents[identity].plugin_config(splay=False)}})
    world = World(fleet, puppet_server, agents, files, "e2e-" + secrets.token_hex(4))
    try:
        yield world
    finally:
        fleet_down(directory, quiet=True)
        for agent in agents.values():
            agent.kill_runs()


@pytest.fixture
def catalog(world):
    world.write_catalog()
    return world


def mco(world, *args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c",
                           str(world.fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def node_lines(out):
    """{node: text} from the per-node lines of `mco puppet status|runonce|enable|disable`."""
    found = {}
    for line in out.splitlines():
        node, sep, text = line.strip().partition(": ")
        if sep and node in NODES:
            found[node] = text
    return found


def wait_all(world, after, nodes=NODES):
    return {node: world.agents[node].wait_for_run(after) for node in nodes}


def test_status_and_count_before_any_run(world):
    code, out, err = mco(world, "puppet", "status", "--dt", "1")
    assert code == 0, out + err
    assert node_lines(out) == {node: "Currently stopped; no completed run yet" for node in NODES}
    for block in ("Summary of Enabled:\n\n   enabled = 2", "Summary of Daemon Running:\n\n   "
                  "stopped = 2", "Summary of Applying:\n\n   false = 2",
                  "Summary of Status:\n\n   stopped = 2", "Summary of Idling:\n\n   false = 2"):
        assert block in out, out
    assert "Finished processing 2 / 2 hosts" in out
    code, out, err = mco(world, "puppet", "count", "--dt", "1")
    assert code == 0, out + err
    assert "Total Puppet nodes: 2" in out
    assert "Nodes currently enabled: 2" in out and "Nodes currently disabled: 0" in out


def test_runonce_applies_the_catalog(catalog):
    world = catalog
    before = int(time.time())
    code, out, err = mco(world, "puppet", "runonce", "--force", "--dt", "1")
    assert code == 0, out + err
    # runonce's display policy shows failures only; a success prints the summary line
    assert set(node_lines(out)) == set(NODES)
    assert all(text.startswith("Started a Puppet run using the '")
               for text in node_lines(out).values()), out
    summaries = wait_all(world, before)
    for node in NODES:
        certname = world.agents[node].certname
        assert world.managed_file(node).read_text() == f"{world.token} {certname}\n"
    assert summaries["node-001"]["resources"]["failed"] == 0
    assert summaries["node-002"]["resources"]["failed"] == 1

    code, out, err = mco(world, "rpc", "puppet", "last_run_summary", "--dt", "1", "--json")
    assert code == 0, out + err
    replies = {r["sender"]: r["data"] for r in json.loads(out)}
    assert replies["node-001"]["failed_resources"] == 0
    assert replies["node-002"]["failed_resources"] == 1
    for node in NODES:
        assert replies[node]["changed_resources"] == 1
        assert replies[node]["lastrun"] == summaries[node]["time"]["last_run"]

    code, out, err = mco(world, "puppet", "summary", "--dt", "1")
    assert code == 0, out + err
    assert "Summary statistics for 2 nodes:" in out
    rows = {line.split(":", 1)[0].strip(): line for line in out.splitlines() if ": " in line}
    assert "min: 0.0" in rows["Failed resources"] and "max: 1.0" in rows["Failed resources"]
    assert "min: 1.0" in rows["Changed resources"] and "max: 1.0" in rows["Changed resources"]
    assert "avg:" in rows["Time since last run (seconds)"]

    code, out, err = mco(world, "puppet", "status", "--dt", "1")
    assert code == 0, out + err
    assert all(text.startswith("Currently stopped; last completed run ")
               for text in node_lines(out).values()), out


def test_data_plugins_in_compound_filters(world):
    code, out, err = mco(world, "find", "-S", "resource().failed_resources>0", "--dt", "2")
    assert code == 0, out + err
    assert out.split() == ["node-002"]
    path = world.managed_file("node-001")
    code, out, _ = mco(world, "find", "-S", f"resource('file[{path}]').managed=true", "--dt", "2")
    assert out.split() == ["node-001"]


def test_disable_refuses_runonce_until_enabled(world):
    code, out, err = mco(world, "puppet", "disable", "e2e maintenance", "-I", "node-001")
    assert code == 0, out + err
    assert node_lines(out) == {"node-001": "Successfully locked the Puppet agent: e2e maintenance"}
    assert json.loads(world.agents["node-001"].disabled_lock.read_text()) == {
        "disabled_message": "e2e maintenance"}
    lastrun = world.agents["node-001"].lastrun()

    code, out, err = mco(world, "puppet", "runonce", "-I", "node-001")
    assert code == 2, out + err
    assert node_lines(out) == {"node-001": "Puppet is disabled: 'e2e maintenance'"}
    code, out, _ = mco(world, "find", "-S", "puppet().enabled=false", "--dt", "2")
    assert out.split() == ["node-001"]
    code, out, _ = mco(world, "puppet", "count", "--dt", "1")
    assert "Nodes currently enabled: 1" in out and "Nodes currently disabled: 1" in out
    code, out, _ = mco(world, "puppet", "status", "--dt", "1")
    assert node_lines(out)["node-001"].startswith("Currently disabled; last completed run ")
    assert "disabled = 1" in out and "enabled = 1" in out

    code, out, err = mco(world, "puppet", "enable", "-I", "node-001")
    assert code == 0, out + err
    assert node_lines(out) == {"node-001": "Successfully enabled the Puppet agent"}
    assert not world.agents["node-001"].disabled_lock.exists()
    assert world.agents["node-001"].lastrun() == lastrun  # nothing ran meanwhile
    assert world.agents["node-001"].puppet_pids() == []


def test_runall_keeps_one_node_applying_at_a_time(catalog):
    world = catalog
    before = time.time()
    code, out, err = mco(world, "puppet", "runall", "1", "--dt", "1", timeout=240)
    assert code == 0, out + err
    assert "Running all nodes with a concurrency of 1" in out
    assert "Found 2 enabled nodes" in out
    assert "Currently 1 node applying the catalog; waiting for less than 1" in out
    assert "Iteration complete. Initiated a Puppet run on 2 nodes." in out
    for node in NODES:
        assert f"{node} schedule status: Started a Puppet run using the '" in out
    wait_all(world, int(before))
    # the proof is in puppet's own records: each run's report start time and last log
    # line, and the server's compile times, never overlap
    spans = sorted(world.agents[node].run_interval() for node in NODES)
    assert all(start >= before for start, _end in spans), (before, spans)
    (first_start, first_end), (second_start, _) = spans
    assert second_start >= first_end, spans
    order = sorted(world.agents, key=lambda node: world.agents[node].run_interval())
    compiled = [name for when, name in world.server.compiled() if when.timestamp() >= before]
    certnames = [world.agents[node].certname for node in order]
    assert [name for name in compiled if name in certnames] == certnames


def test_runall_rerun_loops(catalog):
    world = catalog
    before = time.time()
    code, out, err = mco(world, "puppet", "runall", "2", "--rerun", "1", "--loops", "2", "--dt",
                         "1", timeout=240)
    assert code == 0, out + err
    assert "Performing ongoing Puppet run management with a minimum runtime of 1 seconds" in out
    assert out.count("Iteration complete. Initiated a Puppet run on 2 nodes.") == 2
    # runall ends right after it started the last runs (as MCollective's does): wait for
    # the server to have compiled two catalogs per node, then for the runs to end
    certnames = [world.agents[node].certname for node in NODES]
    deadline = time.monotonic() + 120
    while True:
        compiled = [name for when, name in world.server.compiled()
                    if when.timestamp() >= before]
        if all(compiled.count(name) >= 2 for name in certnames):
            break
        assert time.monotonic() < deadline, compiled
        time.sleep(0.2)
    assert sorted(compiled) == sorted(certnames * 2), compiled
    wait_all(world, int(before))
    for node in NODES:
        start, _end = world.agents[node].run_interval()
        assert start >= before


def test_bad_input_is_refused_before_sending(world, tmp_path):
    marker = tmp_path / "pwned"
    for args, fmt in ((["--tags", f"x;touch {marker}"], "puppet_tags"),
                      (["--environment", "-e"], "puppet_variable"),
                      (["--server", f"h$(touch {marker})"], "puppet_server_address")):
        lastrun = {node: world.agents[node].lastrun() for node in NODES}
        code, out, err = mco(world, "puppet", "runonce", "-I", "node-001", *args)
        assert code == 1, out + err
        assert "The puppet application failed to run" in err and fmt in err
        assert "Traceback" not in err and out == ""
        assert {node: world.agents[node].lastrun() for node in NODES} == lastrun
        assert world.agents["node-001"].puppet_pids() == []
    # after "--" so that click passes "--enable" on as the message
    proc = subprocess.run([sys.executable, "-m", "collective", "puppet", "disable", "-I",
                           "node-001", "-c", str(world.fleet.client_config), "--", "--enable"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "shellsafe" in proc.stderr, proc.stdout + proc.stderr
    assert not world.agents["node-001"].disabled_lock.exists()
    assert not marker.exists()


def test_resource_management_is_off_by_default(world, tmp_path):
    target = tmp_path / "motd"
    code, out, err = mco(world, "puppet", "resource", "file", str(target), "ensure=file",
                         "-I", "node-001")
    assert code == 2, out + err
    assert "The file type is not listed in plugins.puppet.resource_types" in out
    assert not target.exists()


def test_rpc_and_plugin_doc(world):
    code, out, err = mco(world, "rpc", "puppet", "status", "-I", "node-001")
    assert code == 0, out + err
    assert "Status: stopped" in out and "Enabled: true" in out
    proc = subprocess.run([sys.executable, "-m", "collective", "plugin", "doc", "puppet"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for text in ("runonce action", "last_run_summary action", "puppet_tags",
                 "puppet_server_address", "Timeout: 30"):
        assert text in out, text
