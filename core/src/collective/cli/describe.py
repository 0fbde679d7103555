"""``mco describe-filter``: say in plain English what a filter selects (MCollective's
``mco describe_filter``). Nothing is sent; the filter is only parsed."""

from __future__ import annotations

import sys
from typing import Any

import click

from .options import filter_options


def filter_lines(flt: Any) -> list[str]:
    """One heading per kind of filter, each followed by indented English lines."""
    from ..compound import describe, parse_cached
    from ..matching import is_regex

    lines: list[str] = []
    for text in flt.compound:
        lines.append(f"-S Query expression: {text}")
        lines.append(f"  {describe(parse_cached(text))}")
    if flt.fact:
        lines.append("-F filter expands to the following fact comparisons:")
        for item in flt.fact:
            lines.append(f"  {item.fact} {item.operator} {item.value}")
    if flt.cf_class:
        lines.append("-C filter expands to the following class checks:")
        for klass in flt.cf_class:
            lines.append(f"  Class matches {klass}" if is_regex(klass)
                         else f"  Class '{klass}' is present")
    if flt.agent:
        lines.append("-A filter expands to the following agent checks:")
        for agent in flt.agent:
            lines.append(f"  Agent matches {agent}" if is_regex(agent)
                         else f"  Agent '{agent}' is present")
    if flt.identity:
        lines.append("-I filter expands to the following identity checks (any one matches):")
        for identity in flt.identity:
            lines.append(f"  Identity matches {identity}" if is_regex(identity)
                         else f"  Identity is '{identity}'")
    if not lines:
        lines.append("No filter given: every node matches")
    elif sum(map(bool, (flt.compound, flt.fact, flt.cf_class, flt.agent, flt.identity))) > 1 \
            or len(flt.compound) > 1:
        lines.append(f"All of the above must match: {flt.describe()}")
    return lines


@click.command("describe-filter")
@filter_options
def describe_filter(flt: Any, collective: str | None, discovery_timeout: float | None) -> None:
    """Describe what the -F -C -I -A -W -S filter options select, without sending anything.

    \b
    mco describe-filter -S "(role=web or role=cache) and location=uk"
    mco describe-filter -F "os.family=debian" -C /^role::/
    """
    click.echo("\n".join(filter_lines(flt)))
    sys.exit(0)
