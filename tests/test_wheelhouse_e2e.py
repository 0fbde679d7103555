"""Admins install from a wheelhouse: `make dist` builds every distribution with complete
metadata (twine check), and a node and a client installed from that wheelhouse alone (no
editable install, no source tree on the path) run an agent across the broker."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from collective.fleet import fleet_down, fleet_up
from collective.testing import require
from collective.testing.wheels import clean_env, make_venv

ROOT = Path(__file__).resolve().parents[1]
STATES = {"node-001": 0, "node-002": 2}


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """scripts/dist.sh (what `make dist` runs) for core and the nrpe agent."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "dist.sh"), str(out), "core",
                           "plugins/agent-nrpe"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def venv_python_runs(python: Path, code: str, cwd: Path) -> str:
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_dist_builds_wheels_and_sdists_that_pass_twine_check(wheelhouse):
    out, log = wheelhouse
    assert sorted(p.name for p in out.iterdir()) == [
        "collective_agent_nrpe-0.1.0-py3-none-any.whl", "collective_agent_nrpe-0.1.0.tar.gz",
        "collective_core-0.1.0-py3-none-any.whl", "collective_core-0.1.0.tar.gz"]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", log)
    assert plain.count(": PASSED") == 4 and "FAILED" not in plain and "WARNING" not in plain


def test_a_node_and_a_client_installed_from_the_wheelhouse(wheelhouse, tmp_path, monkeypatch):
    from collective_agent_nrpe.testing import missing_plugins, plugin, write_nrpe_cfg

    require(missing_plugins() is None, f"wheelhouse test: {missing_plugins()}")
    out, _ = wheelhouse
    # what the README tells admins to type, on a node and on a client
    node_python = make_venv(tmp_path / "node", "--find-links", str(out), "collective-agent-nrpe")
    client_python = make_venv(tmp_path / "client", "--find-links", str(out), "collective-core",
                              "collective-agent-nrpe")
    for python in (node_python, client_python):
        where = venv_python_runs(python, "import collective, collective_agent_nrpe; "
                                 "print(collective.__file__, collective_agent_nrpe.__file__)",
                                 tmp_path)
        site = str(python.parent.parent / "lib")
        assert all(path.startswith(site) for path in where.split()), where  # not the checkout
        editable = subprocess.run([str(python), "-m", "pip", "list", "--editable", "--format",
                                   "json"], capture_output=True, text=True, env=clean_env(),
                                  timeout=120)
        assert json.loads(editable.stdout) == []

    def nrpe(index, identity):
        cfg = write_nrpe_cfg(tmp_path / "nrpe" / identity / "nrpe.cfg", {
            "check_state": f"{plugin('check_dummy')} {STATES[identity]} {identity}"})
        return {"plugins": {"nrpe": {"conf_file": str(cfg), "conf_dir": []}}}

    monkeypatch.delenv("PYTHONPATH", raising=False)  # the daemons see the node venv only
    fleet = fleet_up(tmp_path / "fleet", nodes=2, python=node_python, server_config_for=nrpe)
    try:
        daemons = [Path(f"/proc/{pid}/exe").resolve() for name, pid in fleet.pids.items()]
        assert {str(exe) for exe in daemons} == {str(node_python.resolve())}
        mco = client_python.parent / "mco"
        checked = subprocess.run([str(mco), "nrpe", "check_state", "-v", "-c",
                                  str(fleet.client_config), "-I", "node-001", "-I", "node-002"],
                                 capture_output=True, text=True, timeout=120, env=clean_env(),
                                 cwd=tmp_path)
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert re.findall(r"^(node-\d+)\s+status=(\w+)$", checked.stdout, re.M) == [
            ("node-001", "OK"), ("node-002", "CRITICAL")]
        inventory = subprocess.run([str(mco), "rpc", "rpcutil", "agent_inventory", "--json", "-c",
                                    str(fleet.client_config), "-I", "node-001"],
                                   capture_output=True, text=True, timeout=120, env=clean_env(),
                                   cwd=tmp_path)
        [reply] = json.loads(inventory.stdout)
        versions = {a["agent"]: a["version"] for a in reply["data"]["agents"]}
        assert versions["nrpe"] == "0.1.0"
    finally:
        fleet_down(tmp_path / "fleet", quiet=True)
