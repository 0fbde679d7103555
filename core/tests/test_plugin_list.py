"""``mco plugin list``: what each plugin registered, a failing hook, and the test-only
plugins kept out of the virtualenv users run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

from collective import hookimpl
from collective.plugins import PluginManager


def mco(*args, env=None):
    return subprocess.run([sys.executable, "-m", "collective", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_each_plugin_shows_what_it_registered():
    proc = mco("plugin", "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    [row] = [i for i, line in enumerate(lines) if line.startswith("test-canary ")]
    assert "collective-test-canary 0.1.0" in lines[row] and lines[row].endswith("ok")
    assert lines[row + 1].split() == ["agents:", "canary,", "checksim,", "lb,", "pkgsim;",
                                      "aggregates:", "canary_count"]
    listed = {p["name"]: p for p in json.loads(mco("plugin", "list", "--json").stdout)}
    assert listed["test-canary"]["registered"] == {
        "agents": ["canary", "checksim", "lb", "pkgsim"], "aggregates": ["canary_count"]}
    builtins = {p["name"]: p for p in json.loads(mco("plugin", "list", "--all", "--json").stdout)}
    assert builtins["collective.agents.rpcutil.plugin"]["registered"]["agents"] == ["rpcutil"]
    assert "jsonl" in builtins["collective.builtins"]["registered"]["audit sinks"]


def test_a_hook_that_fails_is_reported_and_the_rest_listed():
    good = types.ModuleType("good_plugin")
    bad = types.ModuleType("bad_plugin")

    class Thing:
        name = "thing"
        description = ""
        argument = None
        outputs: dict[str, str] = {}
        default_output = None

    @hookimpl
    def collective_data_plugins():
        return [Thing]

    @hookimpl
    def collective_fact_sources():
        raise ImportError("no module named thing_backend")

    good.collective_data_plugins = collective_data_plugins  # type: ignore[attr-defined]
    bad.collective_fact_sources = collective_fact_sources  # type: ignore[attr-defined]
    pm = PluginManager(load_entrypoints=False, plugins=[good, bad])
    found = pm.registrations()
    assert found["good_plugin"] == {"data plugins": ["thing"]}
    assert "bad_plugin" not in found
    assert pm.statuses["bad_plugin"].status == (
        "failed: collective_fact_sources: ImportError: no module named thing_backend")


def test_the_test_only_plugins_are_not_in_the_virtualenv():
    """The session installs them into a private directory (conftest.py); .venv, which
    `make demo` and users run, has the real plugins only."""
    canary = metadata.distribution("collective-test-canary")
    location = Path(str(canary.locate_file(""))).resolve()
    assert not location.is_relative_to(Path(sys.prefix).resolve()), location
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    listed = [p["name"] for p in json.loads(mco("plugin", "list", "--json", env=clean).stdout)]
    assert not [name for name in listed if name.startswith("test-")], listed


def test_plugin_doc_shows_ddl_values_as_json_not_python():
    from collective.cli.plugin import render_ddl
    from collective.ddl import DDL_SCHEMA_ID, AgentDDL

    ddl = AgentDDL.load({
        "$schema": DDL_SCHEMA_ID,
        "metadata": {"name": "demo", "description": "d", "author": "a", "license": "MIT",
                     "version": "1.0.0", "url": "https://example.com", "timeout": 5},
        "actions": [{"action": "go", "description": "Go", "input": {
            "type": "object", "properties": {
                "force": {"type": "boolean", "description": "f", "default": False},
                "mode": {"type": ["string", "null"], "description": "m", "default": None,
                         "enum": ["fast", "slow", None]}}},
            "output": {"done": {"description": "d", "display_as": "Done", "default": False}}}],
    }, source="demo.json")
    text = render_ddl(ddl)
    assert "False" not in text and "None" not in text and "['" not in text
    assert "Default: false" in text and "Default: null" in text
    assert 'Values: ["fast", "slow", null]' in text and 'Type: ["string", "null"]' in text
    assert "Default Value: false" in text
