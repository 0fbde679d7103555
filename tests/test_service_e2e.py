"""End to end: the service agent (collective-agent-service) on a real 2-node fleet with
the SysV provider, driven by the real `mco service`, managing a real init script
(`/etc/init.d/collective-test-*`, a `sleep` under start-stop-daemon) whose process is
checked directly.

Both daemons run on this machine, so they manage the same service: starting it
through node-001 makes both report it running, stopping it through node-002 makes
both report it stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest

from collective.fleet import fleet_down, fleet_up
from collective.testing import require
from collective_agent_service.testing import InitScript, available

NODES = ["node-001", "node-002"]


@pytest.fixture(scope="module")
def script():
    why = available()
    require(why is None, f"service e2e: {why}")
    installed = InitScript().install()
    try:
        yield installed
    finally:
        installed.remove()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, script):
    directory = tmp_path_factory.mktemp("servicefleet")
    started = fleet_up(directory, nodes=2, extra_server_config={
        "plugins": {"service": {"provider": "sysv"}}})
    try:
        yield started
    finally:
        fleet_down(directory, quiet=True)


def mco(fleet, *args, timeout=90):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def statuses(out):
    """{node: status} from the per-node lines of `mco service`."""
    found = {}
    for line in out.splitlines():
        node, sep, status = line.strip().partition(": ")
        if sep and node in NODES:
            found[node] = status
    return found


def test_start_status_stop_through_mco(fleet, script):
    code, out, err = mco(fleet, "service", script.name, "status", "--dt", "1")
    assert code == 0, out + err
    assert statuses(out) == {"node-001": "stopped", "node-002": "stopped"}
    assert "Summary of Service Status:" in out
    assert "stopped = 2" in out
    assert "Finished processing 2 / 2 hosts in" in out

    code, out, err = mco(fleet, "service", script.name, "start", "-I", "node-001")
    assert code == 0, out + err
    assert statuses(out) == {"node-001": "running"}
    assert "running = 1" in out
    assert "Finished processing 1 / 1 hosts" in out
    assert script.wait(running=True)
    proc = psutil.Process(script.pid())
    assert proc.cmdline() == ["/usr/bin/sleep", str(script.seconds)]

    code, out, err = mco(fleet, "service", script.name, "status", "--dt", "1")
    assert code == 0, out + err
    assert statuses(out) == {"node-001": "running", "node-002": "running"}
    assert "running = 2" in out

    # the action may come first, as in MCollective
    code, out, err = mco(fleet, "service", "stop", script.name, "-I", "node-002")
    assert code == 0, out + err
    assert statuses(out) == {"node-002": "stopped"}
    assert script.wait(running=False)
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE

    code, out, _ = mco(fleet, "service", script.name, "status", "-F", "role=db")
    assert code == 0
    assert statuses(out) == {"node-002": "stopped"}


def test_data_plugin_in_a_compound_filter(fleet, script):
    code, out, err = mco(fleet, "find", "-S", f'service("{script.name}").status=stopped', "--dt", "2")
    assert code == 0, out + err
    assert out.split() == NODES
    code, out, _ = mco(fleet, "find", "-S", f'service("{script.name}").status=running', "--dt", "2")
    assert out.split() == []


def test_unknown_service_fails_on_every_node(fleet):
    code, out, _ = mco(fleet, "service", "collective-test-nosuch", "restart", "--dt", "1")
    assert code == 2
    for node in NODES:
        assert f"{node}: Request Aborted: service collective-test-nosuch not found on this node" in out
    assert "No aggregate summary could be computed" in out


@pytest.mark.parametrize("name", ["x; touch /tmp/pwn", "-x", "--help", "$(id)", "x\ntouch /tmp/pwn"])
def test_bad_name_is_refused_before_sending(fleet, name):
    # after "--" so that click passes "-x" on as the service name
    proc = subprocess.run([sys.executable, "-m", "collective", "service", "-I", "node-001",
                           "-c", str(fleet.client_config), "--", name, "status"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "The service application failed to run" in proc.stderr
    assert "service_name" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_option_like_name_without_double_dash_is_a_usage_error(fleet):
    code, out, err = mco(fleet, "service", "-x", "status", "-I", "node-001")
    assert code == 2
    assert "No such option" in err and "-x" in err


def test_json_output(fleet, script):
    code, out, _ = mco(fleet, "service", script.name, "status", "--json", "--dt", "1")
    assert code == 0
    replies = json.loads(out)
    assert sorted(r["sender"] for r in replies) == NODES
    assert all(r["statuscode"] == 0 and r["data"] == {"status": "stopped"} for r in replies)


def test_rpc_reaches_the_same_agent(fleet, script):
    code, out, _ = mco(fleet, "rpc", "service", "status", f"service={script.name}", "-I", "node-001")
    assert code == 0
    assert "Service Status: stopped" in out
