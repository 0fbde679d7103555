"""``mco package [PACKAGE] [ACTION]``: MCollective's package application.

Only click and core's option decorators are imported here; the client and output
helpers are imported inside the command body.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from collective.cli.discovery_opts import discovery_options
from collective.cli.options import common_options, filter_options, guarded, make_client
from collective.cli.rpc import orchestration_options

__all__ = ["ACTIONS", "CHANGES", "PROMPT", "node_line", "package", "split_arguments"]

#: the actions ``mco package`` runs (others: ``mco rpc package count`` ...)
ACTIONS = ("status", "install", "update", "uninstall", "purge")
#: actions that change nodes, and so ask for confirmation without a filter
CHANGES = ("install", "update", "uninstall", "purge")
PROMPT = "Do you really want to operate on packages unfiltered? (y/n): "


def split_arguments(first: str, second: str) -> tuple[str, str]:
    """``(package, action)`` from ``PACKAGE ACTION`` or ``ACTION PACKAGE`` (MCollective
    accepts both; an action word in first place wins)."""
    if first in ACTIONS:
        return second, first
    if second in ACTIONS:
        return first, second
    raise click.UsageError(f"Action has to be one of {', '.join(ACTIONS)}")


def confirmed() -> bool:
    """Ask on stdout, read one line from stdin; only y or yes (any case) proceeds."""
    click.echo(PROMPT, nl=False)
    sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


@click.command()
@click.argument("first", metavar="PACKAGE")
@click.argument("second", metavar="ACTION")
@click.option("--version", "version", default=None, metavar="VERSION",
              help="install: this version of the package")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation without a filter")
@filter_options
@discovery_options
@orchestration_options
@common_options
@guarded("package")
def package(first: str, second: str, version: str | None, yes: bool, config_path: str | None,
            flt: Any, collective: str | None, discovery_timeout: float | None,
            discovery: dict[str, Any], batch: str | None, batch_sleep: float | None,
            batch_mode: str, limit: str | None, one: bool, limit_seed: int | None,
            timeout: float | None, as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Manage a PACKAGE on the matching nodes: ACTION is status, install, update,
    uninstall or purge.

    \b
    mco package nginx status
    mco package nginx install --version 1.22.1-9 -F role=web
    mco package nginx update -I node-001 --batch 1
    mco package nginx purge -C webserver --yes

    A change without any filter asks "Do you really want to operate on packages
    unfiltered? (y/n)" first, unless --yes.
    """
    from collective.cli.app import call, finish, print_json

    pkg, act_name = split_arguments(first, second)
    if version is not None and act_name != "install":
        raise click.UsageError("--version only applies to install")
    data: dict[str, Any] = {"package": pkg}
    if version is not None:
        data["version"] = version
    unfiltered = flt.is_empty() and discovery["nodes"] is None
    if act_name in CHANGES and unfiltered and not yes and not confirmed():
        click.echo("Nothing was sent.", err=True)
        sys.exit(1)
    started = time.monotonic()
    with make_client(config_path, collective) as client:
        act = client.ddl("package").actions[act_name]
        result = call(
            client, "package", act_name, data, flt=flt, discovery=discovery, timeout=timeout,
            discovery_timeout=discovery_timeout, progress=not (no_progress or as_json),
            limit=1 if one else limit, limit_seed=limit_seed,
            batch_size=batch if batch is not None else client.config["rpc"].get("batch_size"),
            batch_sleep=batch_sleep if batch_sleep is not None else client.config["rpc"].get("batch_sleep", 1.0),
            batch_mode=batch_mode)
        registry = client.pm.aggregates()
    if as_json:
        print_json(result)
    for reply in sorted(result.replies, key=lambda r: r.sender):
        click.echo(node_line(reply, verbose))
    click.echo("")
    finish(result, act, registry, started, verbose)


def node_line(reply: Any, verbose: bool = False) -> str:
    """``%-40s version = NAME-ENSURE`` for a success, ``%-40s error = MESSAGE`` otherwise."""
    if not reply.ok:
        return f"{reply.sender:<40} error = {click.style(reply.statusmsg, fg='red')}"
    line = f"{reply.sender:<40} version = {reply.data.get('name')}-{reply.data.get('ensure')}"
    output = reply.data.get("output")
    if verbose and output:
        line += "\n" + "\n".join(f"    {text}" for text in str(output).splitlines())
    return line

