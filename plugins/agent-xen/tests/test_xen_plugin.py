"""The contract every plugin passes, the entry point as installed, the CLI's pieces,
and the wheel alone in a fresh venv (where the libvirt binding is absent)."""

from __future__ import annotations

import json
import subprocess
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import collective_agent_xen
import collective_agent_xen.plugin as xen_plugin
from collective.testing import check_plugin

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def test_plugin_contract():
    check_plugin(xen_plugin)


def test_entry_point_version_and_extra():
    dist = metadata.distribution("collective-agent-xen")
    [ep] = [ep for ep in dist.entry_points if ep.group == "collective"]
    assert (ep.name, ep.value) == ("agent-xen", "collective_agent_xen.plugin")
    assert dist.version == collective_agent_xen.__version__
    requires = dist.requires or []
    assert any(r.startswith("libvirt-python") and "extra ==" in r and "libvirt" in r.split(";")[1]
               for r in requires), requires
    assert not any(r.startswith("libvirt-python") and "extra" not in r for r in requires)


def test_loaded_through_entry_points():
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert pm.agents()["xen"].__module__ == "collective_agent_xen.agent"
    assert "xen" in pm.ddl_files()
    assert pm.data_plugins()["xen"].__name__ == "XenData"
    assert {"xen_domain", "xen_destination"} <= set(pm.formats())
    assert "domain_states" in pm.aggregates()


def test_the_ddl_timeout_is_long_for_migrate_only():
    from collective.ddl import AgentDDL
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager(load_entrypoints=False, plugins=[xen_plugin])
    ddl = AgentDDL.load(pm.ddl_files()["xen"], formats=pm.formats())
    assert ddl.timeout == 300
    assert ddl.actions["find"].display == "ok"
    assert ddl.actions["migrate"].inputs["live"]["default"] is True
    assert ddl.actions["migrate"].inputs["destination"]["format"] == "xen_destination"
    from collective_agent_xen.common import QUICK_BUDGET, QUICK_WAIT

    assert QUICK_BUDGET < QUICK_WAIT < ddl.timeout


def test_mco_xen_help_lists_the_subcommands():
    from collective.cli.main import cli

    result = CliRunner().invoke(cli, ["xen", "--help"])
    assert result.exit_code == 0, result.output
    for word in ("list", "find", "info", "start", "shutdown", "reboot", "destroy", "suspend",
                 "resume", "migrate"):
        assert f"  {word}" in result.output
    migrate = CliRunner().invoke(cli, ["xen", "migrate", "--help"])
    assert "DOMAIN DESTINATION" in migrate.output and "--no-live" in migrate.output


def test_mco_plugin_doc_xen_renders():
    from collective.cli.main import cli

    result = CliRunner().invoke(cli, ["plugin", "doc", "xen"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("xen\n===\n")
    assert "Timeout: 300" in out
    assert "migrate action:" in out and "find action:" in out
    assert "Format: xen_domain" in out and "Format: xen_destination" in out


def test_mco_xen_refuses_bad_input_before_connecting(tmp_path):
    """Nothing listens on the configured broker port (9, discard): a client that validates
    first exits 1 with the DDL's message, never with a connection error."""
    from collective.cli.main import cli

    (tmp_path / "psk").write_text("x" * 32)
    config = tmp_path / "client.yaml"
    config.write_text(f"identity: admin\nbroker:\n  host: 127.0.0.1\n  port: 9\n"
                      f"security:\n  provider: psk\n  psk_file: {tmp_path / 'psk'}\n")
    cases = [(["find", "web01;id"], "Cannot validate input domain"),
             (["start", "-c", str(config), "--", "-x"], "Cannot validate input domain"),
             (["info", "../x"], "Cannot validate input domain"),
             (["migrate", "web01", "a;b"], "Cannot validate input destination"),
             (["migrate", "web01", "-c", str(config), "--", "--help"],
              "Cannot validate input destination")]
    for args, message in cases:
        argv = ["xen", *args] if "--" in args else ["xen", *args, "-c", str(config)]
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "xen_" in result.output, result.output
        assert "onnect" not in result.output, result.output


def test_host_block_and_state_summary():
    from collective.client.results import NodeReply
    from collective_agent_xen.cli import host_block

    reply = NodeReply(sender="node-001", agent="xen", action="list", statuscode=0,
                      statusmsg="OK", elapsed_ms=1.0, data={"domains": [
                          {"name": "db01", "id": 2, "state": "paused", "memory": 2048, "vcpus": 2},
                          {"name": "old01", "id": None, "state": "shutoff", "memory": 512,
                           "vcpus": 1},
                          {"name": "web01", "id": 1, "state": "running", "memory": 1024,
                           "vcpus": 2}]})
    lines = host_block(reply)
    assert lines[0] == "node-001: 3 domains: 1 running, 1 paused, 1 shutoff"
    assert lines[1].split() == ["NAME", "ID", "STATE", "MEMORY", "VCPUS"]
    assert lines[3].split() == ["old01", "-", "shutoff", "512", "MiB", "1"]
    empty = NodeReply(sender="node-002", agent="xen", action="list", statuscode=0,
                      statusmsg="OK", elapsed_ms=1.0, data={"domains": []})
    assert host_block(empty) == ["node-002: no domains"]


def test_domain_states_aggregate():
    from collective.aggregates import render
    from collective_agent_xen.common import domain_states

    result = domain_states([[{"state": "shutoff"}, {"state": "running"}],
                            [{"state": "running"}, {"state": "paused"}], "junk"], [])
    assert result.value == {"running": 2, "paused": 1, "shutoff": 1}
    assert render("Domains", result) == ("Summary of Domains:\n\n   running = 2\n"
                                         "    paused = 1\n   shutoff = 1\n")


def test_scoped_filters():
    from collective.filters import Filter
    from collective_agent_xen.cli import scoped

    flt = scoped(Filter(), {"nodes": None}, "web01")
    assert (flt.agent, flt.compound) == (["xen"], ['xen("web01").present=true'])
    direct = scoped(Filter(identity=["node-001"]), {"nodes": None}, "web01")
    assert (direct.agent, direct.compound) == ([], [])
    listed = scoped(Filter(), {"nodes": ["node-001"]}, "web01")
    assert listed.compound == []
    plain = scoped(Filter(fact=[]), {"nodes": None}, None)
    assert (plain.agent, plain.compound) == (["xen"], [])


_PROBE = textwrap.dedent("""
    import json
    import collective_agent_xen.plugin as xen_plugin
    from collective.config import Config
    from collective.ddl import AgentDDL
    from collective.plugins import get_plugin_manager
    from collective.server.dispatch import AgentHost, CallInfo, StaticNode

    config = Config({"identity": "probe", "plugins": {"xen": {"provider": "libvirt"}}},
                    kind="server", env={})
    pm = get_plugin_manager(load_entrypoints=False, plugins=[xen_plugin])
    ddls = {n: AgentDDL.load(r, formats=pm.formats()) for n, r in pm.ddl_files().items()}
    node = StaticNode(identity="probe", config=config, facts={}, classes=[])
    host = AgentHost(config, node, pm.agents(), ddls, data_plugins=pm.data_plugins())
    host.load()
    info = CallInfo(request_id="1" * 32, caller="cert=probe", sender="probe", agent="xen",
                    action="list", data={}, collective="mcollective", time=0)
    out = host.prepare(info) or host.run(info)
    print(json.dumps({"statuscode": out.statuscode, "statusmsg": out.statusmsg}))
""")


@pytest.mark.slow
def test_wheel_alone_in_a_fresh_venv(tmp_path):
    from collective.testing.wheels import fresh_venv_with

    found = fresh_venv_with(PLUGIN_DIR, tmp_path)
    assert found["statuses"].get("agent-xen") == "ok", found["statuses"]
    assert "xen" in found["agents"]
    assert found["ddls"]["xen"] == collective_agent_xen.__version__
    # that venv has collective-core and this wheel only: no libvirt binding, so the
    # agent answers status 1 and says how to get it
    python = tmp_path / "venv" / "bin" / "python"
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True,
                           timeout=120, check=True, cwd=tmp_path)
    reply = json.loads(probe.stdout.strip().splitlines()[-1])
    assert reply["statuscode"] == 1
    assert "pip install 'collective-agent-xen[libvirt]'" in reply["statusmsg"]


def test_the_client_side_modules_import_neither_libvirt_nor_the_providers():
    import sys

    code = ("import sys, collective_agent_xen.plugin, collective_agent_xen.cli, "
            "collective_agent_xen.common; "
            "bad = [m for m in sys.modules if m == 'libvirt' or m.startswith("
            "('collective_agent_xen.providers', 'collective_agent_xen.agent'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
