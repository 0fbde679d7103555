"""End to end: the nrpe agent on a real 3-node fleet running the real Nagios plugins,
driven by the real `mco nrpe`, `mco rpc`, `mco find -S` and `check-collective-nrpe`.

Each node has its own NRPE configuration: ``check_state`` is OK on node-001, WARNING on
node-002 and CRITICAL on node-003; ``check_load`` is the real check_load everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collective.fleet import fleet_down, fleet_up
from collective.testing import require

STATES = {"node-001": 0, "node-002": 1, "node-003": 2}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require(importlib.util.find_spec("collective_agent_nrpe") is not None,
            "collective-agent-nrpe is not installed (make install)")
    from collective_agent_nrpe.testing import missing_plugins, plugin, write_nrpe_cfg

    why = missing_plugins()
    require(why is None, f"nrpe end-to-end tests: {why}")
    directory = tmp_path_factory.mktemp("nrpe-fleet")

    def nrpe_config(index, identity):
        cfg = write_nrpe_cfg(directory / "nrpe" / identity / "nrpe.cfg", {
            "check_state": f'{plugin("check_dummy")} {STATES[identity]} "state of {identity}"',
            "check_load": f"{plugin('check_load')} -w 1000,1000,1000 -c 2000,2000,2000",
            "check_hang": "/bin/sleep 300",
        })
        return {"plugins": {"nrpe": {"conf_file": str(cfg), "conf_dir": [],
                                     "command_timeout": 1}}}

    started = fleet_up(directory, nodes=3, server_config_for=nrpe_config)
    yield started
    fleet_down(directory)


def mco(fleet, *args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def check_script(fleet, *args, timeout=60):
    script = shutil.which("check-collective-nrpe", path=str(Path(sys.executable).parent))
    assert script is not None, "check-collective-nrpe is not installed (make install)"
    proc = subprocess.run([script, *args, "-c", str(fleet.client_config)], capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def shown_nodes(out):
    return re.findall(r"^(node-\d{3})\s+status=(\w+)$", out, re.M)


def summary(out):
    block = out.split("Summary of Exit Code:", 1)[1]
    return dict(re.findall(r"^\s+(OK|WARNING|CRITICAL|UNKNOWN) : (\d+)$", block, re.M))


def test_mco_nrpe_shows_only_the_problems_and_the_summary(fleet):
    code, out, err = mco(fleet, "nrpe", "check_state", "--dt", "1")
    assert code == 2, out + err  # some checks are not OK
    assert shown_nodes(out) == [("node-002", "WARNING"), ("node-003", "CRITICAL")]
    assert "    WARNING: state of node-002" in out and "    CRITICAL: state of node-003" in out
    assert "state of node-001" not in out
    assert summary(out) == {"OK": "1", "WARNING": "1", "CRITICAL": "1", "UNKNOWN": "0"}
    assert "Finished processing 3 / 3 hosts" in out


def test_mco_nrpe_verbose_shows_every_node_and_the_stats(fleet):
    code, out, _ = mco(fleet, "nrpe", "check_state", "-v", "--dt", "1")
    assert code == 2
    assert shown_nodes(out) == [("node-001", "OK"), ("node-002", "WARNING"),
                                ("node-003", "CRITICAL")]
    assert "---- check_state NRPE results ----" in out
    assert re.search(r"^\s+Nodes: 3 / 3$", out, re.M)
    assert re.search(r"^\s+Pass / Fail: 1 / 2$", out, re.M)


def test_a_real_check_that_passes_everywhere(fleet):
    code, out, err = mco(fleet, "nrpe", "check_load", "--dt", "1")
    assert code == 0, out + err
    assert shown_nodes(out) == []
    assert summary(out) == {"OK": "3", "WARNING": "0", "CRITICAL": "0", "UNKNOWN": "0"}


def test_a_hanging_check_comes_back_unknown_at_the_node_timeout(fleet):
    started = time.monotonic()
    code, out, _ = mco(fleet, "nrpe", "check_hang", "-I", "node-001")
    assert time.monotonic() - started < 15  # the node's 1 s, not the DDL's 20 s
    assert code == 2
    assert shown_nodes(out) == [("node-001", "UNKNOWN")]
    assert "timed out after 1 s and was killed with its process group" in out


def test_nagios_mode_is_one_status_line_and_the_worst_state(fleet):
    code, out, _ = mco(fleet, "nrpe", "check_state", "--nagios", "--dt", "1")
    assert code == 2
    lines = out.splitlines()
    assert lines[0] == ("CRITICAL: check_state on 3 node(s): 1 OK, 1 WARNING, 1 CRITICAL, "
                        "0 UNKNOWN, 0 no answer|total=3 ok=1 warning=1 critical=1 unknown=0 "
                        f"no_answer=0 time={lines[0].rsplit('time=', 1)[1]}")
    assert lines[1:] == ["CRITICAL: node-003", "WARNING: node-002"]


@pytest.mark.parametrize(("nodes", "expected", "state"), [
    (["node-001"], 0, "OK"), (["node-001", "node-002"], 1, "WARNING"),
])
def test_check_script_exits_with_the_fleet_state(fleet, nodes, expected, state):
    args = [arg for node in nodes for arg in ("-I", node)]
    code, out, err = check_script(fleet, "check_state", *args)
    assert code == expected, out + err
    assert out.startswith(f"{state}: check_state on {len(nodes)} node(s): ")
    assert f"|total={len(nodes)} ok=1 " in out.splitlines()[0]


def test_a_node_that_does_not_answer_makes_the_check_unknown(fleet):
    code, out, _ = check_script(fleet, "check_state", "-I", "node-001", "-I", "node-999", "-t", "2")
    assert code == 3
    assert out.startswith("UNKNOWN: check_state on 2 node(s): 1 OK, 0 WARNING, 0 CRITICAL, "
                          "0 UNKNOWN, 1 no answer|")
    assert "No answer: node-999" in out.splitlines()


def test_nothing_discovered_is_unknown_for_nagios(fleet):
    code, out, _ = check_script(fleet, "check_state", "-F", "role=nosuchrole", "--dt", "1")
    assert code == 3
    assert out == "UNKNOWN: No request sent, we did not discover any nodes.\n"


def test_the_data_plugin_selects_nodes_by_check_state(fleet):
    code, out, err = mco(fleet, "find", "-S", 'nrpe("check_state").exitcode=2', "--dt", "1")
    assert code == 0, err
    assert out.split() == ["node-003"]
    code, out, _ = mco(fleet, "find", "-S", 'nrpe("check_state").state=OK or '
                       'nrpe("check_state").exitcode=1', "--dt", "1")
    assert sorted(out.split()) == ["node-001", "node-002"]


def test_rpc_runcommand_json_carries_every_result(fleet):
    code, out, _ = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_state", "--json",
                       "-I", "node-001", "-I", "node-002", "-I", "node-003")
    assert code == 2
    replies = {r["sender"]: r for r in json.loads(out)}
    assert {n: (r["statuscode"], r["data"]["exitcode"]) for n, r in replies.items()} == {
        "node-001": (0, 0), "node-002": (1, 1), "node-003": (1, 2)}
    assert replies["node-003"]["statusmsg"] == "CRITICAL: state of node-003"


def test_rpc_runallcommands(fleet):
    code, out, err = mco(fleet, "rpc", "nrpe", "runallcommands", "-I", "node-002", "--json")
    assert code == 0, err
    [reply] = json.loads(out)
    commands = reply["data"]["commands"]
    assert sorted(commands) == ["check_hang", "check_load", "check_state"]
    assert commands["check_state"]["exitcode"] == 1 and commands["check_hang"]["exitcode"] == 3
    assert reply["data"]["exitcode"] == 3


@pytest.mark.parametrize("data", ["command=check_load;id", "command=$(id)", "command=-h",
                                  "command=check_state", ])
def test_bad_input_is_refused_on_the_client(fleet, data):
    extra = ["args=x;id"] if data == "command=check_state" else []
    code, _, err = mco(fleet, "rpc", "nrpe", "runcommand", data, *extra, "-I", "node-001")
    assert code == 1
    assert "Cannot validate input" in err


def test_unknown_command_over_the_fleet(fleet):
    code, out, _ = mco(fleet, "nrpe", "check_nope", "-I", "node-001")
    assert code == 2
    assert shown_nodes(out) == [("node-001", "UNKNOWN")]
    assert "    No such command: check_nope" in out


def test_plugin_doc_renders():
    proc = subprocess.run([sys.executable, "-m", "collective", "plugin", "doc", "nrpe"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "   runcommand action:" in proc.stdout and "   runallcommands action:" in proc.stdout
    assert "Format: nrpe_arguments" in proc.stdout and "Display As: Exit Code" in proc.stdout


def test_mco_fleet_up_with_a_server_config_for_the_agents(tmp_path):
    """The way README's fleet gets its agents configured: one YAML, {identity} per node."""
    require(importlib.util.find_spec("collective_agent_nrpe") is not None,
            "collective-agent-nrpe is not installed (make install)")
    from collective_agent_nrpe.testing import missing_plugins, plugin, write_nrpe_cfg

    require(missing_plugins() is None, f"nrpe end-to-end tests: {missing_plugins()}")
    for identity, code in (("node-001", 0), ("node-002", 2)):
        write_nrpe_cfg(tmp_path / "nrpe" / identity / "checks.cfg",
                       {"check_state": f"{plugin('check_dummy')} {code} {identity}"})
    agents = tmp_path / "agents.yaml"
    agents.write_text(f"plugins:\n  nrpe:\n    conf_file: []\n"
                      f"    conf_dir: {tmp_path}/nrpe/{{identity}}\n")
    directory = tmp_path / "fleet"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "collective", *args], capture_output=True,
                              text=True, timeout=120)

    up = run("fleet", "up", "--nodes", "2", "--dir", str(directory), "--server-config", str(agents))
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        checked = run("nrpe", "check_state", "-I", "node-001", "-I", "node-002",
                      "-c", str(directory / "client.yaml"))
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert shown_nodes(checked.stdout) == [("node-002", "CRITICAL")]
        assert "    CRITICAL: node-002" in checked.stdout
    finally:
        down = run("fleet", "down", "--dir", str(directory))
    assert down.returncode == 0 and "stopped 3 process(es)" in down.stdout
    bad = run("fleet", "up", "--dir", str(tmp_path / "other"), "--server-config",
              str(tmp_path / "absent.yaml"))
    assert bad.returncode != 0 and "absent.yaml" in bad.stderr
    assert not (tmp_path / "other" / "fleet.json").exists()
