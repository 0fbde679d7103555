"""The libvirt provider against libvirt's real built-in test driver (``test:///FILE``):
a host with a running web01, a paused db01 and a shut-off old01. Start, shutdown,
destroy, suspend and resume change the driver's state for real; the tests read it
back through libvirt itself, not through the agent."""

from __future__ import annotations

import sys

import pytest

from collective_agent_xen.testing import TestDomain

RUNNING, PAUSED, SHUTOFF = 1, 3, 5


def test_list_running_only_and_all(libvirt_node):
    node = libvirt_node()
    active = node.call("list")
    assert active.statuscode == 0, active.statusmsg
    assert [(d["name"], d["state"]) for d in active.data["domains"]] == [
        ("db01", "paused"), ("web01", "running")]
    web = next(d for d in active.data["domains"] if d["name"] == "web01")
    assert (web["memory"], web["vcpus"]) == (1024, 2)
    assert isinstance(web["id"], int) and web["id"] > 0

    every = node.call("list", all=True)
    assert every.statuscode == 0
    assert [(d["name"], d["state"], d["id"]) for d in every.data["domains"]][1] == (
        "old01", "shutoff", None)
    assert len(every.data["domains"]) == 3
    host = every.data["host"]
    assert (host["hypervisor"], host["cpus"], host["total_memory"]) == ("TEST", 4, 8192)


def test_find_and_info(libvirt_node):
    node = libvirt_node()
    found = node.call("find", domain="db01")
    assert (found.statuscode, found.data["found"], found.data["state"]) == (0, True, "paused")
    missing = node.call("find", domain="nosuch")
    assert (missing.statuscode, missing.data["found"], missing.data["state"]) == (0, False, None)

    info = node.call("info", domain="web01")
    assert info.statuscode == 0, info.statusmsg
    data = info.data
    assert (data["name"], data["state"], data["memory"], data["max_memory"], data["vcpus"]) == (
        "web01", "running", 1024, 1024, 2)
    assert data["persistent"] is True and data["autostart"] is False
    assert len(data["uuid"]) == 36


def test_unknown_domain_is_a_clear_status_1(libvirt_node):
    node = libvirt_node()
    for act in ("info", "start", "shutdown", "reboot", "destroy", "suspend", "resume"):
        reply = node.call(act, domain="nosuch")
        assert (reply.statuscode, reply.statusmsg) == (1, "No such domain: nosuch"), act


def test_start_a_shut_off_domain_for_real(libvirt_node):
    node = libvirt_node()
    assert node.raw_state("old01") == SHUTOFF
    reply = node.call("start", domain="old01")
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["state"] == "running" and isinstance(reply.data["id"], int)
    assert node.raw_state("old01") == RUNNING
    again = node.call("start", domain="old01")  # already running: nothing to do
    assert (again.statuscode, again.data["state"]) == (0, "running")
    assert node.raw_state("old01") == RUNNING


def test_shutdown_and_destroy_turn_domains_off_for_real(libvirt_node):
    node = libvirt_node()
    reply = node.call("shutdown", domain="web01")
    assert (reply.statuscode, reply.data["state"], reply.data["id"]) == (0, "shutoff", None)
    assert node.raw_state("web01") == SHUTOFF

    node.call("start", domain="web01")
    assert node.raw_state("web01") == RUNNING
    reply = node.call("destroy", domain="web01")
    assert (reply.statuscode, reply.data["state"]) == (0, "shutoff")
    assert node.raw_state("web01") == SHUTOFF
    assert node.call("destroy", domain="web01").statuscode == 0  # already off
    # a paused domain can be destroyed (it cannot be shut down)
    assert node.call("destroy", domain="db01").statuscode == 0
    assert node.raw_state("db01") == SHUTOFF


def test_reboot_keeps_a_running_domain_running(libvirt_node):
    node = libvirt_node()
    reply = node.call("reboot", domain="web01")
    assert (reply.statuscode, reply.data["state"]) == (0, "running")
    assert node.raw_state("web01") == RUNNING
    refused = node.call("reboot", domain="old01")
    assert refused.statuscode == 1 and "shutoff: start it instead" in refused.statusmsg


def test_suspend_and_resume(libvirt_node):
    node = libvirt_node()
    reply = node.call("resume", domain="db01")
    assert (reply.statuscode, reply.data["state"]) == (0, "running")
    assert node.raw_state("db01") == RUNNING
    reply = node.call("suspend", domain="db01")
    assert (reply.statuscode, reply.data["state"]) == (0, "paused")
    assert node.raw_state("db01") == PAUSED


@pytest.mark.parametrize(("act", "domain", "why"), [
    ("start", "db01", "Domain db01 is paused: resume it instead"),
    ("shutdown", "db01", "Domain db01 is paused and cannot react to a shutdown request"),
    ("suspend", "old01", "Domain old01 is shutoff: only a running domain can be paused"),
    ("resume", "old01", "Domain old01 is shutoff: only a paused domain can be resumed"),
])
def test_operations_that_do_not_fit_the_state_are_refused(libvirt_node, act, domain, why):
    node = libvirt_node()
    before = node.states()
    reply = node.call(act, domain=domain)
    assert reply.statuscode == 1
    assert reply.statusmsg.startswith(why), reply.statusmsg
    assert node.states() == before


def test_the_control_domain_is_protected(libvirt_node):
    node = libvirt_node([TestDomain("Domain-0", "running", 4096, 4), TestDomain("web01")])
    for act, verb in (("shutdown", "shut down"), ("reboot", "reboot"), ("destroy", "destroy"),
                      ("suspend", "pause")):
        reply = node.call(act, domain="Domain-0")
        assert reply.statuscode == 1
        assert reply.statusmsg == (f"Refusing to {verb} Domain-0: it is the control domain of "
                                   "this host")
    assert node.raw_state("Domain-0") == RUNNING


def test_migrate_is_off_unless_allowed(libvirt_node):
    node = libvirt_node()
    reply = node.call("migrate", domain="web01", destination="xen-host-2")
    assert reply.statuscode == 1
    assert reply.statusmsg == ("migrate is disabled on this node "
                               "(set plugins.xen.allow_migrate: true)")
    assert node.raw_state("web01") == RUNNING


def test_migrate_refusal_of_the_test_driver_is_a_clear_status_1(libvirt_node):
    node = libvirt_node(allow_migrate=True)
    reply = node.call("migrate", domain="web01", destination="xen-host-2")
    assert reply.statuscode == 1
    assert reply.statusmsg.startswith("could not migrate web01 to xen-host-2 "
                                      "(xen+ssh://xen-host-2/system): ")
    assert "migration is not supported" in reply.statusmsg
    assert node.raw_state("web01") == RUNNING
    offline = node.call("migrate", domain="web01", destination="2001:db8::7", live=False)
    assert offline.statuscode == 1
    assert "(xen+ssh://[2001:db8::7]/system)" in offline.statusmsg


def test_migrate_uri_template_and_destination_rules(libvirt_node):
    node = libvirt_node(allow_migrate=True,
                        migrate_uri="xen+tls://{destination}.example.net/system",
                        migrate_destinations=["xen-*"])
    reply = node.call("migrate", domain="web01", destination="xen-host-2")
    assert "(xen+tls://xen-host-2.example.net/system)" in reply.statusmsg
    other = node.call("migrate", domain="web01", destination="db-host-1")
    assert (other.statuscode, other.statusmsg) == (
        1, "Refusing to migrate to db-host-1: it is not in plugins.xen.migrate_destinations on "
           "this node")
    anywhere = libvirt_node(allow_migrate=True)
    for me in ("test-node", "localhost", "127.0.0.1", "::1"):
        assert anywhere.call("migrate", domain="web01", destination=me).statusmsg == (
            f"Refusing to migrate to {me}: that is this host"), me
    shut = node.call("migrate", domain="old01", destination="xen-host-2")
    assert shut.statusmsg == ("Domain old01 is shutoff: only a running or paused domain can be "
                              "migrated")


def test_the_data_plugin_shares_the_agent_connection(libvirt_node):
    from collective_agent_xen.data import XenData

    node = libvirt_node()
    data = XenData()
    web = data.query("web01", node.node.node)
    assert (web["present"], web["state"]) == (True, "running")
    assert isinstance(web["id"], int) and web["id"] > 0
    assert data.query("nosuch", node.node.node) == {"present": False, "state": "unknown",
                                                    "id": None}
    node.call("destroy", domain="web01")
    assert data.query("web01", node.node.node)["state"] == "shutoff"


def test_a_node_without_the_binding_says_how_to_install_it(libvirt_node, monkeypatch):
    node = libvirt_node()
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt -> ImportError
    reply = node.call("list")
    assert reply.statuscode == 1
    assert "pip install 'collective-agent-xen[libvirt]'" in reply.statusmsg


def test_a_bad_uri_is_a_clear_status_1(collective_node, tmp_path):
    import collective_agent_xen.plugin as xen_plugin
    from collective.testing import require
    from collective_agent_xen.testing import libvirt_available

    require(libvirt_available() is None, "libvirt test driver")
    node = collective_node(plugins=[xen_plugin], config={"plugins": {"xen": {
        "provider": "libvirt", "uri": f"test://{tmp_path}/missing.xml"}}})
    reply = node.call("xen", "list")
    assert reply.statuscode == 1
    assert reply.statusmsg.startswith(f"cannot connect to libvirt at test://{tmp_path}/missing.xml")
