"""``mco nrpe CHECK [filters]`` and the fleet-wide Nagios check ``check-collective-nrpe``.

As MCollective's ``nrpe`` application: only the nodes whose check is not OK are shown
(``-v`` shows every node), each as ``NODE status=STATE`` and the check's output, then
``Summary of Exit Code`` and ``Finished processing``; the exit status is the one of
``mco rpc`` (2 when any check is not OK).

``--nagios`` (and the ``check-collective-nrpe`` console script, in the line of
MCollective's ``check-mc-nrpe``) turns the fleet into one Nagios check: one status line
with perfdata, the nodes per state below it, and exit status 0/1/2/3 by the worst state
(CRITICAL, then UNKNOWN, then WARNING); a node that did not answer counts as UNKNOWN, and
any error is UNKNOWN (3), never 1 or 2, which Nagios would read as WARNING or CRITICAL.

Only click is imported at module level.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from collective.cli.discovery_opts import discovery_options
from collective.cli.options import common_options, filter_options, guarded, make_client

F = Callable[..., Any]
UNKNOWN = 3


class NagiosExit(SystemExit):
    """The end of a ``--nagios`` run, with the fleet's state as the exit status."""


def exitcode_of(reply: Any) -> int:
    """The Nagios exit code a reply carries; UNKNOWN when it carries none."""
    code = reply.data.get("exitcode") if isinstance(reply.data, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 3 \
        else UNKNOWN


def node_lines(reply: Any, width: int = 40) -> list[str]:
    """``NODE status=STATE`` and the output indented below it (or the failure message
    for a reply that carries no check result, e.g. a node without the nrpe agent)."""
    from collective.client.results import STATUS_LABELS

    from .states import state_name

    if "exitcode" not in reply.data and not reply.ok:
        label = STATUS_LABELS.get(reply.statuscode, "Unknown Request Status")
        return [f"{reply.sender:<{width}} {click.style(label, fg='red')}",
                f"    {click.style(reply.statusmsg, fg='yellow')}", ""]
    state = state_name(exitcode_of(reply))
    colour = {"OK": "green", "WARNING": "yellow", "CRITICAL": "red"}.get(state, "magenta")
    lines = [f"{reply.sender:<{width}} status={click.style(state, fg=colour)}"]
    output = reply.data.get("output") or ""
    lines.extend(f"    {line}" for line in str(output).splitlines())
    lines.append("")
    return lines


def nagios_report(check: str, result: Any, elapsed: float) -> tuple[list[str], int]:
    """The lines ``--nagios`` prints and its exit status."""
    from .states import STATES, state_name, worst

    by_state: dict[str, list[str]] = {name: [] for name in STATES}
    codes = []
    for reply in result.replies:
        code = exitcode_of(reply)
        codes.append(code)
        by_state[state_name(code)].append(reply.sender)
    silent = list(result.stats.no_response)
    code = worst([*codes, *([UNKNOWN] * len(silent))])
    total = len(result.stats.expected) or len(result.replies)
    counts = {name: len(nodes) for name, nodes in by_state.items()}
    text = (f"{state_name(code)}: {check} on {total} node(s): {counts['OK']} OK, "
            f"{counts['WARNING']} WARNING, {counts['CRITICAL']} CRITICAL, {counts['UNKNOWN']} "
            f"UNKNOWN, {len(silent)} no answer")
    perf = (f"total={total} ok={counts['OK']} warning={counts['WARNING']} "
            f"critical={counts['CRITICAL']} unknown={counts['UNKNOWN']} no_answer={len(silent)} "
            f"time={elapsed:.3f}s")
    lines = [f"{text}|{perf}"]
    for name in ("CRITICAL", "UNKNOWN", "WARNING"):
        if by_state[name]:
            lines.append(f"{name}: {' '.join(sorted(by_state[name]))}")
    if silent:
        lines.append(f"No answer: {' '.join(sorted(silent))}")
    return lines, code


def nagios_guard(func: F) -> F:
    """With ``--nagios``, any failure to run becomes one ``UNKNOWN: <why>`` line on stdout
    and exit status 3."""

    @functools.wraps(func)
    def inner(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("nagios"):
            return func(*args, **kwargs)
        captured = io.StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                return func(*args, **kwargs)
        except NagiosExit:
            raise
        except SystemExit as exc:
            if exc.code in (0, None):
                raise
            lines = [line for line in captured.getvalue().splitlines() if line.strip()]
            why = lines[-1] if lines else f"exit status {exc.code}"
            why = why.split("backtrace details: ", 1)[-1]
            click.echo(f"UNKNOWN: {why}")
            raise NagiosExit(UNKNOWN) from None

    return inner


@click.command(name="nrpe")
@click.argument("check", metavar="CHECK")
@click.option("-a", "--args", "arguments", multiple=True, metavar="ARG",
              help="An argument for $ARG1$, $ARG2$, ... in order (repeatable, or '!'-separated)")
@click.option("--nagios", is_flag=True,
              help="One Nagios status line for the fleet; exit 0/1/2/3 by the worst state")
@filter_options
@discovery_options
@common_options
@nagios_guard
@guarded("nrpe")
def nrpe(check: str, arguments: tuple[str, ...], nagios: bool, config_path: str | None, flt: Any,
         collective: str | None, discovery_timeout: float | None, discovery: dict[str, Any],
         timeout: float | None, as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Run the NRPE check CHECK on the matching nodes and show the problems.

    \b
    mco nrpe check_load
    mco nrpe check_disk -F role=db -v
    mco nrpe check_disk_path -a /var -I node-001
    mco nrpe check_load --nagios -F role=web
    """
    from collective.cli.app import call, finish, print_json

    data: dict[str, Any] = {"command": check}
    if arguments:
        data["args"] = "!".join(arguments)
    started = time.monotonic()
    with make_client(config_path, collective) as client:
        act = client.ddl("nrpe").actions["runcommand"]
        result = call(client, "nrpe", "runcommand", data, flt=flt, discovery=discovery,
                      timeout=timeout, discovery_timeout=discovery_timeout,
                      progress=not (no_progress or as_json or nagios))
        aggregates = client.pm.aggregates()
    if nagios:
        lines, code = nagios_report(check, result, time.monotonic() - started)
        click.echo("\n".join(lines))
        raise NagiosExit(code)
    if as_json:
        print_json(result)
    for reply in sorted(result.replies, key=lambda r: r.sender):
        if verbose or not reply.ok or exitcode_of(reply) != 0:
            click.echo("\n".join(node_lines(reply)))
    finish(result, act, aggregates, started, verbose, caption=f"{check} NRPE results")


def check_main(argv: Sequence[str] | None = None) -> None:
    """``check-collective-nrpe CHECK [mco nrpe options]``: ``mco nrpe --nagios`` for Nagios,
    with usage errors reported as UNKNOWN too."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        nrpe.main(args=["--nagios", *args], prog_name="check-collective-nrpe",
                  standalone_mode=False)
    except NagiosExit:
        raise
    except click.exceptions.Exit as exc:  # --help
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"UNKNOWN: {exc.format_message()}")
        sys.exit(UNKNOWN)
    except click.Abort:
        click.echo("UNKNOWN: aborted")
        sys.exit(UNKNOWN)
    sys.exit(0)
