"""The contract every plugin passes, the entry points as installed, the CLI's own pieces,
and the wheel alone in a fresh venv."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import collective_agent_nrpe
import collective_agent_nrpe.plugin as nrpe_plugin
from collective.client.results import CallStats, NodeReply, Result
from collective.testing import check_plugin
from collective_agent_nrpe.cli import nagios_report, node_lines

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def reply(sender, exitcode=None, statuscode=None, output="", statusmsg=None):
    data = {} if exitcode is None else {"exitcode": exitcode, "output": output, "perfdata": ""}
    code = statuscode if statuscode is not None else (0 if exitcode == 0 else 1)
    return NodeReply(sender=sender, agent="nrpe", action="runcommand", statuscode=code,
                     statusmsg=statusmsg or ("OK" if code == 0 else "CRITICAL"), data=data,
                     elapsed_ms=1.0)


def test_plugin_contract():
    check_plugin(nrpe_plugin)


def test_entry_points_and_version():
    dist = metadata.distribution("collective-agent-nrpe")
    [ep] = [ep for ep in dist.entry_points if ep.group == "collective"]
    assert (ep.name, ep.value) == ("agent-nrpe", "collective_agent_nrpe.plugin")
    [script] = [ep for ep in dist.entry_points if ep.group == "console_scripts"]
    assert (script.name, script.value) == ("check-collective-nrpe", "collective_agent_nrpe.cli:check_main")
    assert dist.version == collective_agent_nrpe.__version__


def test_loaded_through_entry_points():
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert pm.agents()["nrpe"].__module__ == "collective_agent_nrpe.agent"
    assert "nrpe" in pm.ddl_files()
    assert pm.data_plugins()["nrpe"].__name__ == "NrpeData"
    assert pm.aggregates()["nagios_states"].failed_replies is True
    assert pm.formats()["nrpe_arguments"]("20%!10%") and not pm.formats()["nrpe_arguments"]("-x")


def test_mco_nrpe_help():
    from collective.cli.main import cli

    result = CliRunner().invoke(cli, ["nrpe", "--help"])
    assert result.exit_code == 0, result.output
    assert "Run the NRPE check CHECK" in result.output and "--nagios" in result.output


def test_nagios_report_counts_states_and_silent_nodes():
    result = Result(replies=[reply("n1", 0), reply("n2", 1), reply("n3", 2), reply("n4", 2),
                             reply("n5", statuscode=2, statusmsg="Unknown Action")],
                    stats=CallStats(expected=["n1", "n2", "n3", "n4", "n5", "n6"],
                                    responded=["n1", "n2", "n3", "n4", "n5"]))
    lines, code = nagios_report("check_disk", result, 0.25)
    assert code == 2
    assert lines == [
        "CRITICAL: check_disk on 6 node(s): 1 OK, 1 WARNING, 2 CRITICAL, 1 UNKNOWN, 1 no answer"
        "|total=6 ok=1 warning=1 critical=2 unknown=1 no_answer=1 time=0.250s",
        "CRITICAL: n3 n4", "UNKNOWN: n5", "WARNING: n2", "No answer: n6"]


@pytest.mark.parametrize(("codes", "silent", "expected"), [
    ([0, 0], [], 0), ([0, 1], [], 1), ([1, 3], [], 3), ([0], ["n9"], 3), ([1], ["n9"], 3),
    ([2], ["n9"], 2),
])
def test_nagios_exit_status_is_the_worst_state(codes, silent, expected):
    replies = [reply(f"n{i}", c) for i, c in enumerate(codes)]
    names = [r.sender for r in replies]
    result = Result(replies=replies, stats=CallStats(expected=names + silent, responded=names))
    assert nagios_report("c", result, 0.0)[1] == expected


def test_node_lines_show_the_state_and_output_or_the_failure():
    assert [click.unstyle(x) for x in node_lines(reply("node-002", 2, output="CRITICAL: a\nb"))] == [
        f"{'node-002':<40} status=CRITICAL", "    CRITICAL: a", "    b", ""]
    lines = [click.unstyle(x) for x in node_lines(reply("node-003", statuscode=2,
                                                        statusmsg="Unknown agent nrpe"))]
    assert lines == [f"{'node-003':<40} Unknown Action", "    Unknown agent nrpe", ""]


def test_check_script_reports_usage_errors_as_unknown():
    script = shutil.which("check-collective-nrpe", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed (make install)"
    proc = subprocess.run([script, "check_load", "--no-such-option"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 3
    assert proc.stdout.startswith("UNKNOWN: No such option '--no-such-option'")
    missing = subprocess.run([script], capture_output=True, text=True, timeout=60)
    assert (missing.returncode, missing.stdout.split(":")[0]) == (3, "UNKNOWN")


def test_check_script_reports_a_bad_config_as_unknown(tmp_path):
    script = shutil.which("check-collective-nrpe", path=str(Path(sys.executable).parent))
    bad = tmp_path / "client.yaml"
    bad.write_text("broker: [not, a, mapping\n")
    proc = subprocess.run([script, "check_load", "-c", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.startswith("UNKNOWN: ") and str(bad) in proc.stdout


@pytest.mark.slow
def test_wheel_alone_in_a_fresh_venv(tmp_path):
    from collective.testing.wheels import fresh_venv_with

    found = fresh_venv_with(PLUGIN_DIR, tmp_path)
    assert found["statuses"].get("agent-nrpe") == "ok", found["statuses"]
    assert "nrpe" in found["agents"]
    assert found["ddls"]["nrpe"] == collective_agent_nrpe.__version__
    assert (tmp_path / "venv" / "bin" / "check-collective-nrpe").is_file()
