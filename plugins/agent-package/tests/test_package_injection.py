"""docs/security.md S8: hostile inputs are refused with statuscode 4 and nothing runs.

PATH holds only logging stubs (``conftest.pkg_stubs``), so the tests also prove that
no package tool was started, and show the exact argv of the calls that do happen.
"""

from __future__ import annotations

import pytest

CHANGES = ("install", "update", "uninstall", "purge", "status")


def hostile(marker):
    return [
        f"x; touch {marker}",
        f"x\ntouch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        "`id`",
        f"x & touch {marker}",
        f"x | touch {marker}",
        f"-oDpkg::Pre-Invoke::=touch {marker}",
        "--help",
        "-y",
        "../../bin/sh",
        "/bin/sh",
        "x" * 10240,
        "vim\u00e9",
        "vim\x00",
        "vim ",
        " vim",
        "vim-",           # apt-get install vim- would REMOVE vim
        "@core",          # dnf group
        "lib*",           # glob
        "nginx=1.0",      # a version smuggled into the name
        "nginx/stable",   # a release smuggled into the name
        "",
    ]


@pytest.mark.parametrize("action", CHANGES)
def test_hostile_package_names_are_invalid_data_and_nothing_runs(action, stub_node, pkg_stubs, tmp_path):
    marker = tmp_path / "pwn"
    node = stub_node(provider="apt")
    for value in hostile(marker):
        reply = node.call("package", action, package=value)
        assert reply.statuscode == 4, (value, reply.statusmsg)
    assert not marker.exists()
    assert pkg_stubs.calls() == []


@pytest.mark.parametrize("provider", ["apt", "dnf", "yum"])
def test_hostile_versions_are_invalid_data_and_nothing_runs(provider, stub_node, pkg_stubs, tmp_path):
    marker = tmp_path / "pwn"
    node = stub_node(provider=provider)
    for value in [*hostile(marker), "-1.0", "1.0 ", ".1", "1.0/x", "1.0=2"]:
        if value == "vim-":
            continue  # a valid (if odd) version string: "vim=vim-" names nothing but vim
        reply = node.call("package", "install", package="vim", version=value)
        assert reply.statuscode == 4, (value, reply.statusmsg)
    assert not marker.exists()
    assert pkg_stubs.calls() == []


def test_non_string_and_undeclared_inputs_are_refused(stub_node, pkg_stubs):
    node = stub_node(provider="apt")
    assert node.call("package", "install", package=["vim"]).statuscode == 4
    assert node.call("package", "install", package=7).statuscode == 4
    assert node.call("package", "status").statuscode == 3
    assert node.call("package", "status", package="vim", extra="x").statuscode == 4
    assert node.call("package", "yum_clean", mode="everything; touch /tmp/pwn").statuscode == 4
    assert pkg_stubs.calls() == []


def test_install_runs_exactly_these_argument_lists(stub_node, pkg_stubs):
    node = stub_node(provider="apt", lock_timeout=7, apt_options=["Dir::Etc::sourcelist=/x/s.list"])
    reply = node.call("package", "install", package="vim", version="2:9.0.1378-2")
    # the stub installs nothing, and the agent checks the result rather than trusting exit 0
    assert (reply.statuscode, reply.statusmsg) == (1, "vim is purged after installing version 2:9.0.1378-2")
    fmt = "-f=${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n"
    assert pkg_stubs.calls() == [
        ["dpkg-query", "-W", fmt, "--", "vim"],
        ["apt-get", "-o", "Dir::Etc::sourcelist=/x/s.list", "-o", "APT::Cmd::Pattern-Only=true", "-q",
         "-y", "-o", "DPkg::Lock::Timeout=7", "-o", "Dpkg::Options::=--force-confdef",
         "-o", "Dpkg::Options::=--force-confold", "install", "--allow-downgrades", "--",
         "vim=2:9.0.1378-2"],
        ["dpkg-query", "-W", fmt, "--", "vim"],
    ]


def test_apt_options_from_config_must_be_key_value(stub_node, pkg_stubs):
    node = stub_node(provider="apt", apt_options=["--pre-invoke=touch /tmp/pwn"])
    reply = node.call("package", "status", package="vim")
    assert reply.statuscode == 1
    assert "apt_options" in reply.statusmsg
    assert pkg_stubs.calls() == []


def test_remove_of_a_package_that_is_not_installed_runs_no_apt_get(stub_node, pkg_stubs):
    """``apt-get remove foo+`` would INSTALL foo: remove only names dpkg has installed."""
    node = stub_node(provider="apt")
    reply = node.call("package", "uninstall", package="foo+")
    assert (reply.statuscode, reply.data["ensure"]) == (0, "purged")
    assert [call[0] for call in pkg_stubs.calls()] == ["dpkg-query", "dpkg-query"]


@pytest.mark.parametrize(("tool", "provider", "action"), [
    ("dpkg-query", "apt", "status"),
    ("apt-get", "apt", "apt_update"),
    ("apt-get", "apt", "checkupdates"),
    ("rpm", "dnf", "status"),
    ("dnf", "dnf", "checkupdates"),
    ("yum", "yum", "yum_clean"),
])
def test_a_missing_tool_is_a_clear_aborted_reply(tool, provider, action, stub_node, pkg_stubs):
    pkg_stubs.remove(tool)
    if provider == "yum":
        pkg_stubs.remove("dnf")
    data = {"package": "vim"} if action == "status" else {}
    reply = stub_node(provider=provider).call("package", action, **data)
    assert reply.statuscode == 1
    assert reply.statusmsg == f"{tool} not found on this node"


def test_no_package_manager_at_all(stub_node, pkg_stubs):
    for tool in ("apt-get", "dpkg-query", "dpkg", "rpm", "dnf", "yum"):
        pkg_stubs.remove(tool)
    reply = stub_node().call("package", "status", package="vim")
    assert reply.statuscode == 1
    assert "no package manager found on this node" in reply.statusmsg
    assert stub_node(provider="zypper").call("package", "count").statuscode == 1


def test_auto_picks_the_tool_that_exists(stub_node, pkg_stubs):
    pkg_stubs.remove("apt-get")
    pkg_stubs.add("rpm", stdout="bash\t0\t5.1.8\t6.el9\tx86_64\n")
    reply = stub_node(provider="auto").call("package", "status", package="bash")
    assert (reply.statuscode, reply.data["provider"], reply.data["ensure"]) == (0, "dnf", "5.1.8-6.el9")


def test_dpkg_lock_message_becomes_a_clear_aborted_reply(stub_node, pkg_stubs):
    pkg_stubs.add("apt-get", code=100, stderr=(
        "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 4242 (apt-get)\n"
        "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another "
        "process using it?\n"))
    reply = stub_node(provider="apt").call("package", "install", package="vim")
    assert reply.statuscode == 1
    assert reply.statusmsg.startswith("could not get the apt/dpkg lock")
    assert "held by process 4242" in reply.statusmsg


def test_a_hanging_tool_is_cut_off_by_the_timeout(stub_node, pkg_stubs):
    script = pkg_stubs.directory / "dpkg-query"
    script.write_text(script.read_text().replace("sys.exit(0)", "import time; time.sleep(30)"))
    reply = stub_node(provider="apt", command_timeout=1).call("package", "status", package="vim")
    assert reply.statuscode == 1
    assert reply.statusmsg == "dpkg-query did not finish within 1 seconds"
