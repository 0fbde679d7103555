"""Named input formats that DDL inputs reference with ``"format": "NAME"``.

Every format is an *allow-list*: it says what a value may look like, never what it
may not. MCollective's and Choria's ``shellsafe`` was a deny-list that let ``\\n``,
``&``, ``(``, quotes and a leading ``-`` through (docs/security.md S8); ours is not, and a
leading ``-`` is refused everywhere so a value can never become an option of the
command it is passed to (``-oDpkg::Pre-Invoke::=...``, ``--help``).

Plugins add formats through the ``collective_formats`` hook; the DDL loader builds a
:class:`jsonschema.FormatChecker` from the registry it is given.

Regular expressions here are matched with :func:`re.fullmatch` and :data:`re.ASCII`:
``$`` would also match before a trailing newline, and ``\\d`` / ``\\w`` would accept
non-ASCII digits and letters.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .names import FACT_NAME, FACT_NAME_MAX_CHARS, IDENTITY

__all__ = ["BUILTIN_FORMATS", "Format", "format_registry", "regex_check"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)


@dataclass(frozen=True)
class Format:
    """A named check for string inputs.

    :param name: what DDL inputs write in ``"format"`` (lower case, ``[a-z][a-z0-9_]*``)
    :param check: returns True when the string is acceptable; it must not raise,
        but if it does the value is treated as invalid
    :param description: one line for error messages and ``mco plugin doc``
    """

    #: the name DDL inputs use
    name: str
    #: ``check(value) -> bool``
    check: Callable[[str], bool]
    #: shown to users when a value is refused
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid format name {self.name!r}: use [a-z][a-z0-9_]*")

    def __call__(self, value: object) -> bool:
        """True when ``value`` is a string the check accepts (never raises)."""
        if not isinstance(value, str):
            return False
        try:
            return bool(self.check(value))
        except Exception:  # a buggy plugin check refuses rather than crashes the node
            return False


def regex_check(pattern: str, max_length: int | None = None) -> Callable[[str], bool]:
    """A check that the whole string matches ``pattern`` (ASCII classes, no ``$`` newline hole)."""
    compiled = re.compile(pattern, re.ASCII)

    def check(value: str) -> bool:
        if max_length is not None and len(value) > max_length:
            return False
        return compiled.fullmatch(value) is not None

    return check


#: Letters, digits and `` ._,:@+=/%-``; must start with a letter or digit. No shell
#: metacharacters (`` ` $ ; | & > < ( ) ' " \\ * ? [ ] ~ ! # { } ``), no control
#: characters, no leading ``-`` or ``.``.
SHELLSAFE_RE = r"[A-Za-z0-9][A-Za-z0-9 ._,:@+=/%-]*"
#: systemd units, Debian/RPM package names, with epochs and ``@`` templates.
SERVICE_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9@._+:-]{0,254}"
#: node identities: the wire grammar, :data:`collective.names.IDENTITY` (pattern text).
IDENTITY_RE = IDENTITY
#: a fact name or a dotted path into nested facts (``os.release.major``, ``interfaces.0``):
#: :data:`collective.names.FACT_NAME` (pattern text).
FACT_NAME_RE = FACT_NAME
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def _ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _ipv6(value: str) -> bool:
    # Python accepts a scope id after "%" made of almost any characters
    # ("fe80::1%x; touch /tmp/pwn"), so scoped addresses are refused.
    if "%" in value:
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


def _ipaddress(value: str) -> bool:
    return _ipv4(value) or _ipv6(value)


def _hostname(value: str) -> bool:
    """RFC 1123 host name: dot-separated labels of 1-63 letters, digits and inner hyphens."""
    if not value or len(value) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in value.split("."))


BUILTIN_FORMATS: tuple[Format, ...] = (
    Format("shellsafe", regex_check(SHELLSAFE_RE, max_length=1024),
           "letters, digits, spaces and ._,:@+=/%- only, starting with a letter or digit"),
    Format("service_name", regex_check(SERVICE_NAME_RE),
           "a service name: letters, digits and @._+:- starting with a letter or digit, at most 255 characters"),
    Format("package_name", regex_check(SERVICE_NAME_RE),
           "a package name: letters, digits and @._+:- starting with a letter or digit, at most 255 characters"),
    Format("ipv4", _ipv4, "an IPv4 address such as 192.0.2.1"),
    Format("ipv6", _ipv6, "an IPv6 address such as 2001:db8::1 (no scope id)"),
    Format("ipaddress", _ipaddress, "an IPv4 or IPv6 address"),
    Format("hostname", _hostname, "an RFC 1123 host name"),
    Format("identity", regex_check(IDENTITY_RE),
           "a node identity: letters, digits and _.- starting with a letter or digit, at most 64 characters"),
    Format("fact_name", regex_check(FACT_NAME_RE, max_length=FACT_NAME_MAX_CHARS),
           "a fact name or dotted path: letters, digits, _ and - separated by dots, at most 128 characters"),
)


def format_registry(formats: Mapping[str, Format] | Iterable[Format] | None = None) -> dict[str, Format]:
    """Normalise ``formats`` (a registry, a list, or None for the built-ins) to ``{name: Format}``."""
    if formats is None:
        return {f.name: f for f in BUILTIN_FORMATS}
    if isinstance(formats, Mapping):
        items = list(formats.values())
    else:
        items = list(formats)
    registry: dict[str, Format] = {}
    for item in items:
        if not isinstance(item, Format):
            raise TypeError(f"not a collective.formats.Format: {item!r}")
        registry[item.name] = item
    return registry
