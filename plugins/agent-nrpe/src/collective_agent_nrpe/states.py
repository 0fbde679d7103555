"""Nagios states and what the client and the node share about them (no agent code here).

- :func:`state_name`, :func:`worst`: exit codes 0-3 and which one wins for a fleet;
- :func:`nagios_states`: the ``nagios_states(exitcode)`` aggregate;
- :func:`split_args`, :func:`arguments_ok`: the ``nrpe_arguments`` input format.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")

#: ``args`` is ``!``-separated, as check_nrpe's ``-a`` and Nagios service definitions write it.
ARG_SEPARATOR = "!"
#: At most this many arguments in one call.
MAX_ARGS = 16
#: One argument: printable ASCII without shell or quoting characters, not starting with ``-``
#: (it is one argv token, so it can never become an option of the check), at most 128 long.
ARGUMENT = re.compile(r"[A-Za-z0-9_.,:%@+=/~^][A-Za-z0-9_.,:%@+=/~^ -]{0,127}", re.ASCII)
ARGUMENTS_DESCRIPTION = (
    "up to 16 arguments separated by '!', each at most 128 characters of letters, digits, "
    "space and _.,:%@+=/~^- (not starting with '-' or a space)"
)


def state_name(code: Any) -> str:
    """``2 -> "CRITICAL"``; anything that is not 0-3 is ``UNKNOWN``."""
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 3:
        return "UNKNOWN"
    return STATES[code]


def worst(codes: Iterable[int]) -> int:
    """The fleet's state: CRITICAL if any, else the highest code (UNKNOWN above WARNING),
    as MCollective's check-mc-nrpe decides; OK for nothing."""
    found = {c if isinstance(c, int) and 0 <= c <= 3 else UNKNOWN for c in codes}
    if CRITICAL in found:
        return CRITICAL
    return max(found, default=OK)


def split_args(value: str | None) -> list[str]:
    """``"20%!10%"`` -> ``["20%", "10%"]``; None or ``""`` -> ``[]``."""
    if not value:
        return []
    return value.split(ARG_SEPARATOR)


def arguments_ok(value: str) -> bool:
    """True when every ``!``-separated argument matches :data:`ARGUMENT`."""
    if not isinstance(value, str):
        return False
    if value == "":
        return True
    parts = split_args(value)
    return len(parts) <= MAX_ARGS and all(ARGUMENT.fullmatch(p) for p in parts)


def nagios_states(values: list[Any], args: list[Any]) -> Any:
    """Count OK, WARNING, CRITICAL and UNKNOWN (a missing or odd exit code is UNKNOWN),
    always all four, in that order, as ``%10s : %s`` lines."""
    from collective.aggregates import AggregateResult

    counts = dict.fromkeys(STATES, 0)
    for value in values:
        counts[state_name(value)] += 1
    return AggregateResult("collection", counts, format="%10s : %s", ordered=True)
