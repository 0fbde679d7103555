"""docs/examples/rolling_upgrade.py run for real against a local fleet with stand-in
load balancer, package and check agents (from the collective-test-canary distribution)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collective.fleet import fleet_down, fleet_up

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "rolling_upgrade.py"
WEB = ["node-001", "node-002", "node-003", "node-004"]
LBS = ["node-005", "node-006"]


@pytest.fixture
def fleet(tmp_path):
    started = fleet_up(tmp_path / "fleet", nodes=6, extra_server_config={
        "plugins": {"standins": {"state": "standins.json"}}},
        facts_for=lambda index, identity: {"role": "web" if index <= 4 else "lb"})
    yield started
    fleet_down(tmp_path / "fleet")


def state(fleet, node):
    path = Path(fleet.directory) / "nodes" / node / "standins.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run_example(fleet, *extra):
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "-c", str(fleet.client_config), "--package", "nginx",
         "--web", "role=web", "--lb", "role=lb", "--lb-agent", "lb", "--package-agent", "pkgsim",
         "--check-agent", "checksim", *extra], capture_output=True, text=True, timeout=180)


def max_out_of_pool(log):
    out, peak = set(), 0
    for event, backend in log:
        (out.add if event == "disable" else out.discard)(backend)
        peak = max(peak, len(out))
    return peak


def test_rolling_upgrade_in_batches_of_two(fleet):
    proc = run_example(fleet, "--batch", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "upgraded: node-001, node-002, node-003, node-004" in proc.stdout
    for lb in LBS:
        lb_state = state(fleet, lb)
        assert lb_state["out"] == []
        assert max_out_of_pool(lb_state["log"]) == 2
        assert [b for e, b in lb_state["log"] if e == "disable"] == WEB
    for node in WEB:
        assert state(fleet, node)["versions"] == {"nginx": 2}


def test_a_failing_check_stops_the_rollout_and_keeps_the_node_out(fleet):
    broken = Path(fleet.directory) / "nodes" / "node-003" / "standins.json"
    broken.write_text(json.dumps({"broken": True}))
    proc = run_example(fleet, "--batch", "1")
    assert proc.returncode == 1
    assert "upgraded: node-001, node-002" in proc.stdout
    assert "failed: node-003: check: exit code 2" in proc.stdout
    for lb in LBS:
        assert state(fleet, lb)["out"] == ["node-003"]
    assert "versions" not in state(fleet, "node-004"), "the rollout went on after a failed batch"


def test_api_tour_example(tmp_path):
    """docs/examples/api_tour.py, the Python API guide's runnable example, on a 4-node fleet."""
    fleet = fleet_up(tmp_path / "tour", nodes=4)
    try:
        proc = subprocess.run([sys.executable, str(EXAMPLE.with_name("api_tour.py")), "-c", str(fleet.client_config)],
                              capture_output=True, text=True, timeout=180)
    finally:
        fleet_down(tmp_path / "tour")
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["web"] == ["node-001", "node-004"]
    assert seen["all"] == ["node-001", "node-002", "node-003", "node-004"]
    assert seen["locations"] == {"node-001": "uk", "node-004": "us"}
    assert seen["streamed"] == ["node-001", "node-004"] and seen["exit_code"] == 0
    assert seen["direct"] == ["node-001", "node-002"]
    assert seen["no_response"] == ["no-such-node"]
    assert seen["batches"] == [["node-001", "node-002"], ["node-003", "node-004"]]
    assert seen["window"] == 4 and seen["limited"] == 1
    assert len(seen["request_id"]) == 32
    assert seen["stats"] == {"expected": 2, "responded": 2, "discovery_performed": True}
