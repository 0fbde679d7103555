"""``mco service NAME status|start|stop|restart|enable|disable [filters]``.

As MCollective's ``service`` application: the action may also come first
(``mco service restart nginx``); one line per node (``node: running``, or the
failure), then ``Summary of Service Status`` (``Summary of Boot Status`` for
enable/disable) and ``Finished processing N / M hosts``; the exit status is the
one of ``mco rpc``. Only click is imported at module level.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from collective.cli.discovery_opts import discovery_options
from collective.cli.options import Progress, common_options, filter_options, guarded, make_client

ACTIONS = ("status", "start", "stop", "restart", "enable", "disable")


def order(first: str, second: str) -> tuple[str, str]:
    """``(service, action)`` from ``NAME ACTION`` or ``ACTION NAME`` (the action first
    wins when both words are actions, as in MCollective)."""
    if first in ACTIONS:
        return second, first
    if second in ACTIONS:
        return first, second
    raise click.UsageError(f"Unknown action {second!r}: use one of {', '.join(ACTIONS)}")


def node_line(reply: Any, output: str, width: int) -> str:
    """``node-001: running``, or ``node-001: Request Aborted: <why>`` for a failure."""
    from collective.client.results import STATUS_LABELS

    if reply.ok:
        return f"{reply.sender:>{width}}: {reply.data.get(output, 'unknown')}"
    label = STATUS_LABELS.get(reply.statuscode, "Unknown Request Status")
    return (f"{reply.sender:>{width}}: {click.style(label, fg='red')}: "
            f"{click.style(reply.statusmsg, fg='yellow')}")


@click.command(name="service")
@click.argument("first", metavar="SERVICE")
@click.argument("second", metavar="ACTION")
@filter_options
@discovery_options
@common_options
@guarded("service")
def service(first: str, second: str, config_path: str | None, flt: Any, collective: str | None,
            discovery_timeout: float | None, discovery: dict[str, Any], timeout: float | None,
            as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Manage SERVICE on the matching nodes: ACTION is status, start, stop, restart,
    enable or disable.

    \b
    mco service nginx status
    mco service nginx restart -F role=web
    mco service restart nginx -I node-001
    """
    from collective.cli.output import (
        aggregate_text,
        finished_line,
        no_response_text,
        result_json,
        stats_block,
    )

    name, action = order(first, second)
    started = time.monotonic()
    with make_client(config_path, collective) as client:
        act = client.ddl("service").actions[action]
        progress = Progress(enabled=not (no_progress or as_json))
        result = client.rpc(
            "service", action, {"service": name}, filter=flt, nodes=discovery["nodes"],
            timeout=timeout, discovery_timeout=discovery_timeout,
            discovery_method=discovery["method"], discovery_options=discovery["options"],
            on_reply=lambda _reply: progress.tick(),
            on_discovered=lambda nodes: progress.start(len(nodes)))
        progress.finish()
        aggregates = client.pm.aggregates()
    if result.stats.discovery_performed and not result.stats.expected:
        click.echo("No request sent, we did not discover any nodes.", err=True)
        sys.exit(1)
    if as_json:
        click.echo(result_json(result))
        sys.exit(result.exit_code())
    output = "enabled" if action in ("enable", "disable") else "status"
    replies = sorted(result.replies, key=lambda r: r.sender)
    width = max((len(r.sender) for r in replies), default=0) + 3
    for reply in replies:
        click.echo(node_line(reply, output, width))
    click.echo("")
    for agg in act.aggregates:
        click.echo(aggregate_text(agg["function"], list(agg.get("args", [])), result.replies,
                                  act.outputs, aggregates, agg.get("format")))
    if verbose:
        click.echo(stats_block(result))
    click.echo(finished_line(result, time.monotonic() - started))
    click.echo(no_response_text(result), nl=False)
    sys.exit(result.exit_code())
