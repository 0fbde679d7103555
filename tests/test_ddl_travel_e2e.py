"""End to end: DDLs travel, code never does.

A real 3-node fleet runs the nrpe agent with the real Nagios plugins; the client runs
with ``COLLECTIVE_DISABLE_PLUGINS=agent-nrpe``, so its plugin manager has no nrpe DDL,
format, aggregate or ``mco nrpe`` command. ``mco rpc nrpe ...`` and ``mco plugin doc
nrpe`` then work from the DDL the nodes send (``rpcutil agent_ddl``), cached under the
test's own ``XDG_CACHE_HOME``. Proof that a call asked the nodes, or did not, comes
from the nodes' audit logs (every request is a line) and the cache file's mtime.

For version disagreement two more nodes join the same broker, each with a throw-away
plugin distribution (a package and its ``.dist-info``, written into a temporary
directory on that node's ``PYTHONPATH`` only) that gives the nrpe agent another DDL:
0.2.0 (``command`` at most 40 characters, a new ``reason`` input) on node-004, and a
hostile 0.3.0 (a terminal escape in its description) on node-005. Nothing of it is
ever installed in the virtualenv.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from collective.fleet import add_broker_login, fleet_down, fleet_up
from collective.testing import require

STATES = {"node-001": 0, "node-002": 1, "node-003": 2, "node-004": 0, "node-005": 0}
LONG_COMMAND = "check_" + "x" * 44  # 50 characters: nrpe 0.1.0 allows 64, the 0.2.0 DDL 40

PLUGIN_SOURCE = '''"""Test-only: the nrpe agent with the DDL next to this file."""
from importlib.resources import files

from collective import hookimpl


@hookimpl
def collective_ddls():
    return [files(__package__) / "nrpe.json"]


@hookimpl
def collective_agents():
    from collective_agent_nrpe.agent import Nrpe

    return [Nrpe]


@hookimpl
def collective_formats():
    from collective_agent_nrpe import plugin

    return plugin.collective_formats()
'''


def installed_nrpe_ddl():
    from importlib.resources import files

    return json.loads((files("collective_agent_nrpe") / "nrpe.json").read_text())


def nrpe_settings(directory, identity):
    from collective_agent_nrpe.testing import plugin, write_nrpe_cfg

    cfg = write_nrpe_cfg(directory / "nrpe" / identity / "nrpe.cfg", {
        "check_state": f'{plugin("check_dummy")} {STATES[identity]} "state of {identity}"',
        "check_marker": f"{shutil.which('touch')} {directory / 'markers'}/{identity}-$ARG1$",
    })
    return {"plugins": {"nrpe": {"conf_file": str(cfg), "conf_dir": [], "command_timeout": 2,
                                 "allow_arguments": True}}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require(importlib.util.find_spec("collective_agent_nrpe") is not None,
            "collective-agent-nrpe is not installed (make install)")
    from collective_agent_nrpe.testing import missing_plugins

    why = missing_plugins()
    require(why is None, f"DDL travel end-to-end tests: {why}")
    directory = tmp_path_factory.mktemp("ddl-travel-fleet")
    (directory / "markers").mkdir()
    started = fleet_up(directory, nodes=3, server_config_for=lambda i, ident: nrpe_settings(directory, ident))
    yield started
    fleet_down(directory)


def mco(fleet, *args, cache, lacks_nrpe=True, config=True, timeout=60):
    """The real ``mco``; ``lacks_nrpe``: the client's plugin manager skips agent-nrpe."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    env.pop("COLLECTIVE_DISABLE_PLUGINS", None)
    if lacks_nrpe:
        env["COLLECTIVE_DISABLE_PLUGINS"] = "agent-nrpe"
    extra = ["-c", str(fleet.client_config)] if config else []
    proc = subprocess.run([sys.executable, "-m", "collective", *args, *extra],
                          capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def audited(fleet, node, agent, action):
    """How many requests for ``agent#action`` reached ``node`` (its audit log)."""
    path = Path(fleet.directory) / "nodes" / node / "audit.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sum(1 for line in lines if line["agent"] == agent and line["action"] == action)


def counts(fleet, agent, action, nodes=None):
    return {node: audited(fleet, node, agent, action) for node in nodes or fleet.nodes}


def cache_files(cache):
    directory = Path(cache) / "collective" / "ddl"
    return sorted(directory.glob("*.json")) if directory.is_dir() else []


def sha256_of_installed_nrpe():
    from collective.ddl import ddl_digest

    return ddl_digest(installed_nrpe_ddl())


# -- a client without the agent's distribution -----------------------------------------------


def test_the_client_really_lacks_the_nrpe_plugin(fleet, tmp_path):
    code, out, _ = mco(fleet, "plugin", "list", cache=tmp_path, config=False)
    assert code == 0 and re.search(r"^agent-nrpe\s.*blocked$", out, re.M), out
    code, _, err = mco(fleet, "nrpe", "check_state", cache=tmp_path, config=False)  # needs the plugin
    assert code == 2 and "No such command 'nrpe'" in err


def test_rpc_validates_with_the_fetched_ddl_calls_the_nodes_then_uses_the_cache(fleet, tmp_path):
    cache = tmp_path / "cache"
    runs = counts(fleet, "nrpe", "runcommand")
    fetches = counts(fleet, "rpcutil", "agent_ddl")

    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_state;id", cache=cache)
    assert code == 1, out + err
    assert "Cannot validate input command: should match" in err
    assert counts(fleet, "nrpe", "runcommand") == runs  # refused before anything was sent
    after_fetch = counts(fleet, "rpcutil", "agent_ddl")
    assert all(after_fetch[n] > fetches[n] for n in fleet.nodes)  # every targeted node was asked
    (cached,) = cache_files(cache)
    assert cached.name == f"nrpe-0.1.0-{sha256_of_installed_nrpe()}.json"
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(cached.parent.stat().st_mode) == 0o700
    assert json.loads(cached.read_text())["ddl"] == installed_nrpe_ddl()
    mtime = cached.stat().st_mtime_ns

    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_state", cache=cache)
    assert code == 2, out + err  # WARNING and CRITICAL nodes
    assert re.search(r"^node-002\s+Request Aborted\n\s+WARNING: state of node-002$", out, re.M)
    assert re.search(r"^node-003\s+Request Aborted\n\s+CRITICAL: state of node-003$", out, re.M)
    # the aggregate comes with the plugin: the summary says it cannot be computed here
    assert "Summary of Exit Code:\n\n   Could not compute summary - unknown aggregate function " \
           "'nagios_states'" in out
    assert "Finished processing 3 / 3 hosts" in out
    assert counts(fleet, "nrpe", "runcommand") == {n: runs[n] + 1 for n in fleet.nodes}
    # the second call used the cache: no node was asked for the DDL, the file was not touched
    assert counts(fleet, "rpcutil", "agent_ddl") == after_fetch
    assert cached.stat().st_mtime_ns == mtime


def test_plugin_doc_renders_the_fetched_ddl_and_says_where_it_came_from(fleet, tmp_path):
    cache = tmp_path / "cache"
    code, installed, _ = mco(fleet, "plugin", "doc", "nrpe", cache=cache, lacks_nrpe=False)
    assert code == 0 and "runcommand action:" in installed
    assert cache_files(cache) == []  # an installed DDL is never fetched

    fetches = counts(fleet, "rpcutil", "agent_ddl")
    code, out, err = mco(fleet, "plugin", "doc", "nrpe", cache=cache)
    assert code == 0, out + err
    head, _, body = out.partition("\n\n")
    (cached,) = cache_files(cache)
    assert head == (f"DDL of nrpe 0.1.0 (sha256 {sha256_of_installed_nrpe()[:12]}): not installed here; "
                    f"fetched just now from node-001, node-002, node-003; cached in {cached}")
    note = ("\nFormat nrpe_arguments (runcommand.args) comes with the agent's plugin, which is not "
            "installed here: the client does not check it, the nodes do.\n")
    assert body == installed + note  # the same rendering as from the installed DDL
    asked = counts(fleet, "rpcutil", "agent_ddl")
    assert all(asked[n] > fetches[n] for n in fleet.nodes)

    code, out, _ = mco(fleet, "plugin", "doc", "nrpe", cache=cache)
    assert code == 0 and "not installed here; from the cache " in out.splitlines()[0]
    assert counts(fleet, "rpcutil", "agent_ddl") == asked  # no node asked

    code, out, err = mco(fleet, "plugin", "doc", "nrpe", "--json", cache=cache)
    assert code == 0 and json.loads(out) == installed_nrpe_ddl()
    assert "from the cache" in err

    code, out, _ = mco(fleet, "plugin", "doc", "nrpe", "-I", "node-002", "--refresh", cache=cache)
    assert code == 0 and "confirmed just now by node-002" in out.splitlines()[0]
    assert counts(fleet, "rpcutil", "agent_ddl") == {**asked, "node-002": asked["node-002"] + 1}


def test_a_format_the_client_lacks_is_checked_by_the_nodes(fleet, tmp_path):
    markers = Path(fleet.directory) / "markers"
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_marker", "args=x;touch",
                         "-I", "node-001", "-I", "node-002", cache=tmp_path)
    assert code == 2, out + err
    assert "input args of nrpe#runcommand has format nrpe_arguments, which comes with the agent's " \
           "plugin and is not installed here: only the nodes check it" in err
    assert out.count("Invalid Request Data") == 2
    assert "Cannot validate input args: is not a valid nrpe_arguments" in out
    assert not list(markers.glob("*x;touch*"))
    # the same path with good arguments runs the check: the refusal above was the format
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_marker", "args=cli",
                         "-I", "node-001", cache=tmp_path)
    assert code == 0, out + err
    assert (markers / "node-001-cli").exists()


def test_nodes_refuse_bad_data_from_a_client_that_skipped_validation(fleet, tmp_path, monkeypatch,
                                                                     caplog):
    from collective.client import Client, ClientError
    from collective.config import load_config
    from collective.filters import Filter
    from collective.plugins import get_plugin_manager

    markers = Path(fleet.directory) / "markers"
    with Client(load_config(fleet.client_config)) as client:  # request() sends data as it is
        result = client.request("nrpe", "runcommand", {"command": "check_marker", "args": "a;touch"},
                                targets=fleet.nodes, timeout=10)
        raw = client.request("nrpe", "runcommand", {"command": "check_state;id"},
                             targets=["node-001"], timeout=10)
    assert sorted(r.sender for r in result.replies) == fleet.nodes
    assert all(r.statuscode == 4 and "nrpe_arguments" in r.statusmsg for r in result.replies)
    assert [(r.statuscode, r.statusmsg) for r in raw.replies] == [
        (4, "Cannot validate input command: should match ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
    assert not list(markers.glob("*touch*"))

    # the Python API without the plugin: the same fetched DDL, the same checks
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "py-cache"))
    pm = get_plugin_manager(load_entrypoints=False)
    with Client(load_config(fleet.client_config), pm=pm) as client:
        with pytest.raises(ClientError, match="Cannot validate input command"):
            client.rpc("nrpe", "runcommand", {"command": "check_state;id"},
                       filter=Filter(identity=["node-001"]))
        assert client.ddl_source("nrpe").origin == "nodes"
        with caplog.at_level(logging.WARNING):
            result = client.rpc("nrpe", "runcommand", {"command": "check_marker", "args": "py"},
                                filter=Filter(identity=["node-003"]))
    assert [(r.sender, r.statuscode) for r in result.replies] == [("node-003", 0)]
    assert (markers / "node-003-py").exists()
    assert "format nrpe_arguments" in caplog.text


# -- nodes with different DDLs of one agent ----------------------------------------------------


def override_distribution(root, ddl):
    """A throw-away plugin distribution laid out as pip would install it into ``root``."""
    package = root / "collective_test_ddl_override"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(PLUGIN_SOURCE)
    (package / "nrpe.json").write_text(json.dumps(ddl, indent=2))
    version = ddl["metadata"]["version"]
    info = root / f"collective_test_ddl_override-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: collective-test-ddl-override\n"
                                   f"Version: {version}\n")
    (info / "entry_points.txt").write_text(
        "[collective]\ntest-ddl-override = collective_test_ddl_override.plugin\n")
    return root


def ddl_v020():
    ddl = installed_nrpe_ddl()
    ddl["metadata"]["version"] = "0.2.0"
    inputs = ddl["actions"][0]["input"]["properties"]
    inputs["command"]["maxLength"] = 40
    inputs["reason"] = {"type": "string", "description": "Why the check is run", "maxLength": 40,
                        "pattern": "^[a-z ]*$"}
    return ddl


def ddl_hostile():
    ddl = installed_nrpe_ddl()
    ddl["metadata"]["version"] = "0.3.0"
    ddl["metadata"]["description"] = "Run checks\x1b]0;owned\x07\x1b[2J"
    return ddl


def start_node(fleet, identity, site, logs):
    """One more collectived on the fleet's broker, with ``site`` on its PYTHONPATH and
    agent-nrpe disabled, so its nrpe DDL is the override's. Returns the Popen."""
    from collective.security.keys import generate_keypair

    directory = Path(fleet.directory)
    generate_keypair(identity, directory / "keys")
    shutil.copy(directory / "keys" / f"{identity}.pub", directory / "trust" / "nodes" / f"{identity}.pub")
    node_dir = directory / "nodes" / identity
    node_dir.mkdir(parents=True)
    config = yaml.safe_load((directory / "nodes" / "node-001" / "server.yaml").read_text())
    config["identity"] = identity
    config["security"]["private_key"] = f"../../keys/{identity}.key"
    config["facts"]["static"]["hostname"] = identity
    config["broker"] = add_broker_login(fleet, identity)  # every node logs in as itself
    config.update(nrpe_settings(directory, identity))
    shutil.copy(directory / "nodes" / "node-001" / "classes.txt", node_dir / "classes.txt")
    (node_dir / "server.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "COLLECTIVE_DISABLE_PLUGINS": "agent-nrpe",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    with open(logs / f"{identity}.log", "ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "collective.server.main", "-c",
                                 str(node_dir / "server.yaml")], cwd=node_dir, env=env,
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.fixture(scope="module")
def mixed_fleet(fleet, tmp_path_factory):
    """node-004 with nrpe DDL 0.2.0 and node-005 with a hostile 0.3.0 join the fleet."""
    from collective.client import Client
    from collective.config import load_config

    root = tmp_path_factory.mktemp("ddl-overrides")
    procs = {
        "node-004": start_node(fleet, "node-004", override_distribution(root / "v020", ddl_v020()), root),
        "node-005": start_node(fleet, "node-005", override_distribution(root / "v030", ddl_hostile()), root),
    }
    try:
        missing, deadline = set(procs), time.monotonic() + 60
        while missing and time.monotonic() < deadline:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited: {(root / f'{name}.log').read_text()}"
            with Client(load_config(fleet.client_config)) as client:
                missing -= {r.sender for r in client.ping(expected=sorted(missing), timeout=2.0).replies}
        assert not missing, f"{missing} did not answer"
        with Client(load_config(fleet.client_config)) as client:
            versions = client.request("rpcutil", "agent_ddl", {"agent": "nrpe", "document": False},
                                      targets=sorted(procs), timeout=5)
        assert {r.sender: r.data["version"] for r in versions.replies} == {"node-004": "0.2.0",
                                                                           "node-005": "0.3.0"}
        yield [*fleet.nodes, *sorted(procs)]
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def test_nodes_with_different_ddls_are_shown_and_most_of_them_win(fleet, mixed_fleet, tmp_path):
    cache = tmp_path / "cache"
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", f"command={LONG_COMMAND}", cache=cache)
    assert ("Warning: the nodes report 3 different DDLs of agent nrpe: 0.1.0 on node-001, node-002, "
            "node-003; 0.3.0 on node-005; 0.2.0 on node-004. Validating with 0.1.0, the one most of "
            "them have; every node still validates with its own.") in err
    # 0.1.0 accepts the 50-character command, so it was sent; node-004 refuses it with its own DDL
    assert code == 2, out + err
    assert re.search(r"^node-004\s+Invalid Request Data\n\s+Cannot validate input command: is longer "
                     r"than 40 character\(s\)$", out, re.M)
    assert len(re.findall(r"^node-00[1235]\s+Request Aborted\n\s+UNKNOWN: No such command", out, re.M)) == 4
    assert [p.name.split("-")[1] for p in cache_files(cache)] == ["0.1.0"]  # the others not fetched


def test_the_targeted_nodes_ddl_validates_and_a_stale_cache_is_refreshed(fleet, mixed_fleet, tmp_path):
    runs = audited(fleet, "node-004", "nrpe", "runcommand")
    only = tmp_path / "only-node-004"
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", f"command={LONG_COMMAND}", "-I", "node-004",
                         cache=only)
    assert code == 1, out + err
    assert "Cannot validate input command: is longer than 40 character(s)" in err  # 0.2.0 here
    assert audited(fleet, "node-004", "nrpe", "runcommand") == runs  # refused before sending
    assert [p.name.split("-")[1] for p in cache_files(only)] == ["0.2.0"]

    # a cache holding 0.1.0, which lacks the new input: the nodes are asked again, not refused
    cache = tmp_path / "cache"
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_state", "-I", "node-001",
                         cache=cache)
    assert code == 0, out + err
    assert [p.name.split("-")[1] for p in cache_files(cache)] == ["0.1.0"]
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_state", "reason=upgrade",
                         "-I", "node-004", cache=cache)
    assert code == 0, out + err
    assert "Finished processing 1 / 1 hosts" in out
    assert audited(fleet, "node-004", "nrpe", "runcommand") == runs + 1
    assert sorted(p.name.split("-")[1] for p in cache_files(cache)) == ["0.1.0", "0.2.0"]


def test_a_hostile_ddl_is_refused(fleet, mixed_fleet, tmp_path):
    runs = audited(fleet, "node-005", "nrpe", "runcommand")
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", "command=check_state", "-I", "node-005",
                         cache=tmp_path)
    assert code == 1, out + err
    assert "No usable DDL for agent 'nrpe'" in err and "control character" in err
    code, out, err2 = mco(fleet, "plugin", "doc", "nrpe", "-I", "node-005", cache=tmp_path)
    assert code == 1 and "control character" in err2
    assert "\x1b" not in out + err + err2  # nothing of it reached the terminal
    assert audited(fleet, "node-005", "nrpe", "runcommand") == runs
    assert cache_files(tmp_path) == []


def test_an_installed_ddl_wins_over_the_nodes(fleet, mixed_fleet, tmp_path):
    fetches = audited(fleet, "node-004", "rpcutil", "agent_ddl")
    code, out, err = mco(fleet, "rpc", "nrpe", "runcommand", f"command={LONG_COMMAND}", "-I", "node-004",
                         cache=tmp_path, lacks_nrpe=False)
    # the installed 0.1.0 accepts it; node-004 validates again with its own 0.2.0 and refuses
    assert code == 2, out + err
    assert "Cannot validate input command: is longer than 40 character(s)" in out
    assert "different DDLs" not in err
    assert audited(fleet, "node-004", "rpcutil", "agent_ddl") == fetches  # nothing fetched
    assert cache_files(tmp_path) == []
