"""Pieces shared by the client and the node (standard library only).

- the input formats the DDL names (all allow-lists; none accepts a leading ``-``):
  ``puppet_tags``, ``puppet_variable``, ``puppet_server_address``,
  ``puppet_resource_type``, ``puppet_resource_name``, ``puppet_resource_value``,
  ``puppet_resource``;
- :func:`parse_server`: ``host[:port]`` / ``[v6]:port`` into ``(host, port)``;
- :func:`seconds_to_human`: ``9 minutes 11 seconds`` (MCollective's wording);
- :func:`sparkline` and :func:`spark_row`: the bars of ``mco puppet summary``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

#: one tag as Puppet defines it (``[[:alnum:]_][[:alnum:]_:.-]*``), ASCII only
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_:.-]*"
_TAGS = re.compile(rf"{_TAG}(?:,{_TAG})*", re.ASCII)
#: MCollective's puppet_variable: one letter, or two or more of letters, digits and _
_VARIABLE = re.compile(r"[A-Za-z]|[A-Za-z0-9_]{2,}", re.ASCII)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
#: a resource type: ``file``, ``host``, ``apache::vhost`` (any case; the agent lower-cases)
_TYPE = r"[A-Za-z][A-Za-z0-9_]*(?:::[A-Za-z][A-Za-z0-9_]*)*"
_TYPE_RE = re.compile(_TYPE, re.ASCII)
#: a resource title: a name or an absolute path, no shell or option syntax
_NAME = r"[A-Za-z0-9_/][A-Za-z0-9 _./:@+,=~%-]*"
_NAME_RE = re.compile(_NAME, re.ASCII)
#: a property value: printable ASCII without quotes, backslash, ` $ ; & | < >
_VALUE_RE = re.compile(r"[A-Za-z0-9 _./:@+,=~%#^*?!()\[\]{}-]*", re.ASCII)
_RESOURCE_RE = re.compile(rf"({_TYPE})\[({_NAME})\]", re.ASCII)

MAX_TAGS = 120
MAX_VARIABLE = 50
MAX_SERVER = 255
MAX_TYPE = 50
MAX_NAME = 150
MAX_VALUE = 1024
MAX_RESOURCE = 200

TAGS_DESCRIPTION = ("comma-separated Puppet tags: letters, digits and _ : . - "
                    "(each starting with a letter, digit or _), at most 120 characters")
VARIABLE_DESCRIPTION = "one letter, or letters, digits and _ (at most 50 characters)"
SERVER_DESCRIPTION = ("a host name, IPv4 address or [IPv6] address, with an optional :port "
                      "(1-65535)")
TYPE_DESCRIPTION = "a resource type such as file, host or apache::vhost (at most 50 characters)"
NAME_DESCRIPTION = ("a resource title: letters, digits and _./:@+,=~%- and spaces, starting "
                    "with a letter, digit, _ or /, at most 150 characters")
VALUE_DESCRIPTION = ("printable ASCII without quotes, backslash, ` $ ; & | < > "
                     "(at most 1024 characters)")
RESOURCE_DESCRIPTION = "a resource reference such as file[/srv/www] or host[db]"


def tags_ok(value: str) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TAGS and _TAGS.fullmatch(value) is not None


def variable_ok(value: str) -> bool:
    return (isinstance(value, str) and len(value) <= MAX_VARIABLE
            and _VARIABLE.fullmatch(value) is not None)


def _hostname(value: str) -> bool:
    if not value or len(value) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in value.split("."))


def _port(text: str) -> int | None:
    if not _PORT.fullmatch(text):
        return None
    number = int(text)
    return number if 1 <= number <= 65535 else None


def parse_server(value: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``192.0.2.1:8140``, ``2001:db8::1``, ``[2001:db8::1]:8140``
    into ``(host, port or None)``.

    :raises ValueError: for anything else (with a one-line reason)
    """
    if not isinstance(value, str) or not value or len(value) > MAX_SERVER:
        raise ValueError("empty or longer than 255 characters")
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"{value!r}: missing ']'")
        _ipv6(host)
        if not rest:
            return host, None
        if not rest.startswith(":") or _port(rest[1:]) is None:
            raise ValueError(f"{value!r}: the port must be 1-65535")
        return host, _port(rest[1:])
    if value.count(":") > 1:
        _ipv6(value)
        return value, None
    host, sep, port_text = value.partition(":")
    port = None
    if sep:
        port = _port(port_text)
        if port is None:
            raise ValueError(f"the port {port_text!r} is not a valid puppet server port")
    if not (_ipv4(host) or _hostname(host)) or host[0] == "-":
        raise ValueError(f"the host name {host!r} is not a valid host name")
    return host, port


def _ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _ipv6(value: str) -> None:
    if "%" in value:  # a scope id may hold almost anything
        raise ValueError(f"{value!r}: scoped IPv6 addresses are not accepted")
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IPv6 address") from None


def server_ok(value: str) -> bool:
    try:
        parse_server(value)
    except ValueError:
        return False
    return True


def resource_type_ok(value: str) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TYPE and _TYPE_RE.fullmatch(value) is not None


def resource_name_ok(value: str) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME and _NAME_RE.fullmatch(value) is not None


def resource_value_ok(value: str) -> bool:
    return (isinstance(value, str) and len(value) <= MAX_VALUE and not value.startswith("-")
            and _VALUE_RE.fullmatch(value) is not None)


def parse_resource(value: str) -> tuple[str, str]:
    """``file[/srv/www]`` -> ``("file", "/srv/www")`` (type lower-cased).

    :raises ValueError: when it is not a resource reference
    """
    match = _RESOURCE_RE.fullmatch(value) if isinstance(value, str) and len(value) <= MAX_RESOURCE \
        else None
    if match is None or len(match.group(1)) > MAX_TYPE or len(match.group(2)) > MAX_NAME:
        raise ValueError(f"{str(value)[:60]!r} is not {RESOURCE_DESCRIPTION}")
    return match.group(1).lower(), match.group(2)


def resource_ok(value: str) -> bool:
    try:
        parse_resource(value)
    except ValueError:
        return False
    return True


#: (format name, check, description) of every format this plugin registers
FORMATS: tuple[tuple[str, Any, str], ...] = (
    ("puppet_tags", tags_ok, TAGS_DESCRIPTION),
    ("puppet_variable", variable_ok, VARIABLE_DESCRIPTION),
    ("puppet_server_address", server_ok, SERVER_DESCRIPTION),
    ("puppet_resource_type", resource_type_ok, TYPE_DESCRIPTION),
    ("puppet_resource_name", resource_name_ok, NAME_DESCRIPTION),
    ("puppet_resource_value", resource_value_ok, VALUE_DESCRIPTION),
    ("puppet_resource", resource_ok, RESOURCE_DESCRIPTION),
)


def seconds_to_human(seconds: int) -> str:
    """``3725 -> '1 hours 2 minutes 05 seconds'``, as MCollective's puppet agent says it."""
    seconds = max(int(seconds), 0)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days > 1:
        return f"{days} days {hours} hours {minutes} minutes {seconds:02d} seconds"
    if days == 1:
        return f"{days} day {hours} hours {minutes} minutes {seconds:02d} seconds"
    if hours > 0:
        return f"{hours} hours {minutes} minutes {seconds:02d} seconds"
    if minutes > 0:
        return f"{minutes} minutes {seconds:02d} seconds"
    return f"{seconds:02d} seconds"


TICKS = "▁▂▃▄▅▆▇"


def sparkline(counts: Sequence[int], ticks: str = TICKS) -> str:
    """One tick per bucket, scaled to the largest count (a non-empty bucket shows at least
    the second tick)."""
    if not counts:
        return ""
    top = max(counts)
    if top == min(counts):
        return ticks[0] * len(counts)
    scale = len(ticks) - 1
    out = []
    for count in counts:
        tick = round(count * scale / top) if top else 0
        if count > 0 and tick == 0:
            tick = 1
        out.append(ticks[max(0, min(tick, scale))])
    return "".join(out)


def shorten(number: float) -> str:
    """``1700 -> '1.7k'``, ``2.5 -> '2.5'``."""
    if number >= 1_000_000:
        return f"{number / 1_000_000:0.1f}m"
    if number >= 1000:
        return f"{number / 1000:0.1f}k"
    return f"{number:0.1f}"


def spark_row(values: Sequence[Any], buckets: int = 20) -> str:
    """The distribution of ``values`` in ``buckets`` equal-width buckets between their
    minimum and maximum, with ``min / avg / max``; empty when there are no numbers."""
    numbers = [float(v) for v in values
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return ""
    low, high = min(numbers), max(numbers)
    counts = [0] * buckets
    if high > low:
        width = (high - low) / buckets
        for number in numbers:
            counts[min(int((number - low) / width), buckets - 1)] += 1
    else:
        counts[0] = len(numbers)
    average = sum(numbers) / len(numbers)
    return (f"{sparkline(counts)}  min: {shorten(low):<6} avg: {shorten(average):<6} "
            f"max: {shorten(high):<6}").rstrip()
