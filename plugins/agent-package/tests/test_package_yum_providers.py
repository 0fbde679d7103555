"""The dnf and yum providers: argv mapping (through logging stubs) and output parsing.

There is no dnf, yum or rpm on this Debian machine: the parsers are tested against
recorded output written from dnf's and yum's documented formats (tests/data/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from collective_agent_package.providers.apt import (
    parse_dpkg_query,
    parse_simulation,
    split_debian_version,
)
from collective_agent_package.providers.yum import parse_check_update, parse_rpm_query

DATA = Path(__file__).parent / "data"
RPM_QF = "%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n"


def test_dnf_check_update_parsing():
    rows = parse_check_update((DATA / "dnf-check-update.txt").read_text())
    assert [(r["package"], r["arch"], r["version"], r["repo"]) for r in rows] == [
        ("NetworkManager", "x86_64", "1:1.44.0-4.el9_3", "baseos"),
        ("bash", "x86_64", "5.1.8-9.el9", "baseos"),
        ("kernel", "x86_64", "5.14.0-362.24.1.el9_3", "baseos"),
        ("python3-dnf-plugin-post-transaction-actions", "noarch", "4.3.0-13.el9", "baseos"),
        ("tzdata", "noarch", "2024a-1.el9", "appstream"),
    ]


def test_yum_check_update_parsing():
    rows = parse_check_update((DATA / "yum-check-update.txt").read_text())
    assert [(r["package"], r["version"]) for r in rows] == [
        ("bash", "4.2.46-35.el7_9"), ("openssl", "1:1.0.2k-26.el7_9"),
        ("openssl-libs", "1:1.0.2k-26.el7_9")]


def test_rpm_query_parsing():
    state = parse_rpm_query("bash", (DATA / "rpm-q-bash.txt").read_text())
    assert (state.ensure, state.version, state.release, state.epoch, state.arch) == (
        "5.1.8-6.el9", "5.1.8", "6.el9", "0", "x86_64")
    kernel = parse_rpm_query("kernel", (DATA / "rpm-q-kernel.txt").read_text())
    assert kernel.ensure == "5.14.0-362.24.1.el9_3"
    epoch = parse_rpm_query("nm", "NetworkManager\t1\t1.44.0\t4.el9_3\tx86_64\n")
    assert epoch.ensure == "1:1.44.0-4.el9_3"
    assert parse_rpm_query("nosuch", "package nosuch is not installed\n").ensure == "absent"


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


@pytest.mark.parametrize(("provider", "upgrade"), [("dnf", "upgrade"), ("yum", "update")])
def test_argv_mapping(provider, upgrade, stub_node, pkg_stubs):
    node = stub_node(provider=provider)
    # absent: install runs install with NAME-VERSION
    reply = node.call("package", "install", package="bash", version="5.1.8-6.el9")
    assert reply.statuscode == 1  # the stub installs nothing; the agent notices
    assert pkg_stubs.calls()[1] == [provider, "-y", "install", "--", "bash-5.1.8-6.el9"]
    # installed: update upgrades, uninstall and purge remove
    pkg_stubs.add("rpm", stdout="bash\t0\t5.1.8\t6.el9\tx86_64\n")
    pkg_stubs.log.unlink()
    for action in ("update", "uninstall", "purge"):
        reply = node.call("package", action, package="bash")
        assert reply.statuscode == 0, reply.statusmsg
        assert (reply.data["provider"], reply.data["ensure"]) == (provider, "5.1.8-6.el9")
    verbs = [c for c in pkg_stubs.calls() if c[0] == provider]
    assert verbs == [[provider, "-y", upgrade, "--", "bash"], [provider, "-y", "remove", "--", "bash"],
                     [provider, "-y", "remove", "--", "bash"]]
    assert ["rpm", "-q", "--qf", RPM_QF, "--", "bash"] in pkg_stubs.calls()
    # installed at the asked version: nothing runs
    pkg_stubs.log.unlink()
    reply = node.call("package", "install", package="bash", version="5.1.8")
    assert reply.statuscode == 0
    assert [c[0] for c in pkg_stubs.calls()] == ["rpm", "rpm"]


def test_dnf_checkupdates_exit_100_is_success(stub_node, pkg_stubs):
    pkg_stubs.add("dnf", stdout=(DATA / "dnf-check-update.txt").read_text(), code=100)
    reply = stub_node(provider="dnf").call("package", "checkupdates")
    assert reply.statuscode == 0, reply.statusmsg
    assert (reply.data["package_manager"], reply.data["exitcode"]) == ("dnf", 100)
    assert len(reply.data["outdated_packages"]) == 5
    assert pkg_stubs.calls() == [["dnf", "-q", "check-update"]]
    pkg_stubs.add("dnf", stderr="Error: Failed to download metadata for repo 'baseos'\n", code=1)
    reply = stub_node(provider="dnf").call("package", "checkupdates")
    assert reply.statuscode == 1
    assert "Failed to download metadata" in reply.statusmsg


def test_yum_clean_and_count(stub_node, pkg_stubs):
    pkg_stubs.remove("dnf")
    pkg_stubs.add("rpm", stdout="bash 0:5.1.8-6.el9 x86_64\nzlib 0:1.2.11-40.el9 x86_64\n")
    node = stub_node(provider="yum")
    assert node.call("package", "yum_clean", mode="expire-cache").statuscode == 0
    assert node.call("package", "yum_clean").statuscode == 0
    assert node.call("package", "count").data["output"] == 2
    md5 = node.call("package", "md5").data["output"]
    pkg_stubs.add("rpm", stdout="zlib 0:1.2.11-40.el9 x86_64\nbash 0:5.1.8-6.el9 x86_64\n")
    assert node.call("package", "md5").data["output"] == md5  # order does not matter
    assert [c for c in pkg_stubs.calls() if c[0] == "yum"] == [
        ["yum", "clean", "expire-cache"], ["yum", "clean", "all"]]
