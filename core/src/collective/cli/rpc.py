"""``mco rpc AGENT ACTION key=value ...``: call any action, validated by its DDL."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from .options import (
    Progress,
    common_options,
    fail,
    filter_options,
    guarded,
    make_client,
)


def parse_arguments(pairs: tuple[str, ...]) -> dict[str, str]:
    args: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"Could not parse argument {pair!r}: expected key=value")
        args[key] = value
    return args


@click.command()
@click.argument("agent")
@click.argument("action")
@click.argument("arguments", nargs=-1)
@filter_options
@common_options
@click.option("--display", type=click.Choice(["ok", "failed", "all", "none"]), default=None,
              help="Which replies to print (default: the DDL's display policy)")
@guarded("rpc")
def rpc(agent: str, action: str, arguments: tuple[str, ...], config_path: str | None,
        flt: Any, collective: str | None,
        discovery_timeout: float | None, timeout: float | None, as_json: bool, verbose: bool,
        no_progress: bool, display: str | None) -> None:
    """Call AGENT's ACTION on the matching nodes with key=value ARGUMENTS."""
    from ..ddl import RequestError
    from .output import (
        aggregate_text,
        finished_line,
        no_response_text,
        node_text,
        result_json,
        should_show,
        stats_block,
    )

    started = time.monotonic()
    with make_client(config_path, collective) as client:
        ddl = client.ddl(agent)
        if action not in ddl.actions:
            fail("rpc", f"Attempted to call action {action} for {agent} but it's not declared in the DDL")
        act = ddl.actions[action]
        try:
            data = act.convert_cli(parse_arguments(arguments))
        except RequestError as exc:
            fail("rpc", str(exc))
        progress = Progress(enabled=not (no_progress or as_json))
        result = client.rpc(agent, action, data, filter=flt, timeout=timeout,
                            discovery_timeout=discovery_timeout, on_reply=progress.tick,
                            on_discovered=lambda nodes: progress.start(len(nodes)))
        progress.finish()
    if result.stats.discovery_performed and not result.stats.expected:
        click.echo("No request sent, we did not discover any nodes.", err=True)
        sys.exit(1)
    if as_json:
        click.echo(result_json(result))
        sys.exit(result.exit_code())
    policy = display or act.display
    shown = False
    for reply in result.replies:
        if should_show(reply, policy) or verbose:
            click.echo(node_text(reply, act.outputs, verbose) + "\n")
            shown = True
    if not shown and result.replies:
        click.echo("")
    for agg in act.aggregates:
        click.echo(aggregate_text(agg["function"], list(agg.get("args", [])), result.replies,
                                  act.outputs))
    if verbose:
        click.echo(stats_block(result))
    click.echo(finished_line(result, time.monotonic() - started))
    click.echo(no_response_text(result), nl=False)
    sys.exit(result.exit_code())
