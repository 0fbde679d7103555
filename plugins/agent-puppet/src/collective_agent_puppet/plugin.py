"""Entry point of collective-agent-puppet: hook implementations only.

Imported by every ``mco`` run, so it imports nothing heavy: the agent, the data plugins,
the formats and the ``mco puppet`` command are imported inside the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from collective import hookimpl


@hookimpl
def collective_ddls() -> Iterable[Any]:
    return [files(__package__) / "puppet.json"]


@hookimpl
def collective_agents() -> Iterable[type]:
    from .agent import Puppet  # only the daemon pays for this import

    return [Puppet]


@hookimpl
def collective_formats() -> Iterable[Any]:
    from collective.formats import Format

    from .common import FORMATS

    return [Format(name, check, description) for name, check, description in FORMATS]


@hookimpl
def collective_data_plugins() -> Iterable[Any]:
    from .data import PuppetData, ResourceData

    return [PuppetData, ResourceData]


@hookimpl
def collective_cli_commands(cli: Any) -> None:
    from .cli import puppet

    cli.add_command(puppet)
