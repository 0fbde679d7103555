"""Built-in input formats: allow-lists, with the injection strings of docs/security.md S8."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collective.formats import BUILTIN_FORMATS, Format, format_registry

FORMATS = {f.name: f for f in BUILTIN_FORMATS}

#: docs/security.md S8: every one of these must be refused by shellsafe, service_name,
#: package_name, identity, hostname, fact_name and the IP formats.
INJECTIONS = [
    "x; touch /tmp/pwn",
    "x\ntouch /tmp/pwn",
    "x\n",
    "$(touch /tmp/pwn)",
    "`id`",
    "x`id`",
    "x & touch /tmp/pwn",
    "x && y",
    "x | y",
    "x > /etc/passwd",
    "x < /etc/shadow",
    "-oDpkg::Pre-Invoke::=touch /tmp/pwn",
    "--help",
    "-",
    "../../bin/sh",
    "a" * 10 * 1024,
    "x\x00y",
    "\x00",
    "x'y",
    'x"y',
    "x\\y",
    "x\ty",
    "x\rtouch",
    "café",
    "x\u2028y",
    "",
]

ALL_NAMES = ["shellsafe", "service_name", "package_name", "identity", "hostname", "fact_name",
             "ipv4", "ipv6", "ipaddress"]


def test_builtin_names():
    assert set(FORMATS) == set(ALL_NAMES)
    assert all(f.description for f in BUILTIN_FORMATS)


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("value", INJECTIONS, ids=lambda v: repr(v[:30]))
def test_injections_refused_everywhere(name, value):
    assert FORMATS[name](value) is False


ALLOW = {
    "shellsafe": ["nginx", "puppet disabled for maintenance", "a,b:c@d+e=f/g%h-i_j.k", "1.2.3",
                  "x" * 1024],
    "service_name": ["nginx", "getty@tty1", "systemd-journald", "php7.4-fpm", "foo.service",
                     "x" * 255],
    "package_name": ["nginx", "libc6:amd64", "g++", "python3.11", "1:2.3-4", "x" * 255],
    "identity": ["node-001", "web1.example.com", "A_b", "x" * 64],
    "hostname": ["localhost", "web-1.example.com", "1.2.3.4", "a" * 63, "x1"],
    "fact_name": ["os", "os.family", "os.release.major", "interfaces.0.name", "ansible_lsb",
                  "has-dash"],
    "ipv4": ["192.0.2.1", "0.0.0.0", "255.255.255.255"],
    "ipv6": ["::1", "2001:db8::1", "fe80::1", "::ffff:192.0.2.1"],
    "ipaddress": ["192.0.2.1", "2001:db8::1"],
}

DENY = {
    "shellsafe": ["x" * 1025, "x*", "x?", "x[1]", "~root", "x!y", "x#y", "x{a,b}", ".hidden",
                  " leading space"],
    "service_name": ["x" * 256, "-x", ".x", "x/y", "x y", "x*"],
    "package_name": ["x" * 256, "-x", "x y", "x/../y", "x=1"],
    "identity": ["x" * 65, "-x", "_x", "x y", "x:y", "x@y", ".x"],
    "hostname": ["-x", "x-", "x..y", ".x", "x.", "a" * 64, "x_y", "x y", "a." * 127 + "a"],
    "fact_name": ["-x", ".x", "x.", "x..y", "x y", "x/y", "x:y", "x" * 129],
    "ipv4": ["1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", " 1.2.3.4", "1.2.3.4 ", "::1"],
    "ipv6": ["1.2.3.4", "fe80::1%eth0", "fe80::1%x; touch /tmp/pwn", ":::", "2001:db8::g"],
    "ipaddress": ["example.com", "fe80::1%eth0", "1.2.3.4/24"],
}


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in ALLOW.items() for v in vs],
                         ids=lambda v: v[:30] if isinstance(v, str) else v)
def test_allowed(name, value):
    assert FORMATS[name](value) is True


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in DENY.items() for v in vs],
                         ids=lambda v: v[:30] if isinstance(v, str) else v)
def test_denied(name, value):
    assert FORMATS[name](value) is False


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("value", [None, 1, 1.5, True, ["x"], {"x": 1}, b"x"])
def test_non_strings_refused(name, value):
    assert FORMATS[name](value) is False


@given(st.text(max_size=80))
def test_shellsafe_never_passes_a_metacharacter(value):
    if FORMATS["shellsafe"](value):
        assert not set(value) & set("`$;|&><()'\"\\\n\r\t\x00*?[]~!#{}")
        assert not value.startswith(("-", ".", " "))
        assert value.isascii()


@given(st.text(max_size=300))
def test_service_name_grammar(value):
    if FORMATS["service_name"](value):
        assert value[0].isalnum() and value.isascii() and len(value) <= 255
        assert not set(value) - set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._+:-")


def test_format_name_and_broken_check():
    with pytest.raises(ValueError):
        Format("Bad-Name", lambda v: True)

    def boom(value):
        raise RuntimeError("bug in a plugin")

    assert Format("boom", boom)("x") is False


def test_registry_forms():
    assert format_registry(None).keys() == FORMATS.keys()
    custom = Format("only", lambda v: v == "ok")
    assert format_registry([custom]) == {"only": custom}
    assert format_registry({"only": custom}) == {"only": custom}
    with pytest.raises(TypeError):
        format_registry(["shellsafe"])
