"""Fixtures for the package agent's tests: stub tools on PATH, and a real local apt
repository with ``collective-test-pkg`` 1.0 and 1.1 (purged before and after each test)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import collective_agent_package.plugin as package_plugin
from collective.testing import require
from collective_agent_package.testing import (
    build_deb,
    local_apt_repo,
    purge_test_package,
    real_apt_problem,
)

TEST_PKG = "collective-test-pkg"


@pytest.fixture(scope="session")
def pkg_repo(tmp_path_factory):
    """A flat file: repository with collective-test-pkg 1.0 and 1.1; apt's only source."""
    problem = real_apt_problem()
    require(problem is None, f"real apt/dpkg tests: {problem}")
    work = tmp_path_factory.mktemp("aptrepo")
    debs = [build_deb(work, TEST_PKG, "1.0"), build_deb(work, TEST_PKG, "1.1")]
    return local_apt_repo(work, debs)


@pytest.fixture
def apt_node(collective_node, pkg_repo):
    """An in-process node whose package agent uses only ``pkg_repo``; indexes refreshed
    through the agent; the test package purged before and after."""
    purge_test_package()
    node = collective_node(plugins=[package_plugin], config={"plugins": {"package": {
        "provider": "apt", "apt_options": pkg_repo.apt_options, "lock_timeout": 120}}})
    reply = node.call("package", "apt_update")
    assert reply.statuscode == 0, reply.statusmsg
    try:
        yield node
    finally:
        purge_test_package()


class Stubs:
    """Executables that log their argv (one JSON list per call) and print canned output."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.directory = directory
        self.log = log

    def add(self, tool: str, stdout: str = "", code: int = 0, stderr: str = "") -> None:
        script = self.directory / tool
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, sys\n"
            f"with open({str(self.log)!r}, 'a') as handle:\n"
            f"    handle.write(json.dumps([{tool!r}, *sys.argv[1:]]) + '\\n')\n"
            f"sys.stdout.write({stdout!r})\n"
            f"sys.stderr.write({stderr!r})\n"
            f"sys.exit({code})\n")
        script.chmod(0o755)

    def remove(self, tool: str) -> None:
        (self.directory / tool).unlink()

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def pkg_stubs(tmp_path, monkeypatch):
    """PATH is *only* a directory of logging stubs for apt-get, dpkg-query, dpkg, rpm,
    dnf and yum (each prints nothing and exits 0 until told otherwise)."""
    directory = tmp_path / "stub-bin"
    directory.mkdir()
    stubs = Stubs(directory, tmp_path / "argv.log")
    for tool in ("apt-get", "dpkg-query", "dpkg", "rpm", "dnf", "yum"):
        stubs.add(tool)
    monkeypatch.setenv("PATH", str(directory))
    return stubs


@pytest.fixture
def stub_node(collective_node):
    """Factory: an in-process node with the package agent and ``plugins.package`` settings."""

    def make(**settings):
        return collective_node(plugins=[package_plugin], config={"plugins": {"package": settings}})

    return make
