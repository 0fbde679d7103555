"""Building blocks for CLI applications: ``mco rpc`` and the agents' own commands
(``mco service``, ``mco package``, ``mco pgrep``, ...).

A command parses its arguments, then::

    result = call(client, "service", "status", {"service": name}, flt=flt, discovery=discovery,
                  timeout=timeout, discovery_timeout=discovery_timeout, progress=not no_progress)
    ...print one line per node...
    finish(result, act, client.pm.aggregates(), started, verbose)

``call`` draws the progress bar (on a terminal only); ``finish`` prints the DDL's
summaries, the stats block with ``-v``, ``Finished processing`` and ``No response
from``, and exits with MCollective's status.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..client.results import Result
from .options import Progress


def call(client: Any, agent: str, action: str, data: dict[str, Any], *, flt: Any,
         discovery: dict[str, Any], timeout: float | None = None,
         discovery_timeout: float | None = None, progress: bool = True,
         on_reply: Any = None, **options: Any) -> Result:
    """``client.rpc`` with the CLI's discovery options and a progress bar.

    Exits with status 1 and MCollective's message when discovery found nothing.
    """
    bar = Progress(enabled=progress)

    def tick(reply: Any) -> None:
        bar.tick()
        if on_reply is not None:
            on_reply(reply)

    result: Result = client.rpc(
        agent, action, data, filter=flt, nodes=discovery["nodes"], timeout=timeout,
        discovery_timeout=discovery_timeout, discovery_method=discovery["method"],
        discovery_options=discovery["options"], on_reply=tick,
        on_discovered=lambda nodes: bar.start(len(nodes)), **options)
    bar.finish()
    if result.stats.stale:
        click.echo(f"Warning: {len(result.stats.stale)} node(s) missed their registrations and may be "
                   f"down: {', '.join(result.stats.stale)}", err=True)
    if result.stats.discovery_performed and not result.stats.expected:
        click.echo("No request sent, we did not discover any nodes.", err=True)
        sys.exit(1)
    return result


def print_json(result: Result, replies: list[Any] | None = None) -> None:
    """``--json``: one document, then exit with the call's status."""
    from .output import result_json

    click.echo(result_json(result, replies))
    sys.exit(result.exit_code())


def finish(result: Result, act: Any, aggregates: dict[str, Any], started: float,
           verbose: bool = False, caption: str = "rpc stats") -> None:
    """Summaries, ``-v`` stats (headed ``---- CAPTION ----``), ``Finished processing``,
    ``No response from``; then exit."""
    from .output import aggregate_text, finished_line, no_response_text, stats_block

    for agg in act.aggregates:
        click.echo(aggregate_text(agg["function"], list(agg.get("args", [])), result.replies,
                                  act.outputs, aggregates, agg.get("format")))
    if verbose:
        click.echo(stats_block(result, caption))
    click.echo(finished_line(result, time.monotonic() - started))
    click.echo(no_response_text(result), nl=False)
    sys.exit(result.exit_code())
