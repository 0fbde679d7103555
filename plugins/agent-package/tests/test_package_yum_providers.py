"""The dnf/yum output parsers against output recorded from real dnf 4.14 and rpm 4.18
runs (tests/data/README.md), and the yum provider's argv through logging stubs (yum
itself cannot run on Debian; dnf runs for real in test_package_dnf_real.py)."""

from __future__ import annotations

from pathlib import Path

from collective_agent_package.providers.apt import (
    parse_dpkg_query,
    parse_simulation,
    split_debian_version,
)
from collective_agent_package.providers.base import digest_lines
from collective_agent_package.providers.yum import parse_check_update, parse_rpm_query, rpm_ensure

DATA = Path(__file__).parent / "data"
TEST_PKG = "collective-test-pkg"
RPM_QF = "%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n"


def test_dnf_check_update_parsing():
    """Recorded from dnf 4.14 (``-q check-update`` and plain ``check-update``, exit 100)."""
    expected = [{"package": "collective-test-pkg", "arch": "noarch", "version": "1.1-1",
                 "repo": "collective-test", "current": None}]
    assert parse_check_update((DATA / "dnf-check-update.txt").read_text()) == expected
    assert parse_check_update((DATA / "dnf-check-update-verbose.txt").read_text()) == expected


def test_rpm_query_parsing():
    """Recorded from rpm 4.18 (``rpm --root ROOT -q --qf RPM_QF -- collective-test-pkg``)."""
    state = parse_rpm_query(TEST_PKG, (DATA / "rpm-q-collective-test-pkg.txt").read_text())
    assert (state.name, state.ensure, state.version, state.release, state.epoch, state.arch) == (
        TEST_PKG, "1.0-1", "1.0", "1", "0", "noarch")
    two = parse_rpm_query(TEST_PKG, (DATA / "rpm-q-two-instances.txt").read_text())
    assert two.ensure == "1.1-1"  # the last instance rpm lists wins
    absent = parse_rpm_query(TEST_PKG, (DATA / "rpm-q-absent.txt").read_text())
    assert (absent.name, absent.ensure) == (TEST_PKG, "absent")
    # the epoch rule itself (no recorded package carries an epoch)
    assert rpm_ensure("1", "1.44.0", "4.el9_3") == "1:1.44.0-4.el9_3"
    assert rpm_ensure("0", "1.0", "1") == "1.0-1"


def test_dpkg_and_apt_parsing():
    assert split_debian_version("2:9.0.1378-2") == ("2", "2")
    assert split_debian_version("1.0") == (None, None)
    assert split_debian_version("1.2-3-4") == (None, "4")
    assert parse_dpkg_query("x", "").ensure == "purged"
    assert parse_dpkg_query("x", "config-files\tx\t1.0\tall\n").ensure == "absent"
    assert parse_dpkg_query("x", "not-installed\tx\t\t\n").ensure == "purged"
    assert parse_dpkg_query("x", "half-configured\tx\t1.0\tall\n").ensure == "half-configured"
    both = parse_dpkg_query("libc6", "config-files\tlibc6\t2.36\ti386\ninstalled\tlibc6\t2.36-9\tamd64\n")
    assert (both.ensure, both.arch) == ("2.36-9", "amd64")
    sim = parse_simulation(
        "Inst bash [5.2.15-2+b2] (5.2.15-2+b7 Debian:12.5/stable, Debian-Security:12/stable-security [amd64])\n"
        "Inst newdep (1.0 Debian:12.5/stable [all])\n"
        "Inst flat [1.0] (1.1 [all])\n"
        "Conf bash (5.2.15-2+b7 Debian:12.5/stable [amd64])\n"
        "Remv old [1]\n")
    assert sim == [
        {"package": "bash", "current": "5.2.15-2+b2", "version": "5.2.15-2+b7", "arch": "amd64",
         "repo": "Debian:12.5/stable, Debian-Security:12/stable-security"},
        {"package": "newdep", "current": None, "version": "1.0", "arch": "all", "repo": "Debian:12.5/stable"},
        {"package": "flat", "current": "1.0", "version": "1.1", "arch": "all", "repo": ""},
    ]


def test_yum_argv_mapping(stub_node, pkg_stubs):
    """yum cannot run on Debian: its argv is checked through logging stubs whose rpm prints
    output recorded from the real rpm (the dnf provider runs for real in test_package_dnf_real)."""
    pkg_stubs.remove("dnf")
    node = stub_node(provider="yum")
    # absent: install runs install with NAME-VERSION
    pkg_stubs.add("rpm", stdout=(DATA / "rpm-q-absent.txt").read_text(), code=1)
    reply = node.call("package", "install", package=TEST_PKG, version="1.0-1")
    assert reply.statuscode == 1  # the stub installs nothing; the agent notices
    assert pkg_stubs.calls()[1] == ["yum", "-y", "install", "--", f"{TEST_PKG}-1.0-1"]
    # installed: update updates, uninstall and purge remove
    pkg_stubs.add("rpm", stdout=(DATA / "rpm-q-collective-test-pkg.txt").read_text())
    pkg_stubs.log.unlink()
    for action in ("update", "uninstall", "purge"):
        reply = node.call("package", action, package=TEST_PKG)
        assert reply.statuscode == 0, reply.statusmsg
        assert (reply.data["provider"], reply.data["ensure"]) == ("yum", "1.0-1")
    verbs = [c for c in pkg_stubs.calls() if c[0] == "yum"]
    assert verbs == [["yum", "-y", "update", "--", TEST_PKG], ["yum", "-y", "remove", "--", TEST_PKG],
                     ["yum", "-y", "remove", "--", TEST_PKG]]
    assert ["rpm", "-q", "--qf", RPM_QF, "--", TEST_PKG] in pkg_stubs.calls()
    # installed at the asked version: nothing runs
    pkg_stubs.log.unlink()
    reply = node.call("package", "install", package=TEST_PKG, version="1.0")
    assert reply.statuscode == 0
    assert [c[0] for c in pkg_stubs.calls()] == ["rpm", "rpm"]


def test_yum_clean_and_count(stub_node, pkg_stubs):
    pkg_stubs.remove("dnf")
    recorded = (DATA / "rpm-qa.txt").read_text()
    pkg_stubs.add("rpm", stdout=recorded)
    node = stub_node(provider="yum")
    assert node.call("package", "yum_clean", mode="expire-cache").statuscode == 0
    assert node.call("package", "yum_clean").statuscode == 0
    assert node.call("package", "count").data["output"] == 1
    assert node.call("package", "md5").data["output"] == digest_lines(recorded.splitlines())
    assert [c for c in pkg_stubs.calls() if c[0] == "yum"] == [
        ["yum", "clean", "expire-cache"], ["yum", "clean", "all"]]
