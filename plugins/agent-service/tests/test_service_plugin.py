"""The contract every plugin passes, the entry point as installed, and the wheel alone."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import collective_agent_service
import collective_agent_service.plugin as service_plugin
from collective.testing import check_plugin
from collective_agent_service.cli import order

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def test_plugin_contract():
    check_plugin(service_plugin)


def test_entry_point_and_version():
    dist = metadata.distribution("collective-agent-service")
    [ep] = [ep for ep in dist.entry_points if ep.group == "collective"]
    assert (ep.name, ep.value) == ("agent-service", "collective_agent_service.plugin")
    assert dist.version == collective_agent_service.__version__


def test_loaded_through_entry_points():
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert pm.agents()["service"].__module__ == "collective_agent_service.agent"
    assert "service" in pm.ddl_files()
    assert pm.data_plugins()["service"].__name__ == "ServiceData"


def test_mco_lists_the_service_command():
    from collective.cli.main import cli

    result = CliRunner().invoke(cli, ["service", "--help"])
    assert result.exit_code == 0, result.output
    assert "SERVICE ACTION" in result.output
    assert "status, start, stop, restart" in result.output


def test_mco_service_refuses_an_unknown_action_before_connecting():
    from collective.cli.main import cli

    result = CliRunner().invoke(cli, ["service", "nginx", "explode"])
    assert result.exit_code == 2
    assert "Unknown action 'explode'" in result.output


@pytest.mark.parametrize(("words", "expected"), [
    (("nginx", "status"), ("nginx", "status")),
    (("restart", "nginx"), ("nginx", "restart")),
    (("status", "restart"), ("restart", "status")),  # the action first wins, as in MCollective
])
def test_cli_argument_order(words, expected):
    assert order(*words) == expected


@pytest.mark.slow
def test_wheel_alone_in_a_fresh_venv(tmp_path):
    from collective.testing.wheels import fresh_venv_with

    found = fresh_venv_with(PLUGIN_DIR, tmp_path)
    assert found["statuses"].get("agent-service") == "ok", found["statuses"]
    assert "service" in found["agents"]
    assert found["ddls"]["service"] == collective_agent_service.__version__
