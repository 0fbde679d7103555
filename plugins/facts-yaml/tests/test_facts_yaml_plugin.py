"""The contract every plugin passes, and the entry point as installed."""

from __future__ import annotations

from importlib import metadata

import collective_facts_yaml
import collective_facts_yaml.plugin as yaml_plugin
from collective.testing import check_plugin


def test_plugin_contract():
    check_plugin(yaml_plugin)


def test_entry_point_and_version():
    dist = metadata.distribution("collective-facts-yaml")
    [ep] = [ep for ep in dist.entry_points if ep.group == "collective"]
    assert (ep.name, ep.value) == ("facts-yaml", "collective_facts_yaml.plugin")
    assert dist.version == collective_facts_yaml.__version__


def test_loaded_through_entry_points():
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert pm.fact_sources()["yaml"].__module__ == "collective_facts_yaml.source"
