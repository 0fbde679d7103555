"""``mco service NAME status|start|stop|restart|enable|disable [filters]``.

As MCollective's ``service`` application: the action may also come first
(``mco service restart nginx``); one line per node (``node: running``, or the
failure), then ``Summary of Service Status`` (``Summary of Boot Status`` for
enable/disable) and ``Finished processing N / M hosts``; the exit status is the
one of ``mco rpc``. Only click is imported at module level.
"""

from __future__ import annotations

import time
from typing import Any

import click

from collective.cli.discovery_opts import discovery_options
from collective.cli.options import common_options, filter_options, guarded, make_client

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
    from collective.cli.app import call, finish, print_json

    name, action = order(first, second)
    started = time.monotonic()
    with make_client(config_path, collective) as client:
        act = client.ddl("service").actions[action]
        result = call(client, "service", action, {"service": name}, flt=flt, discovery=discovery,
                      timeout=timeout, discovery_timeout=discovery_timeout,
                      progress=not (no_progress or as_json))
        aggregates = client.pm.aggregates()
    if as_json:
        print_json(result)
    output = "enabled" if action in ("enable", "disable") else "status"
    replies = sorted(result.replies, key=lambda r: r.sender)
    width = max((len(r.sender) for r in replies), default=0) + 3
    for reply in replies:
        click.echo(node_line(reply, output, width))
    click.echo("")
    finish(result, act, aggregates, started, verbose)
