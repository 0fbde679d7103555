"""A real collectived with plugin DDLs of the wrong JSON types: each bad DDL disables its
own agent with one log line naming the file and the key; the daemon serves the others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collective.client import Client
from collective.config import Config
from collective.security.keys import generate_keypair
from collective.testing import wait_for_ping

#: agent -> (how its DDL is wrong, the key the log line must name)
BROKEN = {
    "badschema": (lambda doc: doc.update({"$schema": [doc["$schema"]]}), "$schema"),
    "badtimeout": (lambda doc: doc["metadata"].update(timeout="10"), "metadata.timeout"),
    "badactions": (lambda doc: doc.update(actions={"run": doc["actions"][0]}), "actions"),
    "badinput": (lambda doc: doc["actions"][0]["input"].update(properties=[]),
                 "actions[0].input.properties"),
    "badregex": (lambda doc: doc["actions"][0]["input"]["properties"]["word"].update(
        pattern="a{99999999999}"), "actions[0].input.properties.word.pattern"),
}


def node_setup(tmp: Path, port: int) -> tuple[Path, Config]:
    """Keys, a trust store, ``n1.yaml`` (log file ``n1.log``) and the admin client config."""
    keys, trust = tmp / "keys", tmp / "trust"
    for sub in ("clients", "nodes"):
        (trust / sub).mkdir(parents=True)
    for name, kind in (("admin", "clients"), ("n1", "nodes")):
        generate_keypair(name, keys)
        shutil.copy(keys / f"{name}.pub", trust / kind / f"{name}.pub")
    server = tmp / "n1.yaml"
    server.write_text(yaml.safe_dump({
        "identity": "n1", "broker": {"port": port},
        "security": {"private_key": str(keys / "n1.key"), "trust_dir": str(trust)},
        "audit": {"file": str(tmp / "n1.audit")},
        "authorization": {"provider": "callers", "callers": ["cert=admin"]},
        "logging": {"file": str(tmp / "n1.log")}}))
    client = Config({"identity": "admin-client", "broker": {"port": port},
                     "security": {"identity": "admin", "private_key": str(keys / "admin.key"),
                                  "trust_dir": str(trust)}}, kind="client", env={})
    return server, client




@pytest.fixture
def daemon(tmp_path):
    """Start collectived with extra ``PYTHONPATH`` entries; kill it (by PID) afterwards."""
    procs: list[subprocess.Popen] = []

    def start(config: Path, *paths: Path) -> subprocess.Popen:
        pythonpath = os.pathsep.join(filter(None, [*map(str, paths), os.environ.get("PYTHONPATH")]))
        proc = subprocess.Popen([sys.executable, "-m", "collective.server.main", "-c", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": pythonpath})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def ddl(name: str) -> dict:
    return {
        "$schema": "urn:collective:ddl:agent:v1",
        "metadata": {"name": name, "description": "broken on purpose", "author": "tests",
                     "license": "Apache-2.0", "version": "0.1.0", "url": "https://example.com",
                     "timeout": 10},
        "actions": [{"action": "run", "description": "Run",
                     "input": {"type": "object", "properties": {
                         "word": {"type": "string", "description": "A word", "maxLength": 10}}},
                     "output": {"ran": {"description": "Ran", "display_as": "Ran"}}}],
    }


def broken_plugin(site: Path) -> None:
    """A distribution with one agent per :data:`BROKEN` entry, each with its bad DDL."""
    dist = site / "collective_agent_badddl-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: collective-agent-badddl\n"
                                   "Version: 0.1\nRequires-Dist: collective-core>=0.1,<0.2\n")
    (dist / "entry_points.txt").write_text("[collective]\nagent-badddl = collective_agent_badddl.plugin\n")
    pkg = site / "collective_agent_badddl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, (breaks, _key) in BROKEN.items():
        doc = ddl(name)
        breaks(doc)
        (pkg / f"{name}.json").write_text(json.dumps(doc))
    classes = "\n".join(
        f"class {name.title()}(Agent):\n    name = {name!r}\n\n"
        f"    @action\n    def run(self, request, reply):\n        reply['ran'] = True\n"
        for name in BROKEN)
    (pkg / "agent.py").write_text(f"from collective.agent import Agent, action\n\n{classes}")
    (pkg / "plugin.py").write_text(
        "from importlib.resources import files\n\nfrom collective import hookimpl\n\n\n"
        "@hookimpl\ndef collective_ddls():\n"
        f"    return [files(__package__) / f'{{n}}.json' for n in {list(BROKEN)!r}]\n\n\n"
        "@hookimpl\ndef collective_agents():\n"
        "    from . import agent\n\n"
        f"    return [getattr(agent, n.title()) for n in {list(BROKEN)!r}]\n")


def test_bad_plugin_ddls_disable_their_agents_and_the_daemon_serves(tmp_path, collective_broker,
                                                                    daemon):
    site = tmp_path / "site"
    broken_plugin(site)
    server, cfg = node_setup(tmp_path, collective_broker.port)
    proc = daemon(server, site)
    assert wait_for_ping(cfg, "n1", timeout=30), proc.stderr.read() if proc.poll() is not None else "no answer"
    with Client(cfg) as client:
        replies = client.request("rpcutil", "agent_inventory", {}, targets=["n1"], timeout=10).replies
        assert replies and replies[0].ok
        agents = {entry["agent"] for entry in replies[0].data["agents"]}
        assert {"rpcutil", "canary"} <= agents
        assert not agents & set(BROKEN)
        refused = client.request("badschema", "run", {}, targets=["n1"], timeout=10).replies
        assert refused and refused[0].statuscode == 2  # unknown agent: nothing ran
    assert proc.poll() is None
    log = (tmp_path / "n1.log").read_text()
    assert "Traceback" not in log
    for name, (_breaks, key) in BROKEN.items():
        lines = [line for line in log.splitlines() if f"agent {name} " in line]
        assert len(lines) == 1, lines
        assert f"agent {name} disabled: {name}.json: {key}" in lines[0], lines[0]
