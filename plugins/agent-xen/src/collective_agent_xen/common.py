"""Small pieces shared by the client, the agent and the data plugin (no libvirt here).

- :func:`domain_ok` / :func:`destination_ok`: the ``xen_domain`` and ``xen_destination``
  input formats, both allow-lists that never accept a leading ``-``;
- :data:`STATES`: the domain state names every provider reports;
- :func:`state_counts` / :func:`domain_states`: the per-host and fleet-wide summaries
  of ``list`` (the ``domain_states`` aggregate).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Any

#: A domain name: a letter or digit, then letters, digits and ``_.-``; at most 64
#: characters. Xen itself allows more, but nothing here ever needs quoting, and a
#: name can never be read as an option (``-x``) or a path (``/``).
DOMAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
DOMAIN_DESCRIPTION = ("a domain name: letters, digits and _.- starting with a letter or digit, "
                      "at most 64 characters")
DESTINATION_DESCRIPTION = ("a destination host: an RFC 1123 host name, or an IPv4 or IPv6 "
                           "address (no scope id)")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)

#: The state names, in the order summaries list them (libvirt's ``virDomainState``
#: names; the xl provider maps ``xl list`` flags onto the same words).
STATES = ("running", "blocked", "paused", "shutdown", "shutoff", "crashed", "pmsuspended",
          "dying", "nostate")
#: States in which a domain exists on the hypervisor (it has an id and uses memory).
ACTIVE_STATES = frozenset({"running", "blocked", "paused", "shutdown", "crashed",
                           "pmsuspended", "dying"})
#: The control domain: never shut down, destroyed, paused or migrated by this agent.
CONTROL_DOMAIN = "Domain-0"
#: Seconds every action but ``migrate`` may take on the node (the DDL timeout, 300 s,
#: is for ``migrate``); ``mco xen`` waits :data:`QUICK_WAIT` for those actions.
QUICK_BUDGET = 110.0
QUICK_WAIT = QUICK_BUDGET + 10.0


def domain_ok(value: object) -> bool:
    """True when ``value`` is an acceptable domain name."""
    return isinstance(value, str) and DOMAIN_RE.fullmatch(value) is not None


def _hostname(value: str) -> bool:
    if not value or len(value) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in value.split("."))


def destination_ok(value: object) -> bool:
    """True for a host name (RFC 1123 labels) or an unscoped IPv4/IPv6 address.

    xl hands the destination to ``sh -c "exec ssh HOST xl migrate-receive"``, so this
    allow-list is what keeps shell syntax out of it: no spaces, quotes, ``;``, ``$``,
    ``/``, ``@`` or a leading ``-`` can pass.
    """
    if not isinstance(value, str) or not value or value.startswith("-"):
        return False
    if _hostname(value):
        return True
    if "%" in value:  # "fe80::1%eth0; id" parses as a scoped address in Python
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_domain(value: object) -> str:
    """Return ``value`` if it is a valid domain name, else raise :class:`ValueError`."""
    if not domain_ok(value):
        raise ValueError(f"invalid domain name {str(value)[:70]!r}: {DOMAIN_DESCRIPTION}")
    return str(value)


def state_counts(domains: Any) -> dict[str, int]:
    """``{state: count}`` over one host's domain records, in :data:`STATES` order."""
    counts = Counter(str(d.get("state") or "nostate") for d in domains or []
                     if isinstance(d, dict))
    ordered = {state: counts.pop(state) for state in STATES if state in counts}
    ordered.update(sorted(counts.items()))
    return ordered


def describe_counts(counts: dict[str, int]) -> str:
    """``3 domains: 1 running, 1 paused, 1 shutoff`` (``no domains`` when empty)."""
    total = sum(counts.values())
    if not total:
        return "no domains"
    noun = "domain" if total == 1 else "domains"
    return f"{total} {noun}: " + ", ".join(f"{n} {state}" for state, n in counts.items())


def domain_states(values: list[Any], args: list[Any]) -> Any:
    """The ``domain_states(domains)`` aggregate: every domain's state counted across
    the OK replies, listed in :data:`STATES` order (not by count)."""
    from collective.aggregates import AggregateResult

    total: Counter[str] = Counter()
    for domains in values:
        if isinstance(domains, list):
            total.update(state_counts(domains))
    ordered = state_counts([{"state": s} for s, n in total.items() for _ in range(n)])
    return AggregateResult("collection", ordered, ordered=True)
