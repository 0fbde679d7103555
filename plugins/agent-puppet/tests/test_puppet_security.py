"""Bad input gets status 4 (DDL and the formats) or 1 (the node's config says no) with one
clear message, and no puppet command runs: the node's ``puppet`` is a wrapper that logs
every argv before it execs the real puppet, and the injected commands would touch a
marker file. No puppetserver is needed: nothing may get as far as a run."""

from __future__ import annotations

import pytest

import collective_agent_puppet.plugin as puppet_plugin


@pytest.fixture
def node(collective_node, tmp_path, wrapper):
    """A node whose puppet agent allows the server override and file resources, with
    every path given (so not even ``puppet config print`` runs)."""
    confdir = tmp_path / "puppet"
    paths = {"lastrunfile": confdir / "public" / "last_run_summary.yaml",
             "lastrunreport": confdir / "var" / "state" / "last_run_report.yaml",
             "agent_catalog_run_lockfile": confdir / "var" / "state" / "agent_catalog_run.lock",
             "agent_disabled_lockfile": confdir / "var" / "state" / "agent_disabled.lock",
             "pidfile": confdir / "run" / "agent.pid",
             "resourcefile": confdir / "var" / "state" / "resources.txt",
             "logdir": confdir / "log"}
    settings = {"confdir": str(confdir), "command": str(wrapper.path),
                "paths": {key: str(value) for key, value in paths.items()},
                "allow_server_override": True, "resource_types": ["file"],
                "resource_names": {"file": ["/tmp/collective-allowed"]}}
    return collective_node(plugins=[puppet_plugin], config={"plugins": {"puppet": settings}})


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "pwned"


def _bad(marker):
    """Strings an attacker would try, each touching ``marker`` if it reached a shell."""
    return [f"x; touch {marker}", f"x\ntouch {marker}", f"$(touch {marker})", f"`touch {marker}`",
            f"x && touch {marker}", f"x | touch {marker}", "-x", "--help", "--enable",
            "../../bin/sh", "x\x00y", "caf\u00e9"]


CASES = [
    ("runonce", "tags"), ("runonce", "environment"), ("runonce", "server"),
    ("disable", "message"), ("resource", "name"), ("resource", "type"),
]


@pytest.mark.parametrize(("action", "key"), CASES)
def test_injection_strings_are_refused_with_status_4(node, wrapper, marker, action, key):
    for value in _bad(marker):
        data = {key: value}
        if action == "resource":
            data = {"type": "file", "name": "/tmp/collective-allowed", **data}
        reply = node.call("puppet", action, **data)
        assert reply.statuscode == 4, (value, reply.statusmsg)
        assert reply.statusmsg.startswith(f"Cannot validate input {key}: "), reply.statusmsg
        assert "\n" not in reply.statusmsg
    assert wrapper.calls() == []
    assert not marker.exists()


@pytest.mark.parametrize(("action", "data", "message"), [
    ("runonce", {"tags": "a" * 121}, "Cannot validate input tags: is longer than 120"),
    ("runonce", {"tags": "a," * 5000}, "Cannot validate input tags: is longer than 120"),
    ("runonce", {"environment": "e" * 51}, "Cannot validate input environment: is longer than 50"),
    ("runonce", {"server": "h" * 256}, "Cannot validate input server: is longer than 255"),
    ("runonce", {"server": "puppet:99999"}, "Cannot validate input server: is not a valid "
                                             "puppet_server_address"),
    ("runonce", {"splaylimit": -1}, "Cannot validate input splaylimit: should be at least 0"),
    ("runonce", {"splaylimit": 10 ** 9}, "Cannot validate input splaylimit: should be at most"),
    ("runonce", {"noop": "yes"}, "Cannot validate input noop: should be a boolean"),
    ("runonce", {"command": "id"}, "request contains an input 'command' that is not declared"),
    ("disable", {"message": "m" * 121}, "Cannot validate input message: is longer than 120"),
    ("disable", {"message": "m" * 10240}, "Cannot validate input message: is longer than 120"),
    ("last_run_summary", {"logs": "true"}, "Cannot validate input logs: should be a boolean"),
    ("resource", {"type": "file", "name": "/" + "a" * 150}, "Cannot validate input name: is "
                                                             "longer than 150"),
    ("resource", {"type": "t" * 51, "name": "x"}, "Cannot validate input type: is longer than 50"),
    ("resource", {"type": "file", "name": "/tmp/collective-allowed",
                  "properties": {"content": "$(id)"}},
     "Cannot validate input properties.content: is not a valid puppet_resource_value"),
    ("resource", {"type": "file", "name": "/tmp/collective-allowed",
                  "properties": {"content": "-rf"}},
     "Cannot validate input properties.content: is not a valid puppet_resource_value"),
    ("resource", {"type": "file", "name": "/tmp/collective-allowed",
                  "properties": {"content": "x" * 1025}},
     "Cannot validate input properties.content: is longer than 1024"),
    ("resource", {"type": "file", "name": "/tmp/collective-allowed", "properties": {"ensure": 1}},
     "Cannot validate input properties.ensure: should be a string"),
    ("resource", {"type": "file", "name": "/tmp/collective-allowed",
                  "properties": {"-x": "y"}}, "Cannot validate input properties: "),
    ("resource", {"type": "file", "name": "/tmp/collective-allowed",
                  "properties": {"ensure;id": "y"}}, "Cannot validate input properties: "),
    ("resource", {"type": "file", "name": "/tmp/collective-allowed",
                  "properties": {f"p{n}": "v" for n in range(33)}},
     "Cannot validate input properties: should have at most 32 properties"),
    ("resource", {"type": "file"}, "Action resource needs a name argument"),
])
def test_bad_values_are_refused(node, wrapper, action, data, message):
    reply = node.call("puppet", action, **data)
    assert reply.statuscode in (3, 4), reply.statusmsg
    assert reply.statusmsg.startswith(message), reply.statusmsg
    assert len(reply.statusmsg) < 300
    assert wrapper.calls() == []


@pytest.mark.parametrize(("data", "message"), [
    ({"type": "exec", "name": "x", "properties": {"command": "/bin/true"}},
     "The exec type is not listed in plugins.puppet.resource_types"),
    ({"type": "Host", "name": "db"}, "The host type is not listed in plugins.puppet.resource_types"),
    ({"type": "file", "name": "/etc/passwd", "properties": {"ensure": "absent"}},
     "The /etc/passwd name is not listed in plugins.puppet.resource_names.file"),
])
def test_resources_the_node_does_not_allow_are_refused_with_status_1(node, wrapper, data, message):
    reply = node.call("puppet", "resource", **data)
    assert (reply.statuscode, reply.statusmsg) == (1, message)
    assert wrapper.calls() == []


def test_resource_is_off_by_default(collective_node, tmp_path, wrapper):
    node = collective_node(plugins=[puppet_plugin], config={"plugins": {"puppet": {
        "confdir": str(tmp_path), "command": str(wrapper.path)}}})
    reply = node.call("puppet", "resource", type="file", name="/tmp/x", properties={"ensure": "file"})
    assert (reply.statuscode, reply.statusmsg) == (
        1, "The file type is not listed in plugins.puppet.resource_types")
    assert wrapper.calls() == []


def test_server_override_off_by_default(collective_node, tmp_path, wrapper):
    node = collective_node(plugins=[puppet_plugin], config={"plugins": {"puppet": {
        "confdir": str(tmp_path), "command": str(wrapper.path)}}})
    reply = node.call("puppet", "runonce", server="puppet.example.net:8140")
    assert (reply.statuscode, reply.statusmsg) == (
        1, "Passing 'server' option is not allowed in module configuration")
    assert wrapper.calls() == []


def test_a_missing_puppet_is_one_clear_line(collective_node, tmp_path):
    node = collective_node(plugins=[puppet_plugin], config={"plugins": {"puppet": {
        "confdir": str(tmp_path), "command": "collective-no-such-puppet"}}})
    reply = node.call("puppet", "status")
    assert (reply.statuscode, reply.statusmsg) == (
        1, "collective-no-such-puppet not found on this node (set plugins.puppet.command)")
