"""Fixtures for the nrpe agent's tests: the real Nagios plugins and in-process nodes
whose NRPE configuration the test writes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

import collective_agent_nrpe.plugin as nrpe_plugin
from collective.testing import InProcessNode, require
from collective_agent_nrpe.testing import missing_plugins, write_nrpe_cfg


@pytest.fixture
def nagios_plugins() -> None:
    """The real plugins from Debian's monitoring-plugins-basic (fails under CI when absent)."""
    why = missing_plugins()
    require(why is None, f"nrpe agent tests: {why}")


@pytest.fixture
def nrpe_node(tmp_path, nagios_plugins) -> Callable[..., InProcessNode]:
    """``nrpe_node({"check_x": "/usr/lib/nagios/plugins/check_dummy 0"}, **settings)``: an
    in-process node whose only NRPE configuration is those commands."""

    def make(commands: Mapping[str, str], **settings: Any) -> InProcessNode:
        cfg = write_nrpe_cfg(tmp_path / "nrpe.cfg", commands)
        plugin_settings = {"conf_file": str(cfg), "conf_dir": [], **settings}
        return InProcessNode(plugins=[nrpe_plugin], config={"plugins": {"nrpe": plugin_settings}})

    return make
