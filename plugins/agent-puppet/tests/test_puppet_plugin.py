"""The plugin contract, the entry point, the formats, the CLI's pure parts and the wheel."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import collective_agent_puppet
import collective_agent_puppet.plugin as puppet_plugin
from collective.testing import check_plugin
from collective_agent_puppet import common
from collective_agent_puppet.cli import count_lines, runonce_data, summary_lines
from collective_agent_puppet.data import PuppetData, ResourceData

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def test_plugin_contract():
    check_plugin(puppet_plugin)


def test_entry_point_and_version():
    dist = metadata.distribution("collective-agent-puppet")
    [ep] = [ep for ep in dist.entry_points if ep.group == "collective"]
    assert (ep.name, ep.value) == ("agent-puppet", "collective_agent_puppet.plugin")
    assert dist.version == collective_agent_puppet.__version__


def test_registrations_through_entry_points():
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert pm.agents()["puppet"].__module__ == "collective_agent_puppet.agent"
    assert "puppet" in pm.ddl_files()
    assert {name for name in pm.formats() if name.startswith("puppet_")} == {
        name for name, _check, _why in common.FORMATS}
    assert pm.data_plugins()["puppet"] is PuppetData
    assert pm.data_plugins()["resource"] is ResourceData


def test_testing_module_is_cheap_and_not_imported_by_the_plugin():
    import subprocess
    import sys

    code = ("import sys, collective_agent_puppet.plugin, collective_agent_puppet.testing; "
            "heavy = [m for m in ('yaml', 'pytest', 'collective_agent_puppet.agent', "
            "'collective_agent_puppet.state') if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    source = (PLUGIN_DIR / "src" / "collective_agent_puppet" / "plugin.py").read_text()
    assert "testing" not in source


def test_mco_puppet_help_lists_the_commands():
    from collective.cli.main import cli

    result = CliRunner().invoke(cli, ["puppet", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("status", "count", "summary", "enable", "disable", "runonce", "runall",
                    "resource"):
        assert f"  {command}" in result.output
    result = CliRunner().invoke(cli, ["puppet", "runonce", "--help"])
    for option in ("--noop / --no-noop", "--tags", "--environment", "--splay / --no-splay",
                   "--splaylimit", "--force", "--server", "--use-cached-catalog"):
        assert option in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["runonce", "--force", "--splay"], "Cannot set splay when forcing runs"),
    (["runonce", "--force", "--splaylimit", "5"], "Cannot set splaylimit when forcing runs"),
    (["runall", "0"], "has to be greater than 0"),
    (["runall", "2", "--splay"], "--splay and --splaylimit do not apply"),
    (["runall", "2", "--loops", "3"], "--loops only applies with --rerun"),
    (["resource", "host", "db", "ip"], "Could not parse argument 'ip'"),
])
def test_cli_usage_errors_before_connecting(args, message):
    from collective.cli.main import cli

    result = CliRunner().invoke(cli, ["puppet", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_runonce_data_from_options():
    assert runonce_data(False, None, (), None, None, None, None, None) == {}
    assert runonce_data(True, "puppet:8140", ("a,b", "c"), True, "production", None, None,
                        False) == {"force": True, "server": "puppet:8140", "tags": "a,b,c",
                                   "noop": True, "environment": "production",
                                   "use_cached_catalog": False}
    assert runonce_data(False, None, (), False, None, True, 60, None) == {
        "noop": False, "splay": True, "splaylimit": 60}


@pytest.mark.parametrize("value", ["apache", "apache,ntp", "apache::mod_ssl", "role.web-1",
                                   "Class_Name", "a" * 120])
def test_tags_accepted(value):
    assert common.tags_ok(value)


@pytest.mark.parametrize("value", ["", "-x", "--help", "a,", ",a", "a,,b", "a b", "a;b", "$(id)",
                                   "`id`", "a\nb", "caf\u00e9", "a" * 121, "a,-b"])
def test_tags_refused(value):
    assert not common.tags_ok(value)


@pytest.mark.parametrize(("value", "ok"), [
    ("production", True), ("dev_2", True), ("x", True), ("1", False), ("-e", False),
    ("prod env", False), ("../x", False), ("a" * 50, True), ("a" * 51, False), ("", False)])
def test_environment_format(value, ok):
    assert common.variable_ok(value) is ok


@pytest.mark.parametrize(("value", "parsed"), [
    ("puppet", ("puppet", None)), ("puppet.example.net:8140", ("puppet.example.net", 8140)),
    ("192.0.2.1", ("192.0.2.1", None)), ("192.0.2.1:8141", ("192.0.2.1", 8141)),
    ("2001:db8::1", ("2001:db8::1", None)), ("[2001:db8::1]:8140", ("2001:db8::1", 8140)),
    ("[::1]", ("::1", None)),
])
def test_server_address_parsed(value, parsed):
    assert common.parse_server(value) == parsed
    assert common.server_ok(value)


@pytest.mark.parametrize("value", ["", "-oProxyCommand=x", "--help", "host;id", "host:0",
                                   "host:65536", "host:port", "host:", ":8140", "[::1", "[::1]x",
                                   "fe80::1%eth0", "a_b.example", "-host.example", "h" * 64,
                                   "a" * 256, "host name"])
def test_server_address_refused(value):
    assert not common.server_ok(value)
    with pytest.raises(ValueError):
        common.parse_server(value)


@pytest.mark.parametrize(("check", "value", "ok"), [
    (common.resource_type_ok, "file", True), (common.resource_type_ok, "Apache::Vhost", True),
    (common.resource_type_ok, "-file", False), (common.resource_type_ok, "file;id", False),
    (common.resource_type_ok, "a" * 51, False),
    (common.resource_name_ok, "/etc/motd", True), (common.resource_name_ok, "db", True),
    (common.resource_name_ok, "web server.example", True),
    (common.resource_name_ok, "-rf", False), (common.resource_name_ok, "$(id)", False),
    (common.resource_name_ok, "x\ny", False), (common.resource_name_ok, "a" * 151, False),
    (common.resource_value_ok, "192.0.2.10", True), (common.resource_value_ok, "hello world!", True),
    (common.resource_value_ok, "", True),
    (common.resource_value_ok, "-1", False), (common.resource_value_ok, "a`id`", False),
    (common.resource_value_ok, "$(id)", False), (common.resource_value_ok, "x;y", False),
    (common.resource_value_ok, "it's", False), (common.resource_value_ok, "a\nb", False),
    (common.resource_value_ok, "a" * 1025, False),
    (common.resource_ok, "file[/srv/www]", True), (common.resource_ok, "File[/srv/www]", True),
    (common.resource_ok, "host[db]", True), (common.resource_ok, "file", False),
    (common.resource_ok, "file[$(id)]", False), (common.resource_ok, "[x]", False),
])
def test_resource_formats(check, value, ok):
    assert check(value) is ok


def test_seconds_to_human():
    assert common.seconds_to_human(5) == "05 seconds"
    assert common.seconds_to_human(551) == "9 minutes 11 seconds"
    assert common.seconds_to_human(3725) == "1 hours 2 minutes 05 seconds"
    assert common.seconds_to_human(86400 + 61) == "1 day 0 hours 1 minutes 01 seconds"
    assert common.seconds_to_human(3 * 86400) == "3 days 0 hours 0 minutes 00 seconds"


def test_spark_row():
    row = common.spark_row([0, 0, 0, 10])
    bars, rest = row.split("  ", 1)
    assert len(bars) == 20 and bars[0] == "▇" and bars[-1] == "▃" and set(bars[1:-1]) == {"▁"}
    assert rest.split() == ["min:", "0.0", "avg:", "2.5", "max:", "10.0"]
    assert common.spark_row([3, 3]).startswith("▇" + "▁" * 19)
    assert common.spark_row([]) == "" and common.spark_row([None, "x"]) == ""
    assert common.shorten(1700) == "1.7k" and common.shorten(2_500_000) == "2.5m"


class _Reply:
    def __init__(self, sender, data, statuscode=0):
        self.sender, self.data, self.statuscode = sender, data, statuscode
        self.statusmsg = "OK" if statuscode == 0 else "failed"

    @property
    def ok(self):
        return self.statuscode == 0


def test_count_lines():
    replies = [_Reply("a", {"enabled": True, "applying": False, "daemon_present": True,
                            "idling": True}),
               _Reply("b", {"enabled": False, "applying": False, "daemon_present": False,
                            "idling": False}),
               _Reply("c", {}, statuscode=1)]
    text = "\n".join(count_lines(replies))
    assert "Total Puppet nodes: 2" in text
    assert "Nodes currently enabled: 1" in text and "Nodes currently disabled: 1" in text
    assert "Nodes currently doing puppet runs: 0" in text and "Nodes currently stopped: 2" in text
    assert "Nodes with daemons started: 1" in text and "Daemons started but idling: 1" in text
    assert "Failed to retrieve status of 1 node" in text


def test_summary_lines():
    replies = [_Reply("a", {"total_resources": 10, "lastrun": 100, "since_lastrun": 50,
                            "failed_resources": 0}),
               _Reply("b", {"total_resources": 30, "lastrun": 0, "since_lastrun": 1_700_000_000,
                            "failed_resources": 2})]
    lines = summary_lines(replies)
    assert lines[0] == "Summary statistics for 2 nodes:"
    row = next(line for line in lines if line.strip().startswith("Total resources:"))
    assert "min: 10.0" in row and "max: 30.0" in row
    since = next(line for line in lines if "Time since last run" in line)
    assert "max: 50.0" in since  # the node that never ran is left out
    assert any("(1 node has never completed a run)" in line for line in lines)


@pytest.mark.slow
def test_wheel_installs_alone_into_a_fresh_venv(tmp_path):
    from collective.testing.wheels import fresh_venv_with

    found = fresh_venv_with(PLUGIN_DIR, tmp_path)
    assert found["statuses"].get("agent-puppet") == "ok", found["statuses"]
    assert "puppet" in found["agents"]
    assert found["ddls"]["puppet"] == collective_agent_puppet.__version__
