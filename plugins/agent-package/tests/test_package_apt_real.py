"""The package agent against the REAL apt-get and dpkg on this machine.

A local file repository (see ``conftest.pkg_repo``) is apt's only source; the dpkg
database is the real one, so every step is checked with ``dpkg-query``.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from collective_agent_package.testing import dpkg_state

TEST_PKG = "collective-test-pkg"


def call(node, action, **data):
    return node.call("package", action, **data)


def test_status_of_a_package_dpkg_never_saw_is_purged(apt_node):
    reply = call(apt_node, "status", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "purged"
    assert reply.data["name"] == TEST_PKG
    assert reply.data["provider"] == "apt"
    assert dpkg_state(TEST_PKG) is None


def test_install_pinned_then_update_uninstall_purge(apt_node):
    reply = call(apt_node, "install", package=TEST_PKG, version="1.0")
    assert reply.statuscode == 0, reply.statusmsg
    assert (reply.data["ensure"], reply.data["version"], reply.data["arch"]) == ("1.0", "1.0", "all")
    assert reply.data["provider"] == "apt"
    assert "Setting up collective-test-pkg (1.0)" in reply.data["output"]
    assert dpkg_state(TEST_PKG) == ("installed", "1.0")
    assert Path("/usr/share/collective-test-pkg/VERSION.txt").read_text() == f"{TEST_PKG} 1.0\n"

    reply = call(apt_node, "status", package=TEST_PKG)
    assert reply.statuscode == 0
    assert {k: reply.data[k] for k in ("ensure", "version", "arch", "name")} == {
        "ensure": "1.0", "version": "1.0", "arch": "all", "name": TEST_PKG}

    # install without a version of an installed package changes nothing (ensure => present)
    reply = call(apt_node, "install", package=TEST_PKG)
    assert reply.statuscode == 0
    assert reply.data["ensure"] == "1.0"
    assert reply.data["output"].startswith("nothing to do")
    assert dpkg_state(TEST_PKG) == ("installed", "1.0")

    reply = call(apt_node, "update", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "1.1"
    assert dpkg_state(TEST_PKG) == ("installed", "1.1")

    # a pinned older version is a downgrade, which the caller asked for explicitly
    reply = call(apt_node, "install", package=TEST_PKG, version="1.0")
    assert reply.statuscode == 0, reply.statusmsg
    assert dpkg_state(TEST_PKG) == ("installed", "1.0")

    reply = call(apt_node, "uninstall", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "absent"  # the conffile remains
    assert dpkg_state(TEST_PKG) == ("config-files", "1.0")
    assert not Path("/usr/share/collective-test-pkg/VERSION.txt").exists()
    assert Path("/etc/collective-test-pkg.conf").exists()

    reply = call(apt_node, "uninstall", package=TEST_PKG)  # again: nothing to do
    assert reply.statuscode == 0
    assert reply.data["output"].startswith("nothing to do")

    reply = call(apt_node, "purge", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "purged"
    assert dpkg_state(TEST_PKG) is None
    assert not Path("/etc/collective-test-pkg.conf").exists()


def test_update_of_an_absent_package_installs_the_latest(apt_node):
    reply = call(apt_node, "update", package=TEST_PKG)
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["ensure"] == "1.1"
    assert dpkg_state(TEST_PKG) == ("installed", "1.1")


def test_purge_of_an_installed_package_removes_everything(apt_node):
    assert call(apt_node, "install", package=TEST_PKG).statuscode == 0
    assert dpkg_state(TEST_PKG) == ("installed", "1.1")
    reply = call(apt_node, "purge", package=TEST_PKG)
    assert (reply.statuscode, reply.data["ensure"]) == (0, "purged")
    assert dpkg_state(TEST_PKG) is None


def test_unknown_version_is_aborted_and_nothing_changes(apt_node):
    reply = call(apt_node, "install", package=TEST_PKG, version="9.9")
    assert reply.statuscode == 1
    assert "apt-get install failed" in reply.statusmsg
    assert "9.9" in reply.statusmsg
    assert dpkg_state(TEST_PKG) is None


def test_unknown_package_is_aborted(apt_node):
    reply = call(apt_node, "install", package="collective-no-such-pkg")
    assert reply.statuscode == 1
    assert "Unable to locate package collective-no-such-pkg" in reply.statusmsg


def test_a_name_is_never_a_regular_expression(apt_node):
    """apt-get falls back to regex matching for unknown names ("collective-test-p.g" would
    select collective-test-pkg); the agent switches that off."""
    reply = call(apt_node, "install", package="collective-test-p.g")
    assert reply.statuscode == 1
    assert "Unable to locate package" in reply.statusmsg
    assert dpkg_state(TEST_PKG) is None
    assert call(apt_node, "install", package=TEST_PKG).statuscode == 0
    reply = call(apt_node, "uninstall", package="collective-test-p.g")
    assert reply.statuscode == 0
    assert reply.data["ensure"] == "purged"
    assert dpkg_state(TEST_PKG) == ("installed", "1.1")


def test_checkupdates_lists_the_newer_version(apt_node):
    assert call(apt_node, "install", package=TEST_PKG, version="1.0").statuscode == 0
    for action in ("checkupdates", "apt_checkupdates"):
        reply = call(apt_node, action)
        assert reply.statuscode == 0, reply.statusmsg
        assert reply.data["package_manager"] == "apt"
        assert reply.data["exitcode"] == 0
        ours = [p for p in reply.data["outdated_packages"] if p["package"] == TEST_PKG]
        assert ours == [{"package": TEST_PKG, "version": "1.1", "current": "1.0", "arch": "all",
                         "repo": ours[0]["repo"]}]
    assert call(apt_node, "update", package=TEST_PKG).statuscode == 0
    reply = call(apt_node, "checkupdates")
    assert not [p for p in reply.data["outdated_packages"] if p["package"] == TEST_PKG]


def test_count_and_md5_follow_the_installed_set(apt_node):
    before_count = call(apt_node, "count")
    before_md5 = call(apt_node, "md5")
    assert before_count.statuscode == before_md5.statuscode == 0
    assert isinstance(before_count.data["output"], int) and before_count.data["output"] > 10
    assert len(before_md5.data["output"]) == 32
    assert call(apt_node, "install", package=TEST_PKG, version="1.0").statuscode == 0
    after_count = call(apt_node, "count").data["output"]
    after_md5 = call(apt_node, "md5").data["output"]
    # usually +1; other test suites may install packages on this machine meanwhile
    assert after_count != before_count.data["output"]
    assert after_md5 != before_md5.data["output"]


def test_a_held_lock_is_a_clear_aborted_reply(apt_node, pkg_repo):
    """apt_update locks the (private) lists directory: hold that lock like another apt would."""
    lists = next(opt.split("=", 1)[1] for opt in pkg_repo.apt_options
                 if opt.startswith("Dir::State::Lists="))
    fd = os.open(os.path.join(lists, "lock"), os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        reply = call(apt_node, "apt_update")
    finally:
        os.close(fd)
    assert reply.statuscode == 1
    assert "could not get the apt/dpkg lock" in reply.statusmsg
    assert "Could not get lock" in reply.statusmsg
    assert call(apt_node, "apt_update").statuscode == 0


def test_the_package_data_plugin_reads_the_real_dpkg_database(apt_node):
    from collective.data import DataResolver
    from collective_agent_package.data import PackageData

    def lookup(name):
        return DataResolver({"package": PackageData()}, apt_node.node)("package", name)

    assert lookup(TEST_PKG) == {"installed": False, "status": "purged", "version": None,
                                "arch": None}
    assert call(apt_node, "install", package=TEST_PKG, version="1.0").statuscode == 0
    assert lookup(TEST_PKG) == {"installed": True, "status": "1.0", "version": "1.0",
                                "arch": "all"}
    assert lookup(TEST_PKG).default_output == "status"
    assert call(apt_node, "uninstall", package=TEST_PKG).statuscode == 0
    assert lookup(TEST_PKG)["installed"] is False and lookup(TEST_PKG)["status"] == "absent"
    for bad in ("-h", "vim; id", "$(id)", "a b"):
        assert lookup(bad) is None  # refused, so an expression using it does not match
