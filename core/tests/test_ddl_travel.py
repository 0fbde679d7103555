"""DDLs that travel: loading a DDL from data, refusing hostile ones, the cache of
fetched DDLs, version disagreement, installed-wins, and ``rpcutil agent_ddl``.

The fleet-level behaviour (``mco rpc`` and ``mco plugin doc`` without the agent's
plugin) is in tests/test_ddl_travel_e2e.py.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import stat
import time
import types
from pathlib import Path

import pytest

from collective import hookimpl
from collective.agents.rpcutil import plugin as rpcutil_plugin
from collective.agents.rpcutil.agent import Rpcutil
from collective.client import Client, ClientError
from collective.client.ddl_cache import DDLCache, cache_dir, default_cache_dir
from collective.client.remote_ddl import (
    MAX_DDL_BYTES,
    check_untrusted,
    choose,
    disagreement_text,
    group_reports,
    labels,
    load_untrusted,
    version_key,
)
from collective.client.results import NodeReply
from collective.config import Config
from collective.ddl import DDL_SCHEMA_ID, AgentDDL, DDLError, RequestError, ddl_digest
from collective.fleet import free_port
from collective.plugins import get_plugin_manager
from collective.server.dispatch import AgentHost, CallInfo, StaticNode


def check_ddl(version: str = "1.0.0", name: str = "checks") -> dict:
    """A DDL whose ``args`` input uses a format only its (absent) plugin registers."""
    return {
        "$schema": DDL_SCHEMA_ID,
        "metadata": {"name": name, "description": "Runs checks", "author": "me",
                     "license": "Apache-2.0", "version": version, "url": "https://example.com",
                     "timeout": 5},
        "actions": [{
            "action": "run",
            "description": "Run a check",
            "display": "failed",
            "input": {
                "type": "object",
                "required": ["command"],
                "properties": {
                    "command": {"type": "string", "description": "The check", "maxLength": 20,
                                "pattern": "^[a-z_]+$"},
                    "args": {"type": "string", "description": "Arguments", "maxLength": 30,
                             "format": "check_arguments"},
                    "verbose": {"type": "boolean", "description": "Say more", "default": False},
                },
            },
            "output": {"exitcode": {"description": "Exit code", "display_as": "Exit Code",
                                    "type": "integer", "default": 3}},
            "aggregate": [{"function": "check_states", "args": ["exitcode"], "format": "%10s : %s"}],
        }],
    }


# -- loading a DDL from data -------------------------------------------------------------


def test_a_dict_loads_with_the_meta_schema_check():
    doc = check_ddl()
    with pytest.raises(DDLError, match=r"checks\.json: .*format: unknown format 'check_arguments'"):
        AgentDDL.load(doc)
    broken = check_ddl()
    broken["actions"][0]["colour"] = "red"
    with pytest.raises(DDLError, match=r"checks\.json: actions\[0\]\.colour: unknown key"):
        AgentDDL.load(broken, unknown_formats="skip")


def test_unknown_formats_can_be_left_to_the_nodes():
    ddl = AgentDDL.load(check_ddl(), unknown_formats="skip")
    assert ddl.unchecked_formats == {"check_arguments": [("run", "args")]}
    assert ddl.unchecked_inputs("run") == {"args": "check_arguments"}
    act = ddl.actions["run"]
    # the format is not checked here, every other constraint of that input still is
    assert act.validate_input({"command": "load", "args": "$(anything)"})["args"] == "$(anything)"
    with pytest.raises(RequestError, match="input args: is longer than 30"):
        act.validate_input({"command": "load", "args": "x" * 31})
    with pytest.raises(RequestError, match="input command: should match"):
        act.validate_input({"command": "Load;id"})
    with pytest.raises(ValueError, match="unknown_formats"):
        AgentDDL.load(check_ddl(), unknown_formats="ignore")


def test_a_known_format_stays_checked_when_unknown_ones_are_skipped():
    doc = check_ddl()
    doc["actions"][0]["input"]["properties"]["command"]["format"] = "shellsafe"
    act = AgentDDL.load(doc, unknown_formats="skip").actions["run"]
    with pytest.raises(RequestError, match="not a valid shellsafe"):
        act.validate_input({"command": "_rf"})


def test_defaults_can_be_left_to_the_node():
    act = AgentDDL.load(check_ddl(), unknown_formats="skip").actions["run"]
    assert act.validate_input({"command": "load"}) == {"command": "load", "verbose": False}
    assert act.validate_input({"command": "load"}, defaults=False) == {"command": "load"}


def test_the_digest_survives_the_wire_and_ignores_key_order():
    ddl = AgentDDL.load(check_ddl(), unknown_formats="skip")
    travelled = json.loads(json.dumps(ddl.to_dict(), indent=3))
    assert ddl.sha256 == ddl_digest(travelled) == ddl_digest(dict(reversed(list(travelled.items()))))
    changed = copy.deepcopy(travelled)
    changed["metadata"]["description"] = "Runs checks!"
    assert ddl_digest(changed) != ddl.sha256


# -- hostile DDLs ---------------------------------------------------------------------------


def hostile(change):
    doc = check_ddl()
    change(doc)
    return doc


@pytest.mark.parametrize(("doc", "agent", "error"), [
    (hostile(lambda d: d["metadata"].update(description="x" * (MAX_DDL_BYTES + 1))), "checks",
     "bytes, more than the 262144"),
    (hostile(lambda d: d.update(actions="run everything")), "checks", "actions: 'run everything' is not"),
    (hostile(lambda d: d["actions"][0].pop("description")), "checks", "'description' is a required"),
    (hostile(lambda d: d.update({"$schema": "https://evil.example/schema"})), "checks", r"\$schema: must be"),
    (check_ddl(), "nrpe", "metadata.name: 'checks' is not the agent that was asked for"),
    (check_ddl(name="checks\n"), "checks\n", r"metadata\.name: 'checks\\n' is not an agent name"),
    (check_ddl(version="1.0\n"), "checks", "metadata.version: '1.0\\\\n' is not a plain version"),
    (check_ddl(version="1.0-../../x"), "checks", "not a plain version"),
    (hostile(lambda d: d["metadata"].update(description="ok\x1b]0;owned\x07")), "checks",
     "control character"),
    (hostile(lambda d: d["actions"][0]["output"]["exitcode"].update(display_as="Exit\u202eCode")),
     "checks", "control character"),
    (hostile(lambda d: d["actions"][0]["input"]["properties"]["command"].update(
        {"$ref": "https://evil.example/schema.json"})), "checks", r"\$ref is not allowed"),
    (hostile(lambda d: d["actions"][0]["input"].update({"$defs": {"a": {"type": "string"}}})),
     "checks", r"\$defs is not allowed"),
    (hostile(lambda d: d["actions"][0]["aggregate"][0].update(format="%999999999s : %s")), "checks",
     "not a plain printf format"),
    (hostile(lambda d: d["actions"][0]["aggregate"][0].update(format="%*s")), "checks",
     "not a plain printf format"),
    ([check_ddl()], "checks", "a DDL must be a JSON object"),
])
def test_hostile_ddls_are_refused(doc, agent, error):
    with pytest.raises(DDLError, match=error):
        load_untrusted(doc, agent)


def test_a_ddl_whose_digest_is_not_the_reported_one_is_refused():
    doc = check_ddl()
    load_untrusted(doc, "checks", sha256=ddl_digest(doc))  # the honest case loads
    with pytest.raises(DDLError, match="sha256 is not the"):
        load_untrusted(doc, "checks", sha256="0" * 64)


def test_plain_aggregate_formats_and_newlines_in_descriptions_are_fine():
    doc = check_ddl()
    doc["actions"][0]["aggregate"][0]["format"] = "%5.2f%% of %-10s"
    doc["metadata"]["description"] = "Runs checks\n\twith tabs"
    assert load_untrusted(doc, "checks").name == "checks"
    check_untrusted(doc, "checks")


# -- the cache ----------------------------------------------------------------------------


def cache_at(tmp_path, ttl=3600.0):
    return DDLCache(tmp_path / "home" / ".cache" / "collective" / "ddl", ttl=ttl)


def test_cache_files_are_named_by_agent_version_and_sha256(tmp_path):
    cache = cache_at(tmp_path)
    doc = check_ddl()
    sha = ddl_digest(doc)
    entry = cache.put("checks", "1.0.0", sha, doc, ["node-2", "node-1"])
    assert entry.path == cache.directory / f"checks-1.0.0-{sha}.json"
    saved = json.loads(entry.path.read_text())
    assert saved["ddl"] == doc and saved["nodes"] == ["node-1", "node-2"] and saved["sha256"] == sha
    for bad in (("../x", "1.0.0", sha), ("checks", "1.0/../../x", sha), ("checks", "1.0.0", "abc")):
        with pytest.raises(ValueError, match="cannot name a cache file"):
            cache.path_for(*bad)
    assert cache.get("checks", "1.0.0", sha).doc == doc
    assert cache.get("checks", "9.9.9", sha) is None


def test_cache_directories_are_0700_and_files_0600(tmp_path):
    cache = cache_at(tmp_path)
    doc = check_ddl()
    entry = cache.put("checks", "1.0.0", ddl_digest(doc), doc, ["node-1"])
    assert stat.S_IMODE(entry.path.stat().st_mode) == 0o600
    for directory in (cache.directory, cache.directory.parent, tmp_path / "home"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    cache = cache_at(tmp_path)
    doc = check_ddl()
    sha = ddl_digest(doc)
    first = cache.put("checks", "1.0.0", sha, doc, ["node-1"])
    before = first.path.read_bytes()
    renames = []

    def failing_replace(src, dst):
        renames.append(Path(src).name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    assert cache.put("checks", "1.0.0", sha, doc, ["node-1", "node-2", "node-3"]) is None
    assert renames and renames[0].startswith(".tmp-")  # written under another name first
    assert first.path.read_bytes() == before  # the old file is whole
    assert sorted(p.name for p in cache.directory.iterdir()) == [first.path.name]  # no temp left


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],
    lambda text: text.replace("Runs checks", "Runs evil checks"),
    lambda text: text.replace('"format": 1', '"format": 7'),
    lambda text: "[]",
    lambda text: text.replace('"agent": "checks"', '"agent": "other"'),
])
def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_removed(tmp_path, caplog, damage):
    cache = cache_at(tmp_path)
    doc = check_ddl()
    entry = cache.put("checks", "1.0.0", ddl_digest(doc), doc, ["node-1"])
    entry.path.write_text(damage(entry.path.read_text()))
    with caplog.at_level(logging.WARNING, logger="collective.client.ddl_cache"):
        assert cache.current("checks") is None
    assert "ignoring the DDL cache file" in caplog.text and "fetched again" in caplog.text
    assert not entry.path.exists()


def test_a_cached_file_that_fails_the_untrusted_check_is_refetched(tmp_path, caplog):
    """Planted by hand with a matching digest: the cache re-checks what it returns."""
    cache = cache_at(tmp_path)
    doc = hostile(lambda d: d["metadata"].update(description="\x1b[2J"))
    cache.put("checks", "1.0.0", ddl_digest(doc), doc, ["node-1"])
    client = offline_client(tmp_path, cache)
    with caplog.at_level(logging.WARNING), pytest.raises(ClientError):
        client.ddl("checks")  # not installed, the cached one is refused, no broker to ask
    assert "control character" in caplog.text
    assert cache.current("checks") is None


def test_freshness_entries_and_pruning(tmp_path):
    cache = cache_at(tmp_path, ttl=60)
    now = time.time()
    entries = []
    for minor in range(7):
        doc = check_ddl(version=f"1.{minor}.0")
        entry = cache.put("checks", f"1.{minor}.0", ddl_digest(doc), doc, ["node-1"])
        os.utime(entry.path, (now - 1000 + minor, now - 1000 + minor))
        entries.append(entry)
    kept = cache.entries("checks")
    assert [e.version for e in kept] == ["1.6.0", "1.5.0", "1.4.0", "1.3.0", "1.2.0"]  # 5, newest first
    current = cache.current("checks")
    assert not cache.is_fresh(current)
    cache.touch(current)
    assert cache.is_fresh(cache.current("checks"))
    other = check_ddl(name="other")
    cache.put("other", "1.0.0", ddl_digest(other), other, [])
    assert [e.agent for e in cache.entries("checks")] == ["checks"] * 5


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "collective" / "ddl"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: ignore it
    assert default_cache_dir() == Path.home() / ".cache" / "collective" / "ddl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "collective" / "ddl"
    config = Config({"ddl": {"cache_dir": "ddl-cache"}}, path=tmp_path / "etc" / "client.yaml", env={})
    assert cache_dir(config) == tmp_path / "etc" / "ddl-cache"
    assert cache_dir(Config({}, env={})) == default_cache_dir()


def test_a_cache_directory_writable_by_others_is_not_used(tmp_path, caplog):
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    doc = check_ddl()
    with caplog.at_level(logging.WARNING):
        assert DDLCache(directory).put("checks", "1.0.0", ddl_digest(doc), doc, []) is None
    assert "writable by others" in caplog.text
    assert list(directory.iterdir()) == []


# -- several versions on the nodes ----------------------------------------------------------


def reply(sender, version, sha, agent="checks", statuscode=0):
    return NodeReply(sender=sender, agent="rpcutil", action="agent_ddl", statuscode=statuscode,
                     statusmsg="OK" if statuscode == 0 else "Agent checks is not loaded on this node",
                     data={"agent": agent, "version": version, "sha256": sha, "ddl": None},
                     elapsed_ms=1.0)


A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_reports_are_grouped_and_garbage_is_ignored():
    groups, ignored = group_reports([
        reply("n1", "1.0.0", A), reply("n2", "1.0.0", A), reply("n3", "2.0.0", B),
        reply("n4", "1.0.0", A, statuscode=1), reply("n5", "1.0.0\n", A), reply("n6", "1.0.0", "zz"),
        reply("n7", "1.0.0", A, agent="other"),
    ], "checks")
    assert groups == {("1.0.0", A): ["n1", "n2"], ("2.0.0", B): ["n3"]}
    assert sorted(ignored) == ["n4", "n5", "n6", "n7"]
    assert "not loaded" in ignored["n4"]


def test_the_ddl_most_targeted_nodes_report_is_chosen():
    assert choose({("1.0.0", A): ["n1", "n2", "n3"], ("2.0.0", B): ["n4"]}) == ("1.0.0", A)
    # a tie goes to the newest version, whatever order the replies came in
    assert choose({("1.9.0", A): ["n1"], ("1.10.0", B): ["n2"]}) == ("1.10.0", B)
    assert choose({("1.10.0", B): ["n2"], ("1.9.0", A): ["n1"]}) == ("1.10.0", B)
    # one version, two documents (edited without a new version): the smaller digest, always
    assert choose({("1.0.0", B): ["n1"], ("1.0.0", A): ["n2"]}) == ("1.0.0", A)
    with pytest.raises(ValueError):
        choose({})


def test_version_order():
    ordered = sorted(["1.10.0", "1.9.0", "1.0.0-rc1", "1.0.0", "0.2", "1.0.0+build5", "2"],
                     key=version_key)
    assert ordered == ["0.2", "1.0.0-rc1", "1.0.0", "1.0.0+build5", "1.9.0", "1.10.0", "2"]


def test_disagreement_is_shown_version_by_version():
    groups = {("0.1.0", A): ["node-001", "node-002", "node-003"], ("0.2.0", B): ["node-004"]}
    text = disagreement_text("nrpe", groups, choose(groups))
    assert text == ("Warning: the nodes report 2 different DDLs of agent nrpe: 0.1.0 on node-001, "
                    "node-002, node-003; 0.2.0 on node-004. Validating with 0.1.0, the one most of "
                    "them have; every node still validates with its own.")
    same_version = {("0.1.0", A): ["n1"], ("0.1.0", C): ["n2"]}
    assert list(labels(same_version)) == [f"0.1.0 (sha256 {A[:12]})", f"0.1.0 (sha256 {C[:12]})"]
    many = {("0.1.0", A): [f"node-{i:03d}" for i in range(8)], ("0.2.0", B): ["x"]}
    assert "node-004 and 3 more" in disagreement_text("nrpe", many, ("0.1.0", A))


# -- which DDL a client uses -----------------------------------------------------------------


def plugin_with_ddl(tmp_path, doc, name):
    path = tmp_path / "installed" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    module = types.ModuleType(f"ddl_plugin_{name}")
    module.collective_ddls = hookimpl(lambda: [path])
    module.collective_formats = hookimpl(lambda: [__import__("collective.formats").formats.Format(
        "check_arguments", lambda v: "!" not in v)])
    return module


def offline_client(tmp_path, cache=None, plugins=(), **ddl):
    """A client whose broker port is closed: anything that needs the network fails."""
    psk = tmp_path / "psk"
    psk.write_text("not-a-real-secret")
    psk.chmod(0o600)
    config = Config({"identity": "admin-client",
                     "broker": {"port": free_port(), "connect_timeout": 0.5},
                     "security": {"provider": "psk", "psk_file": str(psk)},
                     "ddl": {"cache_dir": str((cache or cache_at(tmp_path)).directory), **ddl}},
                    kind="client", env={})
    return Client(config, pm=get_plugin_manager(load_entrypoints=False, plugins=plugins))


def test_an_installed_ddl_wins_over_a_cached_one(tmp_path):
    cache = cache_at(tmp_path)
    fetched = check_ddl(version="9.0.0")
    cache.put("checks", "9.0.0", ddl_digest(fetched), fetched, ["node-1"])
    installed = check_ddl(version="1.0.0")
    client = offline_client(tmp_path, cache, plugins=[plugin_with_ddl(tmp_path, installed, "checks")])
    ddl = client.ddl("checks")
    assert ddl.metadata["version"] == "1.0.0"
    source = client.ddl_source("checks")
    assert (source.origin, source.fetched) == ("installed", False)
    assert "installed here" in source.describe()
    # an installed DDL's defaults are filled in and its plugin's formats are checked
    assert client.validate("checks", "run", {"command": "load"}) == {"command": "load", "verbose": False}
    with pytest.raises(ClientError, match="not a valid check_arguments"):
        client.validate("checks", "run", {"command": "load", "args": "a!b"})


def test_a_fresh_cached_ddl_is_used_without_asking_the_nodes(tmp_path, caplog):
    cache = cache_at(tmp_path)
    doc = check_ddl()
    cache.put("checks", "1.0.0", ddl_digest(doc), doc, ["node-1", "node-2"])
    client = offline_client(tmp_path, cache)
    with caplog.at_level(logging.WARNING):
        data = client.validate("checks", "run", {"command": "load", "args": "a!b"})
        client.validate("checks", "run", {"command": "load", "args": "c!d"})
    assert data == {"command": "load", "args": "a!b"}  # no default added, the format left to the nodes
    assert caplog.text.count("has format check_arguments") == 1  # warned once
    assert "could not ask the nodes" not in caplog.text  # fresh: the nodes were not asked
    source = client.ddl_source("checks")
    assert (source.origin, source.nodes, source.versions) == ("cache", ["node-1", "node-2"], {})
    assert "from the cache" in source.describe() and "node-1, node-2" in source.describe()
    with pytest.raises(ClientError, match="input command: should match"):
        client.validate("checks", "run", {"command": "Load;id"})
    with pytest.raises(ClientError, match="not declared"):
        client.validate("checks", "run", {"command": "load", "colour": "red"})


def test_a_stale_cached_ddl_is_used_when_the_nodes_cannot_be_asked(tmp_path, caplog):
    cache = cache_at(tmp_path, ttl=1)
    doc = check_ddl()
    entry = cache.put("checks", "1.0.0", ddl_digest(doc), doc, ["node-1"])
    os.utime(entry.path, (time.time() - 3600, time.time() - 3600))
    client = offline_client(tmp_path, cache, cache_ttl=1)
    with caplog.at_level(logging.WARNING):
        assert client.ddl("checks").metadata["version"] == "1.0.0"
    assert "could not ask the nodes for the DDL of checks" in caplog.text


def test_without_a_cached_or_installed_ddl_the_nodes_must_answer(tmp_path):
    client = offline_client(tmp_path)
    with pytest.raises(ClientError):  # the broker is not there
        client.ddl("checks")
    with pytest.raises(ClientError, match="not an agent name"):
        client.ddl("../checks")
    off = offline_client(tmp_path, fetch=False)
    with pytest.raises(ClientError, match=r"is its plugin installed here\? \(fetching DDLs from the "
                                          r"nodes is off: ddl\.fetch\)"):
        off.ddl("checks")


# -- rpcutil agent_ddl -------------------------------------------------------------------------


@pytest.fixture
def host(tmp_path):
    config = Config({"identity": "node-1"}, path=tmp_path / "server.yaml", kind="server", env={})
    (resource,) = rpcutil_plugin.collective_ddls()
    host = AgentHost(config, StaticNode("node-1", config), {"rpcutil": Rpcutil},
                     {"rpcutil": AgentDDL.load(resource)})
    assert host.load() == []
    return host


def agent_ddl(host, **data):
    info = CallInfo(request_id="abc", caller="cert=alice", sender="client", agent="rpcutil",
                    action="agent_ddl", data=data, collective="mcollective", time=int(time.time() * 1000))
    refused = host.prepare(info)
    return refused if refused is not None else host.run(info)


def test_agent_ddl_returns_the_ddl_the_node_validates_with(host):
    installed = host.agents["rpcutil"].ddl
    outcome = agent_ddl(host, agent="rpcutil")
    assert outcome.statuscode == 0
    assert outcome.data["ddl"] == installed.to_dict()
    assert outcome.data["sha256"] == ddl_digest(outcome.data["ddl"]) == installed.sha256
    assert (outcome.data["agent"], outcome.data["version"]) == ("rpcutil", "0.1.0")
    summary = agent_ddl(host, agent="rpcutil", document=False)
    assert summary.data == {**outcome.data, "ddl": None}
    assert load_untrusted(outcome.data["ddl"], "rpcutil", sha256=outcome.data["sha256"]).actions


def test_agent_ddl_of_an_agent_the_node_lacks(host):
    outcome = agent_ddl(host, agent="nrpe")
    assert (outcome.statuscode, outcome.statusmsg) == (1, "Agent nrpe is not loaded on this node")


@pytest.mark.parametrize("agent", ["../etc/passwd", "NRPE", "x" * 65, "", 5])
def test_agent_ddl_refuses_what_is_not_an_agent_name(host, agent):
    assert agent_ddl(host, agent=agent).statuscode == 4
