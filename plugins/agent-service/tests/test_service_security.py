"""docs/security.md S8: injection through the service name is refused (status 4) before any
command runs; missing tools and hung commands are clear status 1 replies."""

from __future__ import annotations

import time

import pytest

import collective_agent_service.plugin as service_plugin
from collective_agent_service.providers import SERVICE_NAME, check_name

ACTIONS = ("status", "start", "stop", "restart", "enable", "disable")


def payloads(marker):
    return [
        f"x; touch {marker}",
        f"x\ntouch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        "`id`",
        f"x & touch {marker}",
        f"x | touch {marker}",
        f"x && touch {marker}",
        "-oDpkg::Pre-Invoke::=touch /tmp/pwn",
        "--help",
        "-x",
        "../../bin/sh",
        "/etc/init.d/ssh",
        "a" * 10 * 1024,
        "a" * 91,
        "nginx\u00e9",
        "ngin\u0445",  # Cyrillic
        "nginx\x00",
        "\x00",
        "nginx ",
        " nginx",
        "x'y",
        'x"y',
        "",
    ]


@pytest.fixture(params=["sysv", "systemd"])
def stubbed(request, collective_node, stub_bin, tmp_path):
    """A node whose provider's tools are argv-logging stubs first on PATH."""
    for tool in ("systemctl", "service", "update-rc.d"):
        stub_bin.write(tool, {"show": (0, "LoadState=loaded\n"), "is-active": (0, "active\n")})
    node = collective_node(plugins=[service_plugin],
                           config={"plugins": {"service": {"provider": request.param}}})
    return node, stub_bin


@pytest.mark.parametrize("act", ACTIONS)
def test_injection_is_refused_and_nothing_runs(stubbed, tmp_path, act):
    node, stubs = stubbed
    marker = tmp_path / "pwn"
    for value in payloads(marker):
        reply = node.call("service", act, service=value)
        assert reply.statuscode == 4, (act, value[:40], reply.statusmsg)
        assert reply.statusmsg.startswith("Cannot validate input service:")
    assert not marker.exists()
    assert stubs.calls() == []  # no tool was run at all


@pytest.mark.parametrize("value", [None, 1, ["nginx"], {"a": 1}, True])
def test_non_string_names_are_refused(stubbed, value):
    node, stubs = stubbed
    reply = node.call("service", "status", service=value)
    assert reply.statuscode == 4
    assert stubs.calls() == []


def test_missing_and_undeclared_inputs(stubbed):
    node, stubs = stubbed
    assert node.call("service", "status").statuscode == 3
    assert node.call("service", "status", service="nginx", extra="x").statuscode == 4
    assert stubs.calls() == []


def test_the_stub_does_run_for_a_good_name(collective_node, stub_bin):
    """The control for the tests above: a valid name reaches the stub."""
    stub_bin.write("systemctl", {"show": (0, "LoadState=loaded\n"), "is-active": (0, "active\n")})
    node = collective_node(plugins=[service_plugin], config={"plugins": {"service": {"provider": "systemd"}}})
    reply = node.call("service", "status", service="nginx")
    assert (reply.statuscode, reply.data) == (0, {"status": "running"})
    assert len(stub_bin.calls()) == 2


def test_sysv_argv_through_service_and_update_rc_d(collective_node, stub_bin, init_script):
    """With the real init script present, but ``service`` and ``update-rc.d`` stubs on PATH."""
    for tool in ("service", "update-rc.d"):
        stub_bin.write(tool)
    node = collective_node(plugins=[service_plugin], config={"plugins": {"service": {"provider": "sysv"}}})
    name = init_script.name
    assert node.call("service", "status", service=name).data == {"status": "running"}
    assert node.call("service", "restart", service=name).statuscode == 0
    # enable: no rc links yet, so "defaults" first; the stub makes none, so it stays disabled
    reply = node.call("service", "enable", service=name)
    assert (reply.statuscode, reply.statusmsg) == (1, f"service {name} is disabled after enable")
    assert stub_bin.calls() == [
        ["service", name, "status"],
        ["service", name, "restart"],
        ["service", name, "status"],
        ["update-rc.d", name, "defaults"],
        ["update-rc.d", name, "enable"],
    ]


def test_format_and_provider_check_agree():
    from collective.formats import SERVICE_NAME_RE

    assert SERVICE_NAME.pattern == SERVICE_NAME_RE
    for value in payloads("/tmp/pwn"):
        if value != "a" * 91:  # only the DDL's maxLength (90, as MCollective) refuses that one
            with pytest.raises(ValueError):
                check_name(value)
    assert check_name("getty@tty1.service") == "getty@tty1.service"


def test_data_plugin_refuses_bad_names():
    from collective_agent_service.data import ServiceData

    for value in payloads("/tmp/pwn"):
        if value != "a" * 91:
            with pytest.raises(ValueError):
                ServiceData.validate(value)


# -- missing tools ------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "tool"), [("systemd", "systemctl"), ("sysv", "service")])
def test_missing_tool_on_path(collective_node, monkeypatch, tmp_path, provider, tool):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    node = collective_node(plugins=[service_plugin], config={"plugins": {"service": {"provider": provider}}})
    for act in ACTIONS:
        reply = node.call("service", act, service="nginx")
        assert (reply.statuscode, reply.statusmsg) == (1, f"{tool} not found on this node"), act


@pytest.mark.parametrize(("provider", "key"), [("systemd", "systemctl"), ("sysv", "service")])
def test_missing_configured_tool(collective_node, provider, key):
    node = collective_node(plugins=[service_plugin], config={
        "plugins": {"service": {"provider": provider, key: "/nonexistent/bin/tool"}}})
    reply = node.call("service", "status", service="nginx")
    assert (reply.statuscode, reply.statusmsg) == (1, "/nonexistent/bin/tool not found on this node")


def test_missing_update_rc_d(collective_node, init_script):
    node = collective_node(plugins=[service_plugin], config={
        "plugins": {"service": {"provider": "sysv", "update_rc_d": "/nonexistent/update-rc.d"}}})
    reply = node.call("service", "enable", service=init_script.name)
    assert reply.statuscode == 1
    assert reply.statusmsg.endswith("/nonexistent/update-rc.d not found on this node")


def test_unknown_provider(collective_node):
    node = collective_node(plugins=[service_plugin], config={"plugins": {"service": {"provider": "upstart"}}})
    reply = node.call("service", "status", service="nginx")
    assert reply.statuscode == 1
    assert "unknown service provider 'upstart'" in reply.statusmsg


def test_hung_command_is_killed_at_the_timeout(collective_node, stub_bin):
    stub = stub_bin.write("systemctl", {"show": (0, "LoadState=loaded\n")}, sleep=30)
    node = collective_node(plugins=[service_plugin], config={
        "plugins": {"service": {"provider": "systemd", "systemctl": str(stub), "command_timeout": 1}}})
    started = time.monotonic()
    reply = node.call("service", "status", service="nginx")
    assert time.monotonic() - started < 20  # generous bound; the point is that it returns
    assert reply.statuscode == 1
    assert "did not finish within 1s and was killed" in reply.statusmsg


def test_auto_detection(tmp_path):
    from collective_agent_service.providers import (
        SystemdProvider,
        SysvProvider,
        detect,
        provider_for,
    )

    assert detect(str(tmp_path)) == "systemd"
    assert detect(str(tmp_path / "nosuch")) == "sysv"
    assert isinstance(provider_for({"provider": "sysv"}, 10), SysvProvider)
    assert isinstance(provider_for({"provider": "systemd"}, 10), SystemdProvider)
    expected = SystemdProvider if detect() == "systemd" else SysvProvider
    assert isinstance(provider_for({}, 10), expected)
