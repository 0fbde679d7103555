"""Entry point of collective-agent-package: hook implementations only.

Imported by every ``mco`` run and by the daemon, so it imports nothing heavy: the
agent, its providers and the ``mco package`` command load inside the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from collective import hookimpl


@hookimpl
def collective_ddls() -> Iterable[Any]:
    return [files(__package__) / "package.json"]


@hookimpl
def collective_agents() -> Iterable[type]:
    from .agent import Package  # only the daemon pays for this import

    return [Package]


@hookimpl
def collective_cli_commands(cli: Any) -> None:
    from .cli import package  # click only; the client is imported inside the command

    cli.add_command(package)


@hookimpl
def collective_data_plugins() -> Iterable[Any]:
    from .data import PackageData

    return [PackageData]
