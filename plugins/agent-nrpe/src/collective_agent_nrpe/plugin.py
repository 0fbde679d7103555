"""Entry point of collective-agent-nrpe: hook implementations only.

Imported by every ``mco`` run, so it imports nothing heavy: the agent, the data
plugin and the ``mco nrpe`` command are imported inside the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from collective import hookimpl


@hookimpl
def collective_ddls() -> Iterable[Any]:
    return [files(__package__) / "nrpe.json"]


@hookimpl
def collective_agents() -> Iterable[type]:
    from .agent import Nrpe  # only the daemon pays for this import

    return [Nrpe]


@hookimpl
def collective_formats() -> Iterable[Any]:
    from collective.formats import Format

    from .states import ARGUMENTS_DESCRIPTION, arguments_ok

    return [Format("nrpe_arguments", arguments_ok, ARGUMENTS_DESCRIPTION)]


@hookimpl
def collective_aggregates() -> Iterable[Any]:
    from collective.aggregates import Aggregate

    from .states import nagios_states

    return [Aggregate("nagios_states", nagios_states,
                      "counts of OK, WARNING, CRITICAL and UNKNOWN exit codes", failed_replies=True)]


@hookimpl
def collective_data_plugins() -> Iterable[Any]:
    from .data import NrpeData

    return [NrpeData]


@hookimpl
def collective_cli_commands(cli: Any) -> None:
    from .cli import nrpe  # click only; the client is imported inside the command

    cli.add_command(nrpe)
