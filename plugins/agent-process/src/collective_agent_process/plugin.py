"""Entry point of ``collective-agent-process``: hook implementations only, cheap to import.

``mco`` imports this module on every run, so the agent (and psutil) load lazily.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from collective import hookimpl


@hookimpl
def collective_ddls() -> Iterable[Any]:
    return [files(__package__) / "process.json"]


@hookimpl
def collective_agents() -> Iterable[type]:
    from .agent import Process  # only the daemon pays for this import

    return [Process]


@hookimpl
def collective_formats() -> Iterable[Any]:
    from collective.formats import Format

    from .common import PATTERN_DESCRIPTION, pattern_ok

    return [Format("process_pattern", pattern_ok, PATTERN_DESCRIPTION)]


@hookimpl
def collective_aggregates() -> Iterable[Any]:
    from collective.aggregates import Aggregate

    from .common import process_summary

    return [Aggregate("process_summary", process_summary,
                      "matched hosts, matched processes, resident and virtual size totals")]


@hookimpl
def collective_data_plugins() -> Iterable[Any]:
    from .data import ProcessData

    return [ProcessData]


@hookimpl
def collective_cli_commands(cli: Any) -> None:
    from .cli import pgrep

    cli.add_command(pgrep)
