"""End to end: the package agent in 2 real collectived processes, driven by the real
``mco package`` and ``mco rpc``, really installing a tiny .deb from a local file
repository (apt's only source) and checked against the real dpkg database.

Both nodes run on this machine and share its dpkg database: changes go to one node
(``-I``) or one node at a time (``--batch 1``), and the second node then finds the
work already done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from collective.fleet import fleet_down, fleet_up
from collective.testing import require

TEST_PKG = "collective-test-pkg"


def _problem() -> str | None:
    try:
        from collective_agent_package.testing import real_apt_problem
    except ImportError:
        return "collective-agent-package is not installed (pip install -e plugins/agent-package)"
    return real_apt_problem()


def purge() -> None:
    from collective_agent_package.testing import purge_test_package

    purge_test_package(TEST_PKG)


def dpkg_state():
    from collective_agent_package.testing import dpkg_state as state

    return state(TEST_PKG)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    problem = _problem()
    require(problem is None, f"package agent end-to-end: {problem}")
    from collective_agent_package.testing import build_deb, local_apt_repo

    work = tmp_path_factory.mktemp("pkgrepo")
    repo = local_apt_repo(work, [build_deb(work, TEST_PKG, "1.0"), build_deb(work, TEST_PKG, "1.1")])
    purge()
    directory = tmp_path_factory.mktemp("fleet")
    started = fleet_up(directory, nodes=2, extra_server_config={"plugins": {"package": {
        "provider": "apt", "apt_options": repo.apt_options, "lock_timeout": 120}}})
    try:
        yield started
    finally:
        fleet_down(directory)
        purge()


def mco(fleet, *args, answer=None, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout, input=answer or "",
                          env={**os.environ, "NO_COLOR": "1"})
    return proc.returncode, proc.stdout, proc.stderr


def node_lines(out):
    return sorted(" ".join(line.split()) for line in out.splitlines() if line.startswith("node-"))


def test_package_lifecycle_through_mco(fleet):
    code, out, err = mco(fleet, "rpc", "package", "apt_update", "-I", "node-001")
    assert code == 0, out + err

    code, out, err = mco(fleet, "package", TEST_PKG, "status")
    assert code == 0, out + err
    assert "unfiltered" not in out
    assert node_lines(out) == [f"node-001 version = {TEST_PKG}-purged",
                               f"node-002 version = {TEST_PKG}-purged"]
    assert "Summary of Ensure:" in out and "purged = 2" in out
    assert "Summary of Arch:" in out
    assert "Finished processing 2 / 2 hosts" in out

    code, out, err = mco(fleet, "package", TEST_PKG, "install", "--version", "1.0", "-I", "node-001")
    assert code == 0, out + err
    assert node_lines(out) == [f"node-001 version = {TEST_PKG}-1.0"]
    assert "1.0 = 1" in out
    assert "Finished processing 1 / 1 hosts" in out
    assert dpkg_state() == ("installed", "1.0")

    code, out, err = mco(fleet, "package", TEST_PKG, "status")
    assert code == 0, out + err
    assert node_lines(out) == [f"node-001 version = {TEST_PKG}-1.0", f"node-002 version = {TEST_PKG}-1.0"]
    assert "1.0 = 2" in out
    assert "all = 2" in out

    # the package() data plugin sees the same state (both nodes share this machine's dpkg)
    code, out, err = mco(fleet, "find", "-S", f'package("{TEST_PKG}").version=1.0', "--dt", "1")
    assert (code, sorted(out.split())) == (0, ["node-001", "node-002"]), err
    code, out, err = mco(fleet, "find", "-S", f'package("{TEST_PKG}").installed=false', "--dt", "1")
    assert out.split() == [], out + err

    code, out, err = mco(fleet, "package", "update", TEST_PKG, "--yes", "--batch", "1",
                         "--batch-sleep", "0")
    assert code == 0, out + err
    assert "unfiltered" not in out
    assert node_lines(out) == [f"node-001 version = {TEST_PKG}-1.1", f"node-002 version = {TEST_PKG}-1.1"]
    assert "1.1 = 2" in out
    assert dpkg_state() == ("installed", "1.1")

    code, out, err = mco(fleet, "package", TEST_PKG, "uninstall", "--yes", "--batch", "1",
                         "--batch-sleep", "0")
    assert code == 0, out + err
    assert node_lines(out) == [f"node-001 version = {TEST_PKG}-absent",
                               f"node-002 version = {TEST_PKG}-absent"]
    assert "absent = 2" in out
    assert dpkg_state() == ("config-files", "1.1")

    code, out, err = mco(fleet, "package", TEST_PKG, "purge", "-I", "node-002")
    assert code == 0, out + err
    assert node_lines(out) == [f"node-002 version = {TEST_PKG}-purged"]
    assert dpkg_state() is None
    code, out, err = mco(fleet, "find", "-S", f'package("{TEST_PKG}")=purged and '
                         f'not package("{TEST_PKG}").installed=true', "--dt", "1")
    assert (code, sorted(out.split())) == (0, ["node-001", "node-002"]), err


def test_unfiltered_install_answered_no_sends_nothing(fleet):
    purge()
    code, out, err = mco(fleet, "package", TEST_PKG, "install", answer="n\n")
    assert code == 1
    assert "Do you really want to operate on packages unfiltered? (y/n)" in out
    assert "node-" not in out
    assert "Nothing was sent." in err
    assert dpkg_state() is None


def test_invalid_name_never_leaves_the_client(fleet):
    code, out, err = mco(fleet, "package", "x;touch /tmp/pwn", "install", "--yes")
    assert code == 1
    assert "The package application failed to run" in err
    assert "Cannot validate input package" in err


def test_failures_are_reported_per_node(fleet):
    code, out, err = mco(fleet, "package", "collective-no-such-pkg", "install", "-I", "node-001")
    assert code == 2, out + err
    assert "node-001" in out and "error = apt-get install failed" in out
    assert "Unable to locate package collective-no-such-pkg" in out
    assert "No aggregate summary could be computed" in out


def test_other_actions_through_mco_rpc(fleet):
    code, out, err = mco(fleet, "rpc", "package", "count", "--json")
    assert code == 0, out + err
    replies = json.loads(out)
    assert sorted(r["sender"] for r in replies) == ["node-001", "node-002"]
    assert all(r["statuscode"] == 0 and r["data"]["output"] > 10 for r in replies)
    code, out, err = mco(fleet, "rpc", "package", "md5")
    assert code == 0, out + err
    assert "Summary of Package List MD5:" in out
