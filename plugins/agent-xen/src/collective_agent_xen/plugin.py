"""Entry point of ``collective-agent-xen``: hook implementations only, cheap to import.

``mco`` imports this module on every run, so the agent, the providers (and libvirt),
the data plugin and the ``mco xen`` command are imported inside the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from collective import hookimpl


@hookimpl
def collective_ddls() -> Iterable[Any]:
    return [files(__package__) / "xen.json"]


@hookimpl
def collective_agents() -> Iterable[type]:
    from .agent import Xen  # only the daemon pays for this import

    return [Xen]


@hookimpl
def collective_formats() -> Iterable[Any]:
    from collective.formats import Format

    from .common import DESTINATION_DESCRIPTION, DOMAIN_DESCRIPTION, destination_ok, domain_ok

    return [Format("xen_domain", domain_ok, DOMAIN_DESCRIPTION),
            Format("xen_destination", destination_ok, DESTINATION_DESCRIPTION)]


@hookimpl
def collective_aggregates() -> Iterable[Any]:
    from collective.aggregates import Aggregate

    from .common import domain_states

    return [Aggregate("domain_states", domain_states,
                      "count of each domain state over every host's domain list")]


@hookimpl
def collective_data_plugins() -> Iterable[Any]:
    from .data import XenData

    return [XenData]


@hookimpl
def collective_cli_commands(cli: Any) -> None:
    from .cli import xen

    cli.add_command(xen)
