"""The distribution: plugin contract, DDL shape, and the wheel on its own in a fresh venv."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import collective_agent_package.plugin as package_plugin
from collective.testing import check_plugin
from collective.testing.wheels import fresh_venv_with

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def test_plugin_contract():
    check_plugin(package_plugin)


def test_plugin_import_is_cheap():
    code = ("import sys, collective_agent_package.plugin; "
            "heavy = sorted(m for m in sys.modules if m.startswith('collective_agent_package.') "
            "and m != 'collective_agent_package.plugin'); print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_ddl_matches_mcollective_package_agent():
    ddl = json.loads((files("collective_agent_package") / "package.json").read_text())
    assert ddl["metadata"]["timeout"] == 180
    actions = {a["action"]: a for a in ddl["actions"]}
    assert set(actions) == {"install", "update", "uninstall", "purge", "status", "count", "md5",
                            "checkupdates", "apt_checkupdates", "yum_checkupdates", "apt_update",
                            "yum_clean"}
    for name in ("install", "update", "uninstall", "purge", "status"):
        assert set(actions[name]["output"]) == {"output", "epoch", "arch", "ensure", "version",
                                                "provider", "name", "release"}
        assert actions[name]["input"]["required"] == ["package"]
        assert actions[name]["input"]["properties"]["package"]["format"] == "package_name"
    assert [a["args"] for a in actions["status"]["aggregate"]] == [["ensure"], ["arch"]]
    assert [a["args"] for a in actions["install"]["aggregate"]] == [["ensure"]]
    assert set(actions["install"]["input"]["properties"]) == {"package", "version"}
    assert actions["status"]["display"] == "always"
    assert set(actions["checkupdates"]["output"]) == {"package_manager", "output", "outdated_packages",
                                                       "exitcode"}


def test_wheel_alone_in_a_fresh_venv(tmp_path):
    found = fresh_venv_with(PLUGIN_DIR, tmp_path)
    assert found["statuses"].get("agent-package") == "ok", found
    assert "package" in found["agents"]
    assert found["ddls"]["package"] == "0.1.0"
