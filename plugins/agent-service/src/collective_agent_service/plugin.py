"""Entry point of collective-agent-service: hook implementations only.

Imported by every ``mco`` run, so it imports nothing heavy: the agent, the data
plugin and the ``mco service`` command are imported inside the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from collective import hookimpl


@hookimpl
def collective_ddls() -> Iterable[Any]:
    return [files(__package__) / "service.json"]


@hookimpl
def collective_agents() -> Iterable[type]:
    from .agent import Service  # only the daemon pays for this import

    return [Service]


@hookimpl
def collective_data_plugins() -> Iterable[Any]:
    from .data import ServiceData

    return [ServiceData]


@hookimpl
def collective_cli_commands(cli: Any) -> None:
    from .cli import service

    cli.add_command(service)
