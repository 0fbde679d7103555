"""The systemd provider.

systemd is not PID 1 on the test machines, and Debian's ``systemctl`` package
(docker-systemctl-replacement) cannot be installed next to systemd (apt would
remove systemd). So the provider is driven against that same replacement, from
PyPI, with ``--root`` pointing at a private directory of unit files: it really
starts and stops the ``sleep`` processes. The exact argv is checked against a
logging stub whose answers were recorded from it.
"""

from __future__ import annotations

import pytest

import collective_agent_service.plugin as service_plugin


@pytest.fixture
def node(collective_node, fake_systemd):
    return collective_node(plugins=[service_plugin], config={
        "plugins": {"service": {"provider": "systemd", "systemctl": str(fake_systemd.systemctl)}}})


def test_start_status_stop_restart_a_real_unit(node, fake_systemd):
    name, seconds = fake_systemd.add_unit()
    reply = node.call("service", "status", service=name)
    assert (reply.statuscode, reply.data) == (0, {"status": "stopped"}), reply.statusmsg

    reply = node.call("service", "start", service=name)
    assert (reply.statuscode, reply.data) == (0, {"status": "running"}), reply.statusmsg
    assert fake_systemd.wait(seconds, running=True)
    [first] = fake_systemd.pids(seconds)
    assert node.call("service", "status", service=name).data == {"status": "running"}

    reply = node.call("service", "restart", service=name)
    assert (reply.statuscode, reply.data) == (0, {"status": "running"}), reply.statusmsg
    assert fake_systemd.wait(seconds, running=True)
    assert first not in fake_systemd.pids(seconds)

    reply = node.call("service", "stop", service=name)
    assert (reply.statuscode, reply.data) == (0, {"status": "stopped"}), reply.statusmsg
    assert fake_systemd.wait(seconds, running=False)
    assert node.call("service", "status", service=name).data == {"status": "stopped"}


def test_enable_and_disable_a_real_unit(node, fake_systemd):
    name, _ = fake_systemd.add_unit()
    link = fake_systemd.units / "multi-user.target.wants" / f"{name}.service"
    reply = node.call("service", "enable", service=name)
    assert (reply.statuscode, reply.data) == (0, {"enabled": "enabled"}), reply.statusmsg
    assert link.is_symlink()
    reply = node.call("service", "disable", service=name)
    assert (reply.statuscode, reply.data) == (0, {"enabled": "disabled"}), reply.statusmsg
    assert not link.exists()


def test_unknown_unit_is_a_clear_status_1(node, fake_systemd):
    for act in ("status", "start", "stop", "enable"):
        reply = node.call("service", act, service="collective-test-nosuch")
        assert reply.statuscode == 1, act
        assert reply.statusmsg == "service collective-test-nosuch not found on this node"


def test_data_plugin_with_systemd(node, fake_systemd):
    from collective_agent_service.data import ServiceData

    name, seconds = fake_systemd.add_unit()
    assert ServiceData().query(name, node.node) == {"status": "stopped", "present": True}
    assert node.call("service", "start", service=name).statuscode == 0
    assert ServiceData().query(name, node.node) == {"status": "running", "present": True}


# -- exact argv, against a logging stub with answers recorded from the real tool -------------

LOADED = (0, "LoadState=loaded\n")


@pytest.fixture
def stub_node(collective_node, stub_bin):
    return collective_node(plugins=[service_plugin], config={"plugins": {"service": {"provider": "systemd"}}})


@pytest.mark.parametrize(("act", "replies", "expected_status", "commands"), [
    ("status", {"show": LOADED, "is-active": (0, "active\n")}, "running",
     [["systemctl", "show", "--property=LoadState", "--", "nginx"],
      ["systemctl", "is-active", "--", "nginx"]]),
    ("status", {"show": LOADED, "is-active": (3, "inactive\n")}, "stopped", None),
    ("status", {"show": LOADED, "is-active": (3, "failed\n")}, "stopped", None),
    ("status", {"show": LOADED, "is-active": (3, "activating\n")}, "unknown", None),
    ("start", {"show": LOADED, "is-active": (0, "active\n")}, "running",
     [["systemctl", "show", "--property=LoadState", "--", "nginx"],
      ["systemctl", "start", "--", "nginx"],
      ["systemctl", "is-active", "--", "nginx"]]),
    ("stop", {"show": LOADED, "is-active": (3, "inactive\n")}, "stopped",
     [["systemctl", "show", "--property=LoadState", "--", "nginx"],
      ["systemctl", "stop", "--", "nginx"],
      ["systemctl", "is-active", "--", "nginx"]]),
    ("restart", {"show": LOADED, "is-active": (0, "active\n")}, "running",
     [["systemctl", "show", "--property=LoadState", "--", "nginx"],
      ["systemctl", "restart", "--", "nginx"],
      ["systemctl", "is-active", "--", "nginx"]]),
])
def test_systemctl_argv_and_exit_codes(stub_node, stub_bin, act, replies, expected_status, commands):
    stub_bin.write("systemctl", replies)
    reply = stub_node.call("service", act, service="nginx")
    assert (reply.statuscode, reply.data) == (0, {"status": expected_status}), reply.statusmsg
    if commands is not None:
        assert stub_bin.calls() == commands


def test_enable_argv(stub_node, stub_bin):
    stub_bin.write("systemctl", {"show": LOADED, "is-enabled": (0, "enabled\n")})
    reply = stub_node.call("service", "enable", service="nginx@eth0.service")
    assert (reply.statuscode, reply.data) == (0, {"enabled": "enabled"})
    assert stub_bin.calls() == [
        ["systemctl", "show", "--property=LoadState", "--", "nginx@eth0.service"],
        ["systemctl", "enable", "--", "nginx@eth0.service"],
        ["systemctl", "is-enabled", "--", "nginx@eth0.service"]]


def test_failed_start_shows_systemctl_message(stub_node, stub_bin):
    stub_bin.write("systemctl", {"show": LOADED, "is-active": (3, "failed\n"), "start": (
        1, "Job for nginx.service failed because the control process exited with error code.\n")})
    reply = stub_node.call("service", "start", service="nginx")
    assert reply.statuscode == 1
    assert reply.statusmsg == ("Could not start service nginx: systemctl start nginx failed with exit "
                               "status 1: Job for nginx.service failed because the control process "
                               "exited with error code.")


def test_systemctl_that_cannot_talk_to_systemd(stub_node, stub_bin):
    # recorded from Debian 12's real systemctl with systemd not running as PID 1
    stub_bin.write("systemctl", {"show": (1, "System has not been booted with systemd as init system "
                                             "(PID 1). Can't operate.\nFailed to connect to bus: Host is down\n")})
    reply = stub_node.call("service", "status", service="nginx")
    assert reply.statuscode == 1
    assert "Failed to connect to bus: Host is down" in reply.statusmsg
