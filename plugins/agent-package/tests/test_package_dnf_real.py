"""The package agent's dnf provider against the REAL dnf 4 and rpm on this machine.

``collective-test-pkg`` 1.0 and 1.1 are built with ``rpmbuild`` and served from a
``createrepo_c`` repository that is dnf's only source; every test works in its own
``--installroot`` under ``tmp_path`` (``plugins.package.dnf_options``), so the host's rpm
database is never touched, and every step is checked with ``rpm --root ROOT -q``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import collective_agent_package.plugin as package_plugin
from collective.testing import require
from collective_agent_package.providers.base import digest_lines
from collective_agent_package.testing import (
    build_rpm,
    local_rpm_repo,
    rpm_state,
    rpm_tools_available,
)

TEST_PKG = "collective-test-pkg"


@pytest.fixture(scope="session")
def rpm_repo(tmp_path_factory):
    require(shutil.which("dnf") is not None, "real dnf tests: dnf is not installed")
    problem = rpm_tools_available()
    require(problem is None, f"real dnf tests: {problem}")
    require(os.geteuid() == 0, "real dnf tests: rpm transactions in an installroot need root")
    work = tmp_path_factory.mktemp("rpmrepo")
    return local_rpm_repo(work, [build_rpm(work, TEST_PKG, "1.0"), build_rpm(work, TEST_PKG, "1.1")])


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "installroot"
    path.mkdir()
    return path


@pytest.fixture
def make_node(collective_node, rpm_repo, root):
    def make(**settings):
        package = {"provider": "dnf", "dnf_options": rpm_repo.dnf_options(root),
                   "command_timeout": 60, **settings}
        return collective_node(plugins=[package_plugin], config={"plugins": {"package": package}})

    return make


@pytest.fixture
def dnf_node(make_node):
    return make_node()


def call(node, action, **data):
    return node.call("package", action, **data)


def test_status_of_a_package_rpm_never_saw_is_absent(dnf_node, root):
    reply = call(dnf_node, "status", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert (reply.data["ensure"], reply.data["name"], reply.data["provider"]) == (
        "absent", TEST_PKG, "dnf")
    assert rpm_state(root, TEST_PKG) == []


def test_install_pinned_then_update_uninstall_purge(dnf_node, root):
    reply = call(dnf_node, "install", package=TEST_PKG, version="1.0")
    assert reply.statuscode == 0, reply.statusmsg
    assert {k: reply.data[k] for k in ("ensure", "version", "release", "epoch", "arch", "provider")} == {
        "ensure": "1.0-1", "version": "1.0", "release": "1", "epoch": "0", "arch": "noarch",
        "provider": "dnf"}
    assert "Installed:\n  collective-test-pkg-1.0-1.noarch" in reply.data["output"]
    assert rpm_state(root, TEST_PKG) == ["0:1.0-1.noarch"]
    assert (root / "usr/share/collective-test-pkg/VERSION.txt").read_text() == f"{TEST_PKG} 1.0\n"
    assert rpm_state(Path("/"), TEST_PKG) == []  # the host's rpm database is untouched

    reply = call(dnf_node, "status", package=TEST_PKG)
    assert reply.statuscode == 0
    assert {k: reply.data[k] for k in ("ensure", "version", "arch", "name")} == {
        "ensure": "1.0-1", "version": "1.0", "arch": "noarch", "name": TEST_PKG}

    reply = call(dnf_node, "install", package=TEST_PKG)  # ensure => present: nothing to do
    assert reply.statuscode == 0
    assert reply.data["output"].startswith("nothing to do")

    reply = call(dnf_node, "update", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "1.1-1"
    assert "Upgraded:\n  collective-test-pkg-1.1-1.noarch" in reply.data["output"]
    assert rpm_state(root, TEST_PKG) == ["0:1.1-1.noarch"]

    # a pinned older VERSION-RELEASE is a downgrade the caller asked for explicitly
    reply = call(dnf_node, "install", package=TEST_PKG, version="1.0-1")
    assert reply.statuscode == 0, reply.statusmsg
    assert rpm_state(root, TEST_PKG) == ["0:1.0-1.noarch"]

    reply = call(dnf_node, "uninstall", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "absent"
    assert rpm_state(root, TEST_PKG) == []
    assert not (root / "usr/share/collective-test-pkg/VERSION.txt").exists()

    reply = call(dnf_node, "uninstall", package=TEST_PKG)
    assert (reply.statuscode, reply.data["output"][:13]) == (0, "nothing to do")

    # rpm keeps no configuration-only state: purge is uninstall
    assert call(dnf_node, "install", package=TEST_PKG).statuscode == 0
    assert rpm_state(root, TEST_PKG) == ["0:1.1-1.noarch"]
    reply = call(dnf_node, "purge", package=TEST_PKG)
    assert (reply.statuscode, reply.data["ensure"]) == (0, "absent")
    assert "Removed:\n  collective-test-pkg-1.1-1.noarch" in reply.data["output"]
    assert rpm_state(root, TEST_PKG) == []


def test_update_of_an_absent_package_installs_the_latest(dnf_node, root):
    reply = call(dnf_node, "update", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "1.1-1"
    assert rpm_state(root, TEST_PKG) == ["0:1.1-1.noarch"]


def test_unknown_version_and_unknown_package_are_aborted(dnf_node, root):
    reply = call(dnf_node, "install", package=TEST_PKG, version="9.9")
    assert reply.statuscode == 1
    assert "dnf install failed with exit code 1" in reply.statusmsg
    assert "No match for argument: collective-test-pkg-9.9" in reply.statusmsg
    reply = call(dnf_node, "install", package="collective-no-such-pkg")
    assert reply.statuscode == 1
    assert "No match for argument: collective-no-such-pkg" in reply.statusmsg
    assert rpm_state(root, TEST_PKG) == []


def test_checkupdates_lists_the_newer_version(dnf_node, root):
    assert call(dnf_node, "install", package=TEST_PKG, version="1.0").statuscode == 0
    for action in ("checkupdates", "yum_checkupdates"):  # no yum here: yum_* uses dnf
        reply = call(dnf_node, action)
        assert reply.statuscode == 0, reply.statusmsg
        assert (reply.data["package_manager"], reply.data["exitcode"]) == ("dnf", 100)
        assert reply.data["outdated_packages"] == [{
            "package": TEST_PKG, "version": "1.1-1", "arch": "noarch", "repo": "collective-test",
            "current": None}]
    assert call(dnf_node, "update", package=TEST_PKG).statuscode == 0
    reply = call(dnf_node, "checkupdates")
    assert (reply.statuscode, reply.data["exitcode"], reply.data["outdated_packages"]) == (0, 0, [])


def test_count_and_md5_read_the_installroot(dnf_node, root):
    assert call(dnf_node, "count").data["output"] == 0  # an empty root: nothing installed
    empty = call(dnf_node, "md5").data["output"]
    assert empty == digest_lines([])
    assert call(dnf_node, "install", package=TEST_PKG, version="1.0").statuscode == 0
    reply = call(dnf_node, "count")
    assert (reply.statuscode, reply.data["output"], reply.data["exitcode"]) == (0, 1, 0)
    assert call(dnf_node, "md5").data["output"] == digest_lines([f"{TEST_PKG} 0:1.0-1 noarch"])


def test_yum_clean_runs_in_the_installroot(dnf_node, root):
    assert call(dnf_node, "checkupdates").statuscode == 0  # fills the root's cache
    assert list((root / "var/cache/dnf").glob("collective-test*.solv"))
    reply = call(dnf_node, "yum_clean", mode="all")
    assert reply.statuscode == 0, reply.statusmsg
    assert "files removed" in reply.data["output"]
    assert not list((root / "var/cache/dnf").glob("collective-test*.solv"))


def test_a_held_lock_is_a_clear_aborted_reply(make_node, root):
    """A running dnf leaves its pid in ``rpmdb_lock.pid``; dnf (exit_on_lock) exits 200."""
    node = make_node(lock_timeout=1)
    lock = root / "var/lib/dnf/rpmdb_lock.pid"
    lock.parent.mkdir(parents=True)
    lock.write_text(str(os.getpid()))
    reply = call(node, "install", package=TEST_PKG)
    assert reply.statuscode == 1
    assert "could not get the dnf/rpm lock" in reply.statusmsg
    assert f"RPMDB already locked by {os.getpid()}" in reply.statusmsg
    assert rpm_state(root, TEST_PKG) == []
    lock.unlink()
    assert call(node, "install", package=TEST_PKG).statuscode == 0


@pytest.mark.parametrize(("option", "message"), [
    ("--downloaddir=/tmp", "not an allowed dnf option"),
    ("-y", "not an allowed dnf option"),
    ("--installroot=relative/root", "--installroot needs an absolute path"),
    ("--setopt=nokeyvalue", "is not --setopt=KEY=VALUE"),
    ("--nogpgcheck=1", "--nogpgcheck takes no value"),
    ("--releasever", "--releasever needs --NAME=VALUE"),
])
def test_dnf_options_are_an_allow_list(make_node, rpm_repo, root, option, message):
    node = make_node(dnf_options=[*rpm_repo.dnf_options(root), option])
    reply = call(node, "install", package=TEST_PKG)
    assert reply.statuscode == 1
    assert message in reply.statusmsg
    assert rpm_state(root, TEST_PKG) == []


def test_a_missing_dnf_is_a_clear_aborted_reply(dnf_node, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    reply = call(dnf_node, "checkupdates")
    assert (reply.statuscode, reply.statusmsg) == (1, "dnf not found on this node")
    reply = call(dnf_node, "status", package=TEST_PKG)
    assert (reply.statuscode, reply.statusmsg) == (1, "rpm not found on this node")
