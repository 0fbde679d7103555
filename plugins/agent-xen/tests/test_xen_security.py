"""Bad input never reaches libvirt or xl: injection strings, unknown shapes, oversize
values and bad destinations get status 4 (the DDL's allow-list formats) with one clear
message, and the test proves nothing ran (the fake xl's argv log stays empty; the
libvirt test driver's domain states are unchanged)."""

from __future__ import annotations

import pytest

from collective_agent_xen.common import destination_ok, domain_ok

DOMAIN_ACTIONS = ("find", "info", "start", "shutdown", "reboot", "destroy", "suspend", "resume")


def payloads(marker):
    return [
        f"web01; touch {marker}",
        f"web01\ntouch {marker}",
        f"$(touch {marker})",
        f"`touch {marker}`",
        f"web01 & touch {marker}",
        f"web01 | touch {marker}",
        "-oProxyCommand=touch /tmp/pwn",
        "--help",
        "-a",
        "../../etc/passwd",
        "/etc/xen/web01.cfg",
        "web01 ",
        " web01",
        "web01'",
        'web"01',
        "web01\x00",
        "\x00",
        "wéb01",
        "wеb01",  # Cyrillic e
        "a" * 65,
        "a" * 10 * 1024,
        "",
        ".hidden",
        "_x",
    ]


DESTINATIONS = [
    "xen-host-2; touch /tmp/pwn",
    "$(touch /tmp/pwn)",
    "`id`",
    "-oProxyCommand=touch /tmp/pwn",
    "--help",
    "host two",
    "root@xen-host-2",
    "xen-host-2:22",
    "xen+ssh://xen-host-2/system",
    "/tmp/sock",
    "fe80::1%eth0",
    "fe80::1%eth0;id",
    "-xen-host-2",
    "xen-host-2-",
    "xen..host",
    "a" * 254,
    "a" * 64 + ".example",
    "h\nx",
    "",
]


def test_the_formats_are_allow_lists():
    for value in payloads("/tmp/pwn"):
        assert not domain_ok(value), value
    for value in ("web01", "Domain-0", "a", "A.b_c-9", "a" * 64):
        assert domain_ok(value), value
    for value in DESTINATIONS:
        assert not destination_ok(value), value
    for value in ("xen-host-2", "xen-host-2.example.net", "192.0.2.7", "2001:db8::7", "h"):
        assert destination_ok(value), value


@pytest.mark.parametrize("act", DOMAIN_ACTIONS)
def test_xl_injection_is_refused_and_xl_never_runs(xl_node, tmp_path, act):
    node, fake = xl_node(allow_migrate=True)
    marker = tmp_path / "pwn"
    for value in payloads(marker):
        reply = node.call("xen", act, domain=value)
        assert reply.statuscode == 4, (act, value[:40], reply.statusmsg)
        assert reply.statusmsg.startswith("Cannot validate input domain: "), reply.statusmsg
    assert not marker.exists()
    assert fake.calls() == []


def test_xl_bad_destinations_are_refused_and_xl_never_runs(xl_node, tmp_path):
    node, fake = xl_node(allow_migrate=True)
    for value in DESTINATIONS:
        reply = node.call("xen", "migrate", domain="web01", destination=value)
        assert reply.statuscode == 4, (value[:40], reply.statusmsg)
        assert reply.statusmsg.startswith("Cannot validate input destination: ")
    for value in payloads(tmp_path / "pwn")[:6]:
        reply = node.call("xen", "migrate", domain=value, destination="xen-host-2")
        assert reply.statuscode == 4
    assert fake.calls() == []


@pytest.mark.parametrize("act", DOMAIN_ACTIONS)
def test_libvirt_injection_is_refused_and_no_state_changes(libvirt_node, act):
    node = libvirt_node(allow_migrate=True)
    before = node.states()
    for value in payloads("/tmp/collective-xen-pwn"):
        reply = node.call(act, domain=value)
        assert reply.statuscode == 4, (act, value[:40], reply.statusmsg)
    # the payloads that embed a real name did not reach it either
    assert node.states() == before


def test_libvirt_bad_destinations_change_nothing(libvirt_node):
    node = libvirt_node(allow_migrate=True)
    before = node.states()
    for value in DESTINATIONS:
        reply = node.call("migrate", domain="web01", destination=value)
        assert reply.statuscode == 4, (value[:40], reply.statusmsg)
    assert node.states() == before


@pytest.mark.parametrize("value", [None, 1, ["web01"], {"a": 1}, True])
def test_non_string_values_are_refused(xl_node, value):
    node, fake = xl_node()
    assert node.call("xen", "start", domain=value).statuscode == 4
    assert node.call("xen", "list", all=value if value is not True else "yes").statuscode == 4
    assert node.call("xen", "migrate", domain="web01", destination="xen-host-2",
                     live=value if value is not True else "1").statuscode == 4
    assert fake.calls() == []


def test_missing_and_undeclared_inputs(xl_node):
    node, fake = xl_node()
    assert node.call("xen", "start").statuscode == 3
    assert node.call("xen", "migrate", domain="web01").statuscode == 3
    assert node.call("xen", "start", domain="web01", force=True).statuscode == 4
    assert node.call("xen", "list", uri="xen+ssh://evil/system").statuscode == 4
    assert fake.calls() == []


def test_the_data_plugin_refuses_bad_arguments():
    from collective_agent_xen.data import XenData

    for value in payloads("/tmp/pwn")[:12]:
        with pytest.raises(ValueError, match="xen\\(\\) needs a domain name"):
            XenData.validate(value)
    with pytest.raises(ValueError):
        XenData.validate(None)
    XenData.validate("web01")


def test_a_compound_filter_with_a_bad_argument_is_refused_before_sending():
    import collective_agent_xen.plugin as xen_plugin
    from collective.compound import FilterSyntaxError, parse
    from collective.plugins import get_plugin_manager

    registry = get_plugin_manager(load_entrypoints=False, plugins=[xen_plugin]).data_plugins()
    parse('xen("web01").present=true', functions=registry)
    parse('xen("web01")=running', functions=registry)
    with pytest.raises(FilterSyntaxError):
        parse('xen("web01;id").present=true', functions=registry)
    with pytest.raises(FilterSyntaxError):
        parse('xen("web01").nosuchfield=1', functions=registry)
