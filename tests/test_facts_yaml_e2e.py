"""End to end: YAML facts (collective-facts-yaml) on a real fleet, seen by `mco facts`, `-F`,
`-S` and the registration inventory, reloaded on change without a restart, and kept
when a file turns bad."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from collective.config import load_config
from collective.fleet import fleet_down, fleet_up
from collective.inventory import Collector, Inventory

NODES = ["node-001", "node-002", "node-003"]
NODE_FACTS = {
    "node-001": "role: web\nos:\n  family: debian\n  release: {major: 12}\napp: {version: 1}\n",
    "node-002": "role: db\nos:\n  family: redhat\n  release: {major: 9}\napp: {version: 1}\n",
    "node-003": "role: cache\nos:\n  family: debian\n  release: {major: 11}\napp: {version: 1}\n",
}
#: the daemon's FactStore caches for 5 s and the YAML source checks every second
CHANGE_DEADLINE = 20.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("yamlfleet")
    common = directory / "common.yaml"
    common.write_text("role: unknown\nlocation: uk\nos:\n  kernel: linux\n")
    for identity, text in NODE_FACTS.items():
        node_dir = directory / "nodes" / identity
        node_dir.mkdir(parents=True)
        (node_dir / "facts.yaml").write_text(text)
    # All nodes share this config: the absolute file is common to all, and the relative
    # "facts.yaml" is each node's own (resolved against its config file's directory).
    started = fleet_up(directory, nodes=3, extra_server_config={
        "facts": {"sources": ["yaml"], "files": [str(common), "facts.yaml"]},
        "plugins": {"yaml": {"refresh": 1}},
        "server": {"pidfile": "collectived.pid", "registration_interval": 1},
    })
    yield started
    fleet_down(directory)


def mco(fleet, *args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def facts_report(fleet, fact, *args):
    code, out, err = mco(fleet, "facts", fact, "--json", *args)
    assert code == 0, err
    return json.loads(out)


def node_file(fleet, identity):
    return fleet.directory / "nodes" / identity / "facts.yaml"


def node_log(fleet, identity):
    return (fleet.directory / "nodes" / identity / "collectived.log").read_text()


def wait_for(predicate, deadline=CHANGE_DEADLINE, pause=0.5):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(pause)


def test_mco_facts_reports_nested_yaml_facts(fleet):
    assert facts_report(fleet, "os.family") == {"debian": ["node-001", "node-003"],
                                                "redhat": ["node-002"]}
    code, out, _ = mco(fleet, "facts", "os.family", "--dt", "1")
    assert code == 0
    assert "Report for fact: os.family" in out
    assert [line.split() for line in out.splitlines() if "found" in line] == [
        ["debian", "found", "2", "times"], ["redhat", "found", "1", "times"]]


def test_files_merge_in_order_later_wins(fleet):
    # common.yaml says role: unknown, each node's own file (later) wins; os.kernel comes
    # from common.yaml and os.family from the node's file: nested mappings merge.
    assert facts_report(fleet, "role") == {"web": ["node-001"], "db": ["node-002"],
                                           "cache": ["node-003"]}
    assert facts_report(fleet, "os.kernel") == {"linux": NODES}
    assert facts_report(fleet, "location") == {"uk": NODES}


@pytest.mark.parametrize(("args", "expected"), [
    (["-F", "os.family=debian"], ["node-001", "node-003"]),
    (["-F", "os.release.major>=11"], ["node-001", "node-003"]),
    (["-F", "os.kernel=linux", "-F", "role=db"], ["node-002"]),
    (["-S", "os.family=debian and role=cache"], ["node-003"]),
    (["-S", "os.family=redhat or os.release.major=12"], ["node-001", "node-002"]),
])
def test_find_filters_on_yaml_facts(fleet, args, expected):
    code, out, err = mco(fleet, "find", *args, "--dt", "1")
    assert (code, out.split()) == (0, expected), err


def test_registration_inventory_sees_yaml_facts(fleet, tmp_path):
    with Inventory(tmp_path / "inventory.db") as inventory:
        with Collector(load_config(fleet.client_config), inventory):
            def all_registered():
                nodes = {n.identity: n for n in inventory.nodes()}
                return nodes if sorted(nodes) == NODES else None

            nodes = wait_for(all_registered)
        assert nodes, "not every node registered within the deadline"
        assert nodes["node-002"].facts["os"] == {"family": "redhat", "kernel": "linux",
                                                 "release": {"major": 9}}
        assert nodes["node-001"].facts["role"] == "web"
    code, out, err = mco(fleet, "find", "--dm", "inventory", "--do",
                         f"db={tmp_path / 'inventory.db'}", "-F", "os.family=debian")
    assert (code, out.split()) == (0, ["node-001", "node-003"]), err


def test_an_edit_is_seen_without_restart_and_bad_yaml_keeps_the_last_good_facts(fleet):
    path = node_file(fleet, "node-002")
    pid = fleet.pids["node-002"]

    def version():
        return facts_report(fleet, "app.version", "-I", "node-002")

    assert version() == {"1": ["node-002"]}
    path.write_text(NODE_FACTS["node-002"].replace("version: 1", "version: 2"))
    started = time.monotonic()
    assert wait_for(lambda: version() == {"2": ["node-002"]}), version()
    assert time.monotonic() - started < 12, "the change took longer than the caches allow"
    assert fleet.pids["node-002"] == pid  # same process: no restart

    path.write_text("role: db\napp: {version: 3\nos: [\n")  # broken on line 3

    def logged_errors():
        return [line for line in node_log(fleet, "node-002").splitlines()
                if "ERROR" in line and str(path) in line]

    errors = wait_for(logged_errors)
    assert errors, "no error about the bad file in collectived.log"
    assert "line 3, column" in errors[0] and "keeping its last good facts" in errors[0]
    time.sleep(7)  # past both caches: the source has re-checked the unchanged bad file
    assert version() == {"2": ["node-002"]}
    assert facts_report(fleet, "os.family", "-I", "node-002") == {"redhat": ["node-002"]}
    assert len(logged_errors()) == 1, "the same bad file was logged more than once"

    path.write_text(NODE_FACTS["node-002"])  # fixed again
    assert wait_for(lambda: version() == {"1": ["node-002"]}), version()
    assert "read again" in node_log(fleet, "node-002")
