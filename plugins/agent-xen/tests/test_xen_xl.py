"""The xl provider on recorded xl output (tests/data, see its README): the parsers on
the recordings, and the agent through an in-process node whose ``xl`` is a fake that
replays them and logs every argv, so each test checks exactly what xl was asked."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collective_agent_xen.providers.xl import flags_state, parse_info, parse_list, parse_list_long

DATA = Path(__file__).parent / "data"


def rec(name: str, **extra) -> dict:
    return {"file": str(DATA / name), **extra}


# -- parsers on the recordings ----------------------------------------------------------

def test_parse_xl_list():
    domains = parse_list((DATA / "xl-list.txt").read_text())
    assert [(d.name, d.id, d.memory, d.vcpus, d.state, d.flags, d.cpu_time) for d in domains] == [
        ("Domain-0", 0, 4096, 4, "running", "r-----", 5012.4),
        ("web01", 3, 1024, 2, "running", "-b----", 812.7),
        ("db01", 7, 2048, 2, "paused", "--p---", 61.0),
    ]


def test_parse_xl_list_states_of_shut_down_crashed_and_dying_domains():
    domains = {d.name: d.state for d in parse_list((DATA / "xl-list-crashed.txt").read_text())}
    assert domains == {"Domain-0": "running", "web01": "crashed", "db01": "dying"}


@pytest.mark.parametrize(("flags", "state"), [
    ("r-----", "running"), ("-b----", "running"), ("------", "running"), ("--p---", "paused"),
    ("---s--", "shutdown"), ("---sr-", "shutdown"), ("---sc-", "crashed"), ("-----d", "dying"),
    ("--ps--", "shutdown"),
])
def test_flags_state(flags, state):
    assert flags_state(flags) == state


def test_parse_xl_list_keeps_long_names_and_skips_noise():
    text = ("Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
            # xl's "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f" with a 50-character name
            + f"{'a' * 50:<40} {12:5d} {256:5d} {1:5d}     -b----  {3.5:8.1f}\n"
            + "libxl: warning: something unrelated\n\n")
    [dom] = parse_list(text)
    assert (dom.name, dom.id, dom.memory, dom.state) == ("a" * 50, 12, 256, "running")


def test_parse_xl_list_long():
    configs = parse_list_long((DATA / "xl-list-l.json").read_text())
    assert set(configs) == {"Domain-0", "web01", "db01"}
    assert configs["web01"] == {"domid": 3, "uuid": "6c8f5a52-0f6d-4c55-9d21-3d8f0b8d1a01",
                                "type": "pv", "max_memory": 1024, "max_vcpus": 2}
    assert (configs["db01"]["type"], configs["db01"]["max_memory"]) == ("hvm", 4096)


def test_parse_xl_list_long_refuses_sxp_output():
    from collective_agent_xen.providers import XenError

    with pytest.raises(XenError, match="did not print JSON"):
        parse_list_long("(domain\n    (domid 3)\n    (create_info)\n)\n")


def test_parse_xl_info():
    info = parse_info((DATA / "xl-info.txt").read_text())
    assert (info["xen_version"], info["nr_cpus"], info["total_memory"], info["free_memory"]) == (
        "4.17.3-pre", "8", "32637", "24761")
    assert info["xen_changeset"] == ""
    assert info["virt_caps"] == "pv hvm hvm_directio pv_directio hap"
    wrapped = parse_info("xen_commandline        : placeholder dom0_mem=1G\n"
                         "                         console=com1\nxen_pagesize           : 4096\n")
    assert wrapped == {"xen_commandline": "placeholder dom0_mem=1G console=com1",
                       "xen_pagesize": "4096"}


# -- the agent through the fake xl -------------------------------------------------------

def test_list_runs_xl_list_and_xl_info(xl_node):
    node, fake = xl_node()
    reply = node.call("xen", "list")
    assert reply.statuscode == 0, reply.statusmsg
    assert fake.calls() == [["list"], ["info"]]
    assert [(d["name"], d["id"], d["state"], d["memory"], d["vcpus"])
            for d in reply.data["domains"]] == [
        ("Domain-0", 0, "running", 4096, 4), ("db01", 7, "paused", 2048, 2),
        ("web01", 3, "running", 1024, 2)]
    assert reply.data["host"] == {"hypervisor": "Xen", "version": "4.17.3-pre", "cpus": 8,
                                  "total_memory": 32637, "free_memory": 24761, "model": "x86_64"}


def test_list_all_adds_the_shut_off_domains_from_the_config_directory(xl_node):
    node, fake = xl_node()
    reply = node.call("xen", "list", all=True)
    assert reply.statuscode == 0, reply.statusmsg
    names = {d["name"]: (d["state"], d["id"]) for d in reply.data["domains"]}
    assert names["old01"] == ("shutoff", None)
    assert names["web01"] == ("running", 3)
    assert fake.calls() == [["list"], ["info"]]


def test_info_reads_xl_list_long(xl_node):
    node, fake = xl_node()
    reply = node.call("xen", "info", domain="web01")
    assert reply.statuscode == 0, reply.statusmsg
    assert fake.calls() == [["list"], ["list", "-l"]]
    data = reply.data
    assert (data["id"], data["state"], data["flags"], data["memory"], data["max_memory"]) == (
        3, "running", "-b----", 1024, 1024)
    assert (data["uuid"], data["os_type"], data["persistent"]) == (
        "6c8f5a52-0f6d-4c55-9d21-3d8f0b8d1a01", "pv", True)


def test_find_and_unknown_domains(xl_node, tmp_path):
    node, fake = xl_node()
    assert node.call("xen", "find", domain="db01").data == {"found": True, "state": "paused",
                                                            "id": 7}
    assert node.call("xen", "find", domain="old01").data == {"found": True, "state": "shutoff",
                                                             "id": None}
    assert node.call("xen", "find", domain="nosuch").data["found"] is False
    reply = node.call("xen", "destroy", domain="nosuch")
    assert (reply.statuscode, reply.statusmsg) == (1, "No such domain: nosuch")
    assert ["destroy", "--", "nosuch"] not in fake.calls()


def test_shutdown_runs_xl_shutdown_and_waits_for_the_domain_to_go(xl_node):
    node, fake = xl_node(after={"shutdown": {"list": rec("xl-list-without-web01.txt")}})
    reply = node.call("xen", "shutdown", domain="web01")
    assert reply.statuscode == 0, reply.statusmsg
    assert (reply.data["state"], reply.data["id"]) == ("shutoff", None)
    assert fake.calls() == [["list"], ["shutdown", "--", "web01"], ["list"]]


def test_shutdown_that_does_not_happen_is_reported(xl_node):
    node, fake = xl_node(settle_timeout=1)
    started = time.monotonic()
    reply = node.call("xen", "shutdown", domain="web01")
    assert reply.statuscode == 1
    assert reply.statusmsg == ("Domain web01 is still running 1s after shutdown (expected "
                               "shutoff); destroy forces it off")
    assert time.monotonic() - started < 10
    assert fake.calls()[1] == ["shutdown", "--", "web01"]


def test_start_runs_xl_create_on_the_config_file(xl_node, tmp_path):
    node, fake = xl_node(after={"create": {"list": rec("xl-list-with-old01.txt")}})
    reply = node.call("xen", "start", domain="old01")
    assert reply.statuscode == 0, reply.statusmsg
    assert (reply.data["state"], reply.data["id"]) == ("running", 9)
    assert fake.calls() == [["list"], ["create", str(tmp_path / "etc-xen" / "old01.cfg")], ["list"]]


def test_start_without_a_config_file_is_no_such_domain(xl_node, tmp_path):
    node, fake = xl_node()
    (tmp_path / "etc-xen" / "old01.cfg").unlink()
    reply = node.call("xen", "start", domain="old01")
    assert (reply.statuscode, reply.statusmsg) == (1, "No such domain: old01")
    assert [c for c in fake.calls() if c[0] == "create"] == []


def test_destroy_pause_unpause_reboot_argv(xl_node):
    node, fake = xl_node(after={"destroy": {"list": rec("xl-list-without-web01.txt")}})
    assert node.call("xen", "destroy", domain="web01").data["state"] == "shutoff"
    assert ["destroy", "--", "web01"] in fake.calls()

    node, fake = xl_node(after={"pause": {"list": rec("xl-list-web01-paused.txt")}})
    reply = node.call("xen", "suspend", domain="web01")
    assert (reply.statuscode, reply.data["state"]) == (0, "paused")
    assert ["pause", "--", "web01"] in fake.calls()


def test_resume_and_reboot_argv(xl_node, tmp_path):
    node, fake = xl_node(after={"unpause": {"list": rec("xl-list-db01-unpaused.txt")}})
    reply = node.call("xen", "resume", domain="db01")
    assert (reply.statuscode, reply.data["state"]) == (0, "running"), reply.statusmsg
    reply = node.call("xen", "reboot", domain="web01")
    assert (reply.statuscode, reply.data["state"]) == (0, "running"), reply.statusmsg
    calls = fake.calls()
    assert ["unpause", "--", "db01"] in calls and ["reboot", "--", "web01"] in calls


def test_the_control_domain_is_never_touched(xl_node):
    node, fake = xl_node(allow_migrate=True)
    for act, verb in (("shutdown", "shut down"), ("reboot", "reboot"), ("destroy", "destroy"),
                      ("suspend", "pause"), ("migrate", "migrate")):
        data = {"domain": "Domain-0"}
        if act == "migrate":
            data["destination"] = "xen-host-2"
        reply = node.call("xen", act, **data)
        assert (reply.statuscode, reply.statusmsg) == (
            1, f"Refusing to {verb} Domain-0: it is the control domain of this host")
    assert fake.calls() == [["list"]] * 5


def test_a_failing_xl_command_is_status_1_with_its_message(xl_node):
    node, fake = xl_node(replies={"shutdown": {"rc": 1, "stderr_file": str(
        DATA / "xl-shutdown-nosuch-stderr.txt")}})
    reply = node.call("xen", "shutdown", domain="web01")
    assert reply.statuscode == 1
    assert reply.statusmsg == ("xl shutdown web01 failed with exit status 1: nosuch is an invalid "
                               "domain identifier (rc=-6)")


def test_migrate_argv_and_output(xl_node):
    node, fake = xl_node(allow_migrate=True)
    reply = node.call("xen", "migrate", domain="web01", destination="xen-host-2")
    assert reply.statuscode == 0, reply.statusmsg
    assert fake.calls() == [["list"], ["migrate", "--", "web01", "xen-host-2"]]
    assert (reply.data["status"], reply.data["destination"], reply.data["live"]) == (
        "migrated", "xen-host-2", True)
    assert reply.data["output"].endswith("Migration successful.")


def test_migrate_failure_and_offline_refusal(xl_node):
    node, fake = xl_node(allow_migrate=True, replies={"migrate": {"rc": 1, "stderr_file": str(
        DATA / "xl-migrate-failed-stderr.txt")}})
    reply = node.call("xen", "migrate", domain="web01", destination="xen-host-9")
    assert reply.statuscode == 1
    assert reply.statusmsg == ("xl migrate web01 xen-host-9 failed with exit status 1: ssh: Could "
                               "not resolve hostname xen-host-9: Name or service not known")
    before = len(fake.calls())
    offline = node.call("xen", "migrate", domain="web01", destination="xen-host-2", live=False)
    assert offline.statuscode == 1
    assert offline.statusmsg.startswith("xl always migrates live")
    assert [c[0] for c in fake.calls()[before:]] == ["list"]  # looked, did not migrate


def test_a_hung_xl_is_killed_at_the_command_timeout(xl_node):
    node, fake = xl_node(command_timeout=1, replies={"list": rec("xl-list.txt", sleep=30)})
    started = time.monotonic()
    reply = node.call("xen", "find", domain="web01")
    elapsed = time.monotonic() - started
    assert reply.statuscode == 1
    assert "did not finish within 1s and was killed" in reply.statusmsg
    assert elapsed < 10


def test_missing_xl_is_a_clear_status_1(collective_node, tmp_path):
    import collective_agent_xen.plugin as xen_plugin

    node = collective_node(plugins=[xen_plugin], config={"plugins": {"xen": {
        "provider": "xl", "xl": str(tmp_path / "no-xl")}}})
    reply = node.call("xen", "list")
    assert (reply.statuscode, reply.statusmsg) == (
        1, f"{tmp_path / 'no-xl'} not found on this node (plugins.xen.xl)")


def test_the_data_plugin_with_xl(xl_node):
    from collective_agent_xen.data import XenData

    node, fake = xl_node()
    data = XenData()
    assert data.query("db01", node.node) == {"present": True, "state": "paused", "id": 7}
    assert data.query("nosuch", node.node) == {"present": False, "state": "unknown", "id": None}
    assert fake.calls() == [["list"], ["list"]]
