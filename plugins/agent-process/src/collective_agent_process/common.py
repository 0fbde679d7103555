"""Small pieces shared by the agent, the client and the data plugin (no psutil here).

- :func:`pattern_ok`: the ``process_pattern`` input format, an allow-list;
- :func:`bytes_to_human`: ``12.234 MiB``;
- :func:`process_summary`: the ``process_summary(pslist)`` aggregate.
"""

from __future__ import annotations

import re
from typing import Any

#: Longest accepted ``pattern`` (MCollective allowed 50; the core caps regexes at 256).
MAX_PATTERN_CHARS = 256

# Printable ASCII without the characters that only ever matter to a shell: no control
# characters (NUL, newline, tab), no ; & ` < > ' " and no non-ASCII. What stays is enough
# for literal command-line fragments (spaces, paths, key=value, --flags after a space)
# and for regular expressions (. * + ? ^ $ | \ ( ) [ ] { }).
_ALLOWED = re.compile(r"[A-Za-z0-9 _.,:@+=/%*?^$|\\()\[\]{}!#~-]*", re.ASCII)
# "$(" and "${" are command and parameter substitution; neither means anything useful
# in a regex ("$" is the end of the string), so they are refused outright.
_SUBSTITUTION = re.compile(r"\$[({]")

PATTERN_DESCRIPTION = (
    "at most 256 printable ASCII characters: letters, digits, space and "
    "_.,:@+=/%*?^$|\\()[]{}!#~- (no ; & ` < > quotes, control characters, $( or ${), "
    "not starting with -"
)


def pattern_ok(value: str) -> bool:
    """True when ``value`` is an acceptable ``pattern`` (the empty string matches everything)."""
    return (
        isinstance(value, str)
        and len(value) <= MAX_PATTERN_CHARS
        and not value.startswith("-")
        and _ALLOWED.fullmatch(value) is not None
        and _SUBSTITUTION.search(value) is None
    )


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def bytes_to_human(number: Any) -> str:
    """``1536 -> '1.500 KiB'`` (MCollective's ``bytes_to_human``, with binary unit names)."""
    if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0:
        return "-"
    if number < 1024:
        return f"{int(number)} B"
    exponent = 0
    value = float(number)
    while value >= 1024 and exponent < len(_UNITS) - 1:
        value /= 1024
        exponent += 1
    return f"{value:.3f} {_UNITS[exponent]}"


def _size(record: Any, key: str) -> int:
    value = record.get(key) if isinstance(record, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def summarize(pslists: list[Any]) -> dict[str, Any]:
    """Matched hosts (replies with at least one process), processes, RSS and VSZ totals."""
    hosts = procs = rss = vsize = 0
    for pslist in pslists:
        if not isinstance(pslist, list) or not pslist:
            continue
        hosts += 1
        procs += len(pslist)
        rss += sum(_size(p, "rss") for p in pslist)
        vsize += sum(_size(p, "vsize") for p in pslist)
    return {"hosts": hosts, "processes": procs, "rss": rss, "vsize": vsize}


def summary_lines(totals: dict[str, Any]) -> list[str]:
    """The four lines users know from ``mco pgrep``, right-aligned on the colon."""
    return [
        f"{'Matched hosts':>17}: {totals['hosts']}",
        f"{'Matched processes':>17}: {totals['processes']}",
        f"{'Resident Size':>17}: {bytes_to_human(totals['rss'])}",
        f"{'Virtual Size':>17}: {bytes_to_human(totals['vsize'])}",
    ]


def process_summary(values: list[Any], args: list[Any]) -> Any:
    """The ``process_summary`` aggregate over the ``pslist`` of every OK reply.

    The core renders ``collection`` results as ``key = count`` sorted by count, which
    cannot show sizes, so this returns a ``numeric`` result whose value is the whole
    pre-formatted block (the core indents the first line; we indent the others).
    """
    from collective.aggregates import AggregateResult

    return AggregateResult("numeric", "\n   ".join(summary_lines(summarize(values))),
                           label="Processes", format="%s")
