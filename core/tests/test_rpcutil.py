"""The built-in rpcutil agent, through AgentHost with a StaticNode (docs/security.md S19 included)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from collective.agent import check_agent
from collective.agents.rpcutil import plugin as rpcutil_plugin
from collective.agents.rpcutil.agent import Rpcutil, lookup_fact
from collective.config import READABLE_KEYS, Config
from collective.ddl import AgentDDL
from collective.server.dispatch import AgentHost, CallInfo, StaticNode

SECRET = "PLANTED-s3cr3t-7f3a9c"

FACTS = {
    "role": "web",
    "os": {"family": "debian", "release": {"major": "12", "full": "12.5"}},
    "interfaces": [{"name": "eth0"}, {"name": "lo"}],
    "dotted.name": "literal",
    "count": 3,
}


@pytest.fixture
def config(tmp_path):
    psk = tmp_path / "psk"
    psk.write_text(SECRET)
    data = {
        "identity": "node-1",
        "collectives": ["mcollective", "eu"],
        "broker": {"host": "broker.example.com", "password": SECRET, "user": "node"},
        "security": {"provider": "psk", "psk_file": str(psk)},
        "plugins": {"rpcutil": {"token": SECRET}, "nrpe": {"password": SECRET}},
    }
    return Config(data, path=tmp_path / "server.yaml", kind="server", env={})


@pytest.fixture
def ddl():
    (resource,) = rpcutil_plugin.collective_ddls()
    return AgentDDL.load(resource)


@pytest.fixture
def host(config, ddl):
    node = StaticNode("node-1", config, facts=FACTS, classes=["role::web", "base"],
                      stats={"total": 147, "validated": 147, "passed": 142, "filtered": 5,
                             "replies": 140, "replayed": 2}, data_plugins=["fstat", "sysctl"],
                      start_time=1_700_000_000.5)
    host = AgentHost(config, node, {"rpcutil": Rpcutil}, {"rpcutil": ddl})
    assert host.load() == []
    return host


def rpc(host, action, **data):
    info = CallInfo(request_id="abc", caller="cert=alice", sender="client", agent="rpcutil",
                    action=action, data=data, collective="mcollective", time=int(time.time() * 1000))
    refused = host.prepare(info)
    return refused if refused is not None else host.run(info)


# -- the DDL and the plugin ----------------------------------------------------------------


def test_ddl_shape(ddl):
    assert ddl.timeout == 10
    assert all(act.display == "always" for act in ddl.actions.values())
    assert check_agent(Rpcutil, ddl) == []
    aggregates = {name: [(a["function"], a["args"]) for a in act.aggregates]
                  for name, act in ddl.actions.items() if act.aggregates}
    assert aggregates == {
        "daemon_stats": [("summary", ["version"]), ("summary", ["agents"])],
        "get_fact": [("summary", ["value"])],
        "agent_ddl": [("summary", ["version"])],
        "collective_info": [("summary", ["collectives"])],
        "get_config_item": [("summary", ["value"])],
    }


def test_plugin_hooks():
    (resource,) = rpcutil_plugin.collective_ddls()
    assert resource.name == "rpcutil.json"
    assert rpcutil_plugin.collective_agents() == [Rpcutil]


def test_importing_the_plugin_does_not_import_the_agent():
    code = ("import sys, collective.agents.rpcutil.plugin; "
            "sys.exit(1 if 'collective.agents.rpcutil.agent' in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- actions -------------------------------------------------------------------------------


def test_ping(host):
    before = int(time.time())
    outcome = rpc(host, "ping")
    assert outcome.statuscode == 0
    assert before <= outcome.data["pong"] <= int(time.time())
    assert isinstance(outcome.data["pong"], int)


def test_inventory(host, config):
    data = rpc(host, "inventory").data
    assert data == {
        "agents": ["rpcutil"],
        "facts": FACTS,
        "classes": ["role::web", "base"],
        "version": host.node.version,
        "main_collective": "mcollective",
        "collectives": ["mcollective", "eu"],
        "data_plugins": ["fstat", "sysctl"],
    }


def test_daemon_stats(host, config):
    outcome = rpc(host, "daemon_stats")
    assert outcome.statuscode == 0
    data = outcome.data
    for key in ("threads", "agents", "pid", "times", "validated", "unvalidated", "passed", "filtered",
                "starttime", "total", "replies", "ttlexpired", "configfile", "version"):
        assert key in data, key
    assert (data["total"], data["validated"], data["passed"], data["filtered"], data["replies"]) == (
        147, 147, 142, 5, 140)
    assert data["unvalidated"] == 0 and data["ttlexpired"] == 0
    assert data["replayed"] == 2  # the node's extra counters come along
    assert data["agents"] == ["rpcutil"]
    assert data["starttime"] == 1_700_000_000
    assert data["configfile"] == str(config.path)
    assert set(data["times"]) == {"user", "system", "children_user", "children_system", "elapsed"}
    assert host.agents["rpcutil"].ddl.actions["daemon_stats"].validate_output(data) == []


@pytest.mark.parametrize(("fact", "value"), [
    ("role", "web"),
    ("os", FACTS["os"]),
    ("os.family", "debian"),
    ("os.release.major", "12"),
    ("interfaces.1.name", "lo"),
    ("interfaces.9.name", None),
    ("dotted.name", "literal"),
    ("count", 3),
    ("nosuch", None),
    ("role.nosuch", None),
])
def test_get_fact(host, fact, value):
    outcome = rpc(host, "get_fact", fact=fact)
    assert outcome.statuscode == 0
    assert outcome.data == {"fact": fact, "value": value}


@pytest.mark.parametrize("fact", ["x; id", "os..family", "-x", "os/family", "a" * 129, "", "x\n"])
def test_get_fact_invalid_name(host, fact):
    assert rpc(host, "get_fact", fact=fact).statuscode == 4


def test_get_fact_missing_input(host):
    outcome = rpc(host, "get_fact")
    assert (outcome.statuscode, outcome.statusmsg) == (3, "Action get_fact needs a fact argument")


def test_get_facts(host):
    outcome = rpc(host, "get_facts", facts="role, os.family ,nosuch")
    assert outcome.statuscode == 0
    assert outcome.data == {"values": {"role": "web", "os.family": "debian", "nosuch": None}}
    assert rpc(host, "get_facts", facts="role;id").statuscode == 4


def test_fact_lookup_does_not_use_attributes():
    assert lookup_fact({"a": {}}, "a.__class__") is None
    assert lookup_fact({"a": [1]}, "a.-1") is None


def test_agent_inventory(host, ddl):
    agents = rpc(host, "agent_inventory").data["agents"]
    meta = ddl.metadata
    assert agents == [{"agent": "rpcutil", "name": "rpcutil", "description": meta["description"],
                       "author": meta["author"], "license": meta["license"],
                       "version": meta["version"], "url": meta["url"], "timeout": 10}]


def test_collective_info(host):
    outcome = rpc(host, "collective_info")
    assert outcome.data == {"main_collective": "mcollective", "collectives": ["mcollective", "eu"]}


# -- get_config_item (S19) ---------------------------------------------------------------------


@pytest.mark.parametrize("item", READABLE_KEYS)
def test_get_config_item_readable_keys(host, config, item):
    outcome = rpc(host, "get_config_item", item=item)
    assert outcome.statuscode == 0
    assert outcome.data == {"item": item, "value": config.get(item)}


def test_get_config_item_value(host):
    assert rpc(host, "get_config_item", item="broker.host").data["value"] == "broker.example.com"


REFUSED = ["security.psk_file", "broker.password", "broker.password_file", "broker.user", "__dict__",
           "_config", "pluginconf", "plugins", "plugins.rpcutil.token", "plugins.nrpe.password",
           "security", "broker", "data", "security.psk", "__class__", "nosuch", "identity.x"]


@pytest.mark.parametrize("item", REFUSED)
def test_get_config_item_refuses(host, item, caplog):
    with caplog.at_level(logging.DEBUG):
        outcome = rpc(host, "get_config_item", item=item)
    assert (outcome.statuscode, outcome.statusmsg) == (1, f"Unknown config property {item}")
    assert outcome.data == {"item": None, "value": None}
    assert SECRET not in json.dumps(outcome.data) + outcome.statusmsg
    assert SECRET not in caplog.text


@pytest.mark.parametrize("item", ["broker.password; id", "x" * 51, "broker password", "", 5])
def test_get_config_item_invalid_item(host, item):
    assert rpc(host, "get_config_item", item=item).statuscode == 4


def test_secret_appears_in_no_reply(host, caplog):
    calls = [("ping", {}), ("inventory", {}), ("daemon_stats", {}), ("agent_inventory", {}),
             ("collective_info", {}), ("get_facts", {"facts": "role,os"}), ("get_fact", {"fact": "os"}),
             *[("get_config_item", {"item": item}) for item in (*READABLE_KEYS, *REFUSED)]]
    with caplog.at_level(logging.DEBUG):
        outcomes = [rpc(host, action, **data) for action, data in calls]
    blob = json.dumps([[o.statuscode, o.statusmsg, o.data, o.reason] for o in outcomes])
    assert SECRET not in blob
    assert SECRET not in caplog.text
