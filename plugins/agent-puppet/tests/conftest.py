"""Fixtures for the puppet agent's tests: the session's private puppetserver, agent nodes
that use it, in-process collective nodes managing them, and an argv-logging ``puppet``
wrapper that runs the real puppet (so "no tool ran" can be proved)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import collective_agent_puppet.plugin as puppet_plugin
from collective.testing import require
from collective_agent_puppet.testing import puppet_problem, shared_server


@pytest.fixture(scope="session")
def puppet_server(request):
    """The private puppetserver of this pytest session (started and warmed up once)."""
    return shared_server(request.config)


class Wrapper:
    """An executable ``puppet`` that logs its argv (one JSON list per call), then execs the
    real puppet."""

    def __init__(self, directory: Path) -> None:
        import shutil

        real = shutil.which("puppet")
        assert real is not None
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "puppet"
        self.log = directory / "argv.log"
        self.path.write_text(
            f"#!{sys.executable} -I\n"
            "import json, os, sys\n"
            f"with open({str(self.log)!r}, 'a') as handle:\n"
            "    handle.write(json.dumps(sys.argv[1:]) + '\\n')\n"
            f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n")
        self.path.chmod(0o755)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def wrapper(tmp_path):
    require(puppet_problem() is None, f"puppet agent tests: {puppet_problem()}")
    return Wrapper(tmp_path / "wrapper")


class ManagedNode:
    """A puppet agent node (``.puppet``) and an in-process collective node whose puppet
    agent manages it (``.call(action, **inputs)``)."""

    def __init__(self, puppet, collective) -> None:
        self.puppet = puppet
        self.collective = collective

    def call(self, action: str, **data):
        return self.collective.call("puppet", action, **data)


@pytest.fixture
def managed(collective_node, puppet_server, tmp_path, wrapper):
    """Factory: ``managed(**settings)`` -> a :class:`ManagedNode` whose ``plugins.puppet``
    is ``confdir`` plus ``settings``, running puppet through the logging wrapper. Every
    puppet process of its nodes is killed afterwards."""
    made: list[ManagedNode] = []

    def make(name: str | None = None, **settings) -> ManagedNode:
        node = puppet_server.node(tmp_path / f"agent-{len(made) + 1}", name)
        config = {"plugins": {"puppet": node.plugin_config(command=str(wrapper.path),
                                                           **settings)}}
        item = ManagedNode(node, collective_node(plugins=[puppet_plugin], config=config,
                                                 identity=node.certname))
        made.append(item)
        return item

    try:
        yield make
    finally:
        for item in made:
            item.puppet.kill_runs()
