"""End to end: the xen agent (collective-agent-xen) on a real 2-node fleet, driven by
the real `mco`. Each collectived talks to its own libvirt test driver (`test:///FILE`,
in-process, no libvirtd) holding different domains:

- node-001: web01 running, db01 paused, old01 shut off
- node-002: app01 running, cache01 shut off

so `find` has exactly one holder, and start/destroy change a daemon's state for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from collective.fleet import fleet_down, fleet_up
from collective.testing import require

NODES = ["node-001", "node-002"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    try:
        from collective_agent_xen.testing import (
            TestDomain,
            libvirt_available,
            test_uri,
            write_node_xml,
        )
    except ImportError:
        require(False, "collective-agent-xen is not installed (make install)")
    why = libvirt_available()
    require(why is None, f"xen e2e: {why}")
    hosts = tmp_path_factory.mktemp("xenhosts")
    domains = {
        "node-001": [TestDomain("web01", "running", 1024, 2), TestDomain("db01", "paused", 2048, 2),
                     TestDomain("old01", "shutoff", 512, 1)],
        "node-002": [TestDomain("app01", "running", 768, 1), TestDomain("cache01", "shutoff")],
    }
    uris = {node: test_uri(write_node_xml(hosts / f"{node}.xml", doms))
            for node, doms in domains.items()}

    def config_for(index, identity):
        settings = {"provider": "libvirt", "uri": uris[identity]}
        if identity == "node-001":
            settings["allow_migrate"] = True
        return {"plugins": {"xen": settings}}

    directory = tmp_path_factory.mktemp("xenfleet")
    started = fleet_up(directory, nodes=2, server_config_for=config_for)
    try:
        yield started
    finally:
        fleet_down(directory, quiet=True)


def mco(fleet, *args, timeout=90):
    proc = subprocess.run([sys.executable, "-m", "collective", *args,
                           "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def host_lines(out):
    """{node: "N domains: ..."} from the per-host lines of `mco xen list`."""
    found = {}
    for line in out.splitlines():
        node, sep, rest = line.partition(": ")
        if sep and node in NODES:
            found[node] = rest
    return found


def test_list_shows_each_hosts_states_and_the_summary(fleet):
    code, out, err = mco(fleet, "xen", "list", "--dt", "1")
    assert code == 0, out + err
    assert host_lines(out) == {"node-001": "2 domains: 1 running, 1 paused",
                               "node-002": "1 domain: 1 running"}
    assert re.search(r"^\s+web01\s+\d+\s+running\s+1024 MiB\s+2$", out, re.M)
    assert re.search(r"^\s+db01\s+\d+\s+paused\s+2048 MiB\s+2$", out, re.M)
    assert "Summary of Domains:" in out
    assert re.search(r"^\s+running = 2$", out, re.M) and re.search(r"^\s+paused = 1$", out, re.M)
    assert "Finished processing 2 / 2 hosts" in out

    code, out, err = mco(fleet, "xen", "list", "--all", "--dt", "1")
    assert code == 0, out + err
    assert host_lines(out) == {"node-001": "3 domains: 1 running, 1 paused, 1 shutoff",
                               "node-002": "2 domains: 1 running, 1 shutoff"}
    assert re.search(r"^\s+old01\s+-\s+shutoff\s+512 MiB\s+1$", out, re.M)


def test_list_json(fleet):
    code, out, err = mco(fleet, "xen", "list", "-I", "node-002", "--json")
    assert code == 0, err
    [reply] = json.loads(out)
    assert reply["sender"] == "node-002"
    assert [d["name"] for d in reply["data"]["domains"]] == ["app01"]
    assert reply["data"]["host"]["hypervisor"] == "TEST"


def test_find_prints_only_the_holder_and_ends_at_its_reply(fleet):
    started = time.monotonic()
    code, out, err = mco(fleet, "xen", "find", "app01", "--dt", "20")
    elapsed = time.monotonic() - started
    assert code == 0, out + err
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(r"node-002: app01 running \(id \d+\)", lines[0]), out
    # it did not wait for the 20 s window: the holder's reply ended the collection
    assert elapsed < 12, elapsed

    code, out, err = mco(fleet, "xen", "find", "db01", "--json", "--dt", "20")
    assert code == 0, err
    [reply] = json.loads(out)  # only the holder answered; node-002 was filtered out
    assert (reply["sender"], reply["data"]["found"], reply["data"]["state"]) == (
        "node-001", True, "paused")


def test_find_of_an_unknown_domain(fleet):
    code, out, err = mco(fleet, "xen", "find", "nosuch", "--dt", "1.5")
    assert code == 1
    assert out == ""
    assert "No host has domain nosuch (waited 1.5s)" in err


def test_info_asks_only_the_holder(fleet):
    code, out, err = mco(fleet, "xen", "info", "db01", "--dt", "1")
    assert code == 0, out + err
    assert out.startswith("node-001")
    assert "node-002" not in out
    assert re.search(r"^\s+Domain State: paused$", out, re.M)
    assert re.search(r"^\s+Memory \(MiB\): 2048$", out, re.M)
    assert "Finished processing 1 / 1 hosts" in out


def test_rpc_to_a_host_without_the_domain_says_so(fleet):
    # display "ok": mco rpc hides the failure (as MCollective hid non-holders) but the
    # exit status counts it, and --json shows it
    code, out, err = mco(fleet, "rpc", "xen", "info", "domain=web01", "-I", "node-002")
    assert code == 2
    assert "Finished processing 1 / 1 hosts" in out and "node-002" not in out
    code, out, err = mco(fleet, "rpc", "xen", "info", "domain=web01", "-I", "node-002", "--json")
    [reply] = json.loads(out)
    assert (reply["statuscode"], reply["statusmsg"]) == (1, "No such domain: web01")


def test_start_and_destroy_through_mco(fleet):
    code, out, err = mco(fleet, "xen", "start", "cache01", "--dt", "1")
    assert code == 0, out + err
    assert re.search(r"^node-002: cache01 running$", out, re.M), out
    assert "node-001" not in out
    code, out, err = mco(fleet, "xen", "list", "-I", "node-002", "--json")
    states = {d["name"]: d["state"] for d in json.loads(out)[0]["data"]["domains"]}
    assert states == {"app01": "running", "cache01": "running"}

    code, out, err = mco(fleet, "xen", "destroy", "cache01", "--dt", "1")
    assert code == 0, out + err
    assert re.search(r"^node-002: cache01 shutoff$", out, re.M), out
    code, out, err = mco(fleet, "xen", "find", "cache01", "--json")
    assert json.loads(out)[0]["data"]["state"] == "shutoff"


def test_a_refused_operation_is_reported(fleet):
    code, out, err = mco(fleet, "xen", "start", "db01", "--dt", "1")
    assert code == 2, out + err
    assert "node-001: Request Aborted: Domain db01 is paused: resume it instead" in out


def test_compound_filters_with_the_data_plugin(fleet):
    code, out, err = mco(fleet, "find", "-S", 'xen("web01").present=true')
    assert code == 0, err
    assert out.split() == ["node-001"]
    code, out, err = mco(fleet, "find", "-S", 'xen("app01")=running')
    assert out.split() == ["node-002"]
    code, out, err = mco(fleet, "find", "-S", 'not xen("web01").present=true')
    assert out.split() == ["node-002"]
    code, out, err = mco(fleet, "rpc", "xen", "find", "domain=web01", "-S",
                         'xen("web01").state=running', "--json")
    assert code == 0, err
    assert [r["sender"] for r in json.loads(out)] == ["node-001"]


def test_migrate_through_mco(fleet):
    code, out, err = mco(fleet, "xen", "migrate", "app01", "xen-host-2", "--dt", "1")
    assert code == 2
    assert ("node-002: Request Aborted: migrate is disabled on this node "
            "(set plugins.xen.allow_migrate: true)") in out
    code, out, err = mco(fleet, "xen", "migrate", "web01", "node-002", "--dt", "1")
    assert code == 2
    assert "node-001: Request Aborted: could not migrate web01 to node-002" in out
    assert "migration is not supported" in out  # the test driver cannot migrate
    code, out, err = mco(fleet, "xen", "find", "web01", "--json")
    assert json.loads(out)[0]["data"]["state"] == "running"


def test_bad_input_is_refused_before_sending(fleet, tmp_path):
    pwn = tmp_path / "pwn"
    for args in (["start", f"web01; touch {pwn}"], ["find", f"$(touch {pwn})"],
                 ["migrate", "web01", f"x;touch {pwn}"], ["destroy", "a" * 65]):
        code, out, err = mco(fleet, "xen", *args)
        assert code == 1, (args, out, err)
        assert "Cannot validate input" in err and "Traceback" not in err, err
    assert not pwn.exists()
    code, out, err = mco(fleet, "xen", "list", "-I", "node-001", "--json")
    states = {d["name"]: d["state"] for d in json.loads(out)[0]["data"]["domains"]}
    assert states == {"web01": "running", "db01": "paused"}


def test_plugin_doc(fleet):
    proc = subprocess.run([sys.executable, "-m", "collective", "plugin", "doc", "xen"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, err
    assert out.startswith("xen\n===\n")
    for action in ("list", "find", "info", "start", "shutdown", "reboot", "destroy", "migrate"):
        assert f"{action} action:" in out
    assert "Format: xen_destination" in out
