"""The SysV provider against a real LSB init script, the real ``service`` and
``update-rc.d``, and a real background process (``sleep`` under start-stop-daemon)."""

from __future__ import annotations

import psutil
import pytest

import collective_agent_service.plugin as service_plugin

SYSV = {"plugins": {"service": {"provider": "sysv"}}}


@pytest.fixture
def node(collective_node):
    return collective_node(plugins=[service_plugin], config=SYSV)


def process_of(script):
    pid = script.pid()
    return psutil.Process(pid) if pid is not None else None


def test_agent_loads(node):
    assert node.problems == []


def test_status_of_a_stopped_service(node, init_script):
    reply = node.call("service", "status", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"status": "stopped"})


def test_start_status_stop_drive_the_real_process(node, init_script):
    reply = node.call("service", "start", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"status": "running"}), reply.statusmsg
    proc = process_of(init_script)
    assert proc is not None and proc.is_running()
    assert proc.cmdline() == ["/usr/bin/sleep", str(init_script.seconds)]

    reply = node.call("service", "status", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"status": "running"})

    reply = node.call("service", "stop", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"status": "stopped"}), reply.statusmsg
    assert init_script.wait(running=False)
    assert not psutil.pid_exists(proc.pid) or proc.status() == psutil.STATUS_ZOMBIE
    reply = node.call("service", "status", service=init_script.name)
    assert reply.data == {"status": "stopped"}


def test_restart_replaces_the_process(node, init_script):
    init_script.start_directly()
    assert init_script.wait(running=True)
    before = init_script.pid()
    reply = node.call("service", "restart", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"status": "running"}), reply.statusmsg
    after = init_script.pid()
    assert after is not None and after != before
    assert not init_script.is_ours(before)


def test_start_twice_and_stop_twice_are_fine(node, init_script):
    for _ in range(2):
        assert node.call("service", "start", service=init_script.name).data == {"status": "running"}
    pid = init_script.pid()
    assert node.call("service", "start", service=init_script.name).statuscode == 0
    assert init_script.pid() == pid  # not started a second time
    for _ in range(2):
        reply = node.call("service", "stop", service=init_script.name)
        assert (reply.statuscode, reply.data) == (0, {"status": "stopped"})


def test_enable_and_disable_with_update_rc_d(node, init_script):
    reply = node.call("service", "disable", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"enabled": "disabled"})
    assert init_script.links() == []  # never enabled: nothing to do

    reply = node.call("service", "enable", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"enabled": "enabled"}), reply.statusmsg
    names = {p.parent.name: p.name[:1] for p in init_script.links()}
    assert {names[f"rc{n}.d"] for n in "2345"} == {"S"}

    reply = node.call("service", "disable", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"enabled": "disabled"}), reply.statusmsg
    names = {p.parent.name: p.name[:1] for p in init_script.links()}
    assert {names[f"rc{n}.d"] for n in "2345"} == {"K"}
    assert not init_script.running()  # enable/disable never start or stop it


def test_unknown_service_is_a_clear_status_1(node):
    for act in ("status", "start", "stop", "restart", "enable", "disable"):
        reply = node.call("service", act, service="collective-test-nosuch")
        assert reply.statuscode == 1, act
        assert "collective-test-nosuch not found on this node" in reply.statusmsg


def test_failing_init_script_is_reported(node, init_script):
    init_script.path.write_text("#!/bin/sh\necho 'cannot bind port 80' >&2\nexit 1\n")
    reply = node.call("service", "start", service=init_script.name)
    assert reply.statuscode == 1
    assert reply.statusmsg.startswith(f"Could not start service {init_script.name}:")
    assert "cannot bind port 80" in reply.statusmsg


def test_start_that_does_not_come_up_is_reported(collective_node, init_script):
    node = collective_node(plugins=[service_plugin], config={
        "plugins": {"service": {"provider": "sysv", "settle_timeout": 0.5}}})
    # start "succeeds" but the daemon never runs: status stays 3 (not running)
    init_script.path.write_text('#!/bin/sh\ncase "$1" in status) exit 3;; *) exit 0;; esac\n')
    reply = node.call("service", "start", service=init_script.name)
    assert reply.statuscode == 1
    assert reply.statusmsg == f"service {init_script.name} is stopped after start, expected running"


def test_status_unknown_for_lsb_exit_4(node, init_script):
    init_script.path.write_text('#!/bin/sh\nexit 4\n')
    reply = node.call("service", "status", service=init_script.name)
    assert (reply.statuscode, reply.data) == (0, {"status": "unknown"})


def test_auto_provider_is_sysv_without_systemd(collective_node, init_script):
    from collective_agent_service.providers import detect

    if detect() != "sysv":
        pytest.skip("systemd is the running init here")
    node = collective_node(plugins=[service_plugin], config={})
    assert node.call("service", "status", service=init_script.name).data == {"status": "stopped"}


def test_data_plugin_reads_the_real_status(node, init_script):
    from collective_agent_service.data import ServiceData

    data = ServiceData()
    assert data.query(init_script.name, node.node) == {"status": "stopped", "present": True}
    init_script.start_directly()
    assert init_script.wait(running=True)
    assert data.query(init_script.name, node.node) == {"status": "running", "present": True}
    assert data.query("collective-test-nosuch", node.node) == {"status": "unknown", "present": False}
