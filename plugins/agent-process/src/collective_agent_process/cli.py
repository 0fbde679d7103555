"""``mco pgrep PATTERN [-z] [--regex] [--user USER] [filters]`` (MCollective ``pgrep``).

Prints, per node with matches, a ``PID USER VSZ COMMAND`` table, then the
``process_summary`` block (Matched hosts, Matched processes, Resident Size, Virtual
Size) and the ``Finished processing`` line. Nodes that failed are shown with their
status; nodes without matches only with ``-v``.
"""

from __future__ import annotations

from typing import Any

import click

from collective.cli.discovery_opts import discovery_options
from collective.cli.options import common_options, filter_options, guarded, make_client

#: COMMAND column width without -v (the full command line with -v)
COMMAND_CHARS = 100


def process_table(pslist: list[Any], verbose: bool = False) -> list[str]:
    """The MCollective ``pgrep`` table lines for one node."""
    from .common import bytes_to_human

    lines = ["     PID USER        VSZ              COMMAND"]
    for proc in pslist:
        if not isinstance(proc, dict):
            continue
        command = str(proc.get("cmdline") or "")
        if not verbose and len(command) > COMMAND_CHARS:
            command = command[: COMMAND_CHARS - 3] + "..."
        user = str(proc.get("username") or "?")[:10]
        pid = proc.get("pid")
        lines.append(f"   {pid if isinstance(pid, int) else '?':>5} {user:<10}  "
                     f"{bytes_to_human(proc.get('vsize')):<16} {command}")
    return lines


@click.command()
@click.argument("pattern", default="", required=False)
@click.option("-z", "--just-zombies", "just_zombies", is_flag=True, help="Only zombie processes")
@click.option("--regex", "use_regex", is_flag=True,
              help="PATTERN is a regular expression (default: a literal substring)")
@click.option("--user", "user", default=None, metavar="USER", help="Only processes of this user")
@filter_options
@discovery_options
@common_options
@guarded("pgrep")
def pgrep(pattern: str, just_zombies: bool, use_regex: bool, user: str | None,
          config_path: str | None, flt: Any, collective: str | None,
          discovery_timeout: float | None, discovery: dict[str, Any], timeout: float | None,
          as_json: bool, verbose: bool, no_progress: bool) -> None:
    """List the processes whose command line contains PATTERN on every matching node.

    PATTERN is a literal substring (regex metacharacters match themselves) unless
    --regex is given; an empty PATTERN lists every process. To find an option such
    as -c, start the pattern with a space: ' -c'.

    \b
    mco pgrep nginx
    mco pgrep -z
    mco pgrep --regex '^/usr/sbin/(sshd|cron)' -F role=web
    mco pgrep java --user tomcat -I node-001
    """
    import time

    from collective.cli.app import call, finish, print_json
    from collective.cli.output import (
        node_text,
    )

    started = time.monotonic()
    data: dict[str, Any] = {"pattern": pattern, "regex": use_regex, "just_zombies": just_zombies}
    if user is not None:
        data["user"] = user
    with make_client(config_path, collective) as client:
        act = client.ddl("process").actions["list"]
        result = call(client, "process", "list", data, flt=flt, discovery=discovery,
                      timeout=timeout, discovery_timeout=discovery_timeout,
                      progress=not (no_progress or as_json))
        aggregates = client.pm.aggregates()
    if as_json:
        print_json(result)
    for reply in sorted(result.replies, key=lambda r: r.sender):
        if not reply.ok:
            click.echo(node_text(reply, act.outputs, verbose) + "\n")
            continue
        pslist = reply.data.get("pslist") or []
        if not pslist and not verbose:
            continue
        click.echo(reply.sender)
        click.echo("\n".join(process_table(pslist, verbose)) if pslist else "   No matching processes")
        click.echo("")
    finish(result, act, aggregates, started, verbose)
