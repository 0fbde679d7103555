"""``mco puppet status|count|summary|enable|disable|runonce|runall|resource``.

MCollective's ``puppet`` application: ``status`` prints each node's status message then
the status summaries; ``count`` totals enabled, applying and daemon states; ``summary``
shows the distribution of last-run resource counts and times; ``runonce`` passes the
puppet options on; ``runall N`` keeps at most N nodes applying at once; ``resource``
manages one resource. The exit status is that of ``mco rpc`` (``runall``: 0 when every
enabled node was started, 2 when some were not, 1 when none was found). Only click is
imported at module level.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from collective.cli.discovery_opts import discovery_options
from collective.cli.options import common_options, filter_options, guarded, make_client

F = Callable[..., Any]

#: ``mco puppet summary`` rows: (label, last_run_summary output)
SUMMARY_ROWS = (
    ("Total resources", "total_resources"),
    ("Out Of Sync resources", "out_of_sync_resources"),
    ("Failed resources", "failed_resources"),
    ("Changed resources", "changed_resources"),
    ("Corrected resources", "corrected_resources"),
    ("Config Retrieval time (seconds)", "config_retrieval_time"),
    ("Total run-time (seconds)", "total_time"),
    ("Time since last run (seconds)", "since_lastrun"),
)


def rpc_command(func: F) -> F:
    """Filters, discovery and the common options, with errors as one line."""
    return filter_options(discovery_options(common_options(guarded("puppet")(func))))


def run_options(func: F) -> F:
    """The puppet options of ``runonce`` and ``runall`` (MCollective's spellings too)."""
    decorators = [
        click.option("--force", is_flag=True, default=False, help="Run at once: no splay"),
        click.option("--server", default=None, metavar="HOST[:PORT]",
                     help="Use this puppet server (the node must allow it)"),
        click.option("--tags", "--tag", "tags", multiple=True, metavar="TAG[,TAG]",
                     help="Restrict the run to these tags (repeatable)"),
        click.option("--noop/--no-noop", "noop", default=None,
                     help="A dry run / a run with noop off"),
        click.option("--environment", default=None, metavar="ENV",
                     help="Run in this Puppet environment"),
        click.option("--splay/--no-splay", "splay", default=None,
                     help="Sleep up to --splaylimit seconds first / do not"),
        click.option("--splaylimit", type=int, default=None, metavar="SECONDS",
                     help="Longest splay"),
        click.option("--use-cached-catalog/--no-use-cached-catalog", "--use_cached_catalog/"
                     "--no-use_cached_catalog", "use_cached_catalog", default=None,
                     help="Apply the cached catalog / do not"),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def runonce_data(force: bool, server: str | None, tags: tuple[str, ...], noop: bool | None,
                 environment: str | None, splay: bool | None, splaylimit: int | None,
                 use_cached_catalog: bool | None) -> dict[str, Any]:
    """The ``runonce`` inputs for the command-line options (as MCollective checks them)."""
    if force and splay is not None:
        raise click.UsageError("Cannot set splay when forcing runs")
    if force and splaylimit is not None:
        raise click.UsageError("Cannot set splaylimit when forcing runs")
    data: dict[str, Any] = {}
    if force:
        data["force"] = True
    if server is not None:
        data["server"] = server
    if tags:
        data["tags"] = ",".join(part.strip() for tag in tags for part in tag.split(",")
                                if part.strip())
    for key, value in (("noop", noop), ("environment", environment), ("splay", splay),
                       ("splaylimit", splaylimit), ("use_cached_catalog", use_cached_catalog)):
        if value is not None:
            data[key] = value
    return data


def node_line(reply: Any, output: str, width: int) -> str:
    """``node-001: <output>``, or ``node-001: <status message>`` in red for a failure."""
    if reply.ok:
        return f"{reply.sender:>{width}}: {reply.data.get(output, '')}"
    return f"{reply.sender:>{width}}: {click.style(reply.statusmsg, fg='red')}"


def _call(action: str, data: dict[str, Any], config_path: str | None, flt: Any,
          collective: str | None, discovery_timeout: float | None, discovery: dict[str, Any],
          timeout: float | None, progress: bool) -> tuple[Any, Any, Any]:
    from collective.cli.app import call

    with make_client(config_path, collective) as client:
        act = client.ddl("puppet").actions[action]
        result = call(client, "puppet", action, data, flt=flt, discovery=discovery,
                      timeout=timeout, discovery_timeout=discovery_timeout, progress=progress)
        aggregates = client.pm.aggregates()
    return result, act, aggregates


def _lines(action: str, output: str, data: dict[str, Any], config_path: str | None, flt: Any,
           collective: str | None, discovery_timeout: float | None, discovery: dict[str, Any],
           timeout: float | None, as_json: bool, verbose: bool, no_progress: bool) -> None:
    """One line per node with ``output``, then the DDL's summaries and the footer."""
    from collective.cli.app import finish, print_json

    started = time.monotonic()
    result, act, aggregates = _call(action, data, config_path, flt, collective, discovery_timeout,
                                    discovery, timeout, not (no_progress or as_json))
    if as_json:
        print_json(result)
    replies = sorted(result.replies, key=lambda r: r.sender)
    width = max((len(r.sender) for r in replies), default=0) + 3
    for reply in replies:
        click.echo(node_line(reply, output, width))
    click.echo("")
    finish(result, act, aggregates, started, verbose)


@click.group(name="puppet")
def puppet() -> None:
    """Schedule runs, enable, disable and interrogate the Puppet agent.

    \b
    mco puppet status
    mco puppet runonce --noop --tags apache,ntp -F role=web
    mco puppet disable "maintenance, back at 14:00" -I node-001
    mco puppet runall 10
    mco puppet summary
    """


@puppet.command()
@rpc_command
def status(**kwargs: Any) -> None:
    """Each node's status message, then the status summaries."""
    _lines("status", "message", {}, **kwargs)


@puppet.command()
@rpc_command
def enable(**kwargs: Any) -> None:
    """Enable the Puppet agent where it was disabled."""
    _lines("enable", "status", {}, **kwargs)


@puppet.command()
@click.argument("message", required=False, default=None)
@rpc_command
def disable(message: str | None, **kwargs: Any) -> None:
    """Disable the Puppet agent, with an optional MESSAGE saying why."""
    _lines("disable", "status", {"message": message} if message else {}, **kwargs)


@puppet.command()
@run_options
@rpc_command
def runonce(force: bool, server: str | None, tags: tuple[str, ...], noop: bool | None,
            environment: str | None, splay: bool | None, splaylimit: int | None,
            use_cached_catalog: bool | None, **kwargs: Any) -> None:
    """Start one Puppet run on the matching nodes.

    A disabled node, or one already applying a catalog, refuses (status 1).
    """
    data = runonce_data(force, server, tags, noop, environment, splay, splaylimit,
                        use_cached_catalog)
    _lines("runonce", "summary", data, **kwargs)


@puppet.command()
@click.argument("type_name", metavar="TYPE")
@click.argument("name")
@click.argument("properties", nargs=-1, metavar="[PROPERTY=VALUE]...")
@rpc_command
def resource(type_name: str, name: str, properties: tuple[str, ...], config_path: str | None,
             flt: Any, collective: str | None, discovery_timeout: float | None,
             discovery: dict[str, Any], timeout: float | None, as_json: bool, verbose: bool,
             no_progress: bool) -> None:
    """Manage one resource with the Puppet RAL (puppet resource).

    The node's plugins.puppet.resource_types must name TYPE.

    \b
    mco puppet resource host db ip=192.0.2.10 -W role::webserver
    """
    from collective.cli.app import finish, print_json
    from collective.cli.output import node_text

    values: dict[str, str] = {}
    for pair in properties:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise click.UsageError(f"Could not parse argument '{pair}' (expected property=value)")
        values[key] = value
    started = time.monotonic()
    result, act, aggregates = _call("resource", {"type": type_name, "name": name,
                                                 "properties": values},
                                    config_path, flt, collective, discovery_timeout, discovery,
                                    timeout, not (no_progress or as_json))
    if as_json:
        print_json(result)
    for reply in sorted(result.replies, key=lambda r: r.sender):
        click.echo(node_text(reply, act.outputs, verbose) + "\n")
    finish(result, act, aggregates, started, verbose)


def _end(result: Any) -> None:
    from collective.cli.output import no_response_text

    click.echo(no_response_text(result), nl=False)
    sys.exit(result.exit_code())


@puppet.command()
@rpc_command
def count(config_path: str | None, flt: Any, collective: str | None,
          discovery_timeout: float | None, discovery: dict[str, Any], timeout: float | None,
          as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Totals of enabled, disabled, applying and daemon-running nodes."""
    from collective.cli.app import print_json

    result, _act, _aggregates = _call("status", {}, config_path, flt, collective,
                                      discovery_timeout, discovery, timeout, False)
    if as_json:
        print_json(result)
    click.echo("\n".join(count_lines(result.replies)))
    _end(result)


def count_lines(replies: list[Any]) -> list[str]:
    """MCollective's ``mco puppet count`` block."""
    ok = [r for r in replies if r.ok]

    def total(key: str, value: Any) -> int:
        return sum(1 for r in ok if r.data.get(key) is value)

    lines = [f"Total Puppet nodes: {len(ok)}", "",
             f"          Nodes currently enabled: {total('enabled', True)}",
             f"         Nodes currently disabled: {total('enabled', False)}", "",
             f"Nodes currently doing puppet runs: {total('applying', True)}",
             f"          Nodes currently stopped: {total('applying', False)}", "",
             f"       Nodes with daemons started: {total('daemon_present', True)}",
             f"    Nodes without daemons started: {total('daemon_present', False)}",
             f"       Daemons started but idling: {total('idling', True)}", ""]
    failed = len(replies) - len(ok)
    if failed:
        lines.append(click.style(f"Failed to retrieve status of {failed} "
                                 f"{'node' if failed == 1 else 'nodes'}", fg="red"))
    return lines


@puppet.command()
@rpc_command
def summary(config_path: str | None, flt: Any, collective: str | None,
            discovery_timeout: float | None, discovery: dict[str, Any], timeout: float | None,
            as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Distribution of last-run resource counts and times."""
    from collective.cli.app import print_json

    result, _act, _aggregates = _call("last_run_summary", {}, config_path, flt, collective,
                                      discovery_timeout, discovery, timeout, False)
    if as_json:
        print_json(result)
    click.echo("\n".join(summary_lines(result.replies)))
    _end(result)


def summary_lines(replies: list[Any]) -> list[str]:
    """``Summary statistics for N nodes:`` and one sparkline row per figure. Nodes that
    never completed a run count in the resource rows but not in the time since the last run."""
    from .common import spark_row

    ok = [r for r in replies if r.ok]
    lines = [f"Summary statistics for {len(ok)} nodes:", ""]
    for label, output in SUMMARY_ROWS:
        chosen = [r for r in ok if output != "since_lastrun" or r.data.get("lastrun")]
        lines.append(f"{label:>33}: {spark_row([r.data.get(output) for r in chosen])}".rstrip())
    never = sum(1 for r in ok if not r.data.get("lastrun"))
    if never:
        lines.append(f"{'':>33}  ({never} {'node has' if never == 1 else 'nodes have'} "
                     "never completed a run)")
    lines.append("")
    return lines


@puppet.command()
@click.argument("concurrency", type=int)
@click.option("--rerun", type=float, default=None, metavar="SECONDS",
              help="Run all nodes again and again, each loop taking at least SECONDS")
@click.option("--loops", type=int, default=None, metavar="N",
              help="With --rerun: stop after N loops (default: until interrupted)")
@run_options
@rpc_command
def runall(concurrency: int, rerun: float | None, loops: int | None, force: bool,
           server: str | None, tags: tuple[str, ...], noop: bool | None,
           environment: str | None, splay: bool | None, splaylimit: int | None,
           use_cached_catalog: bool | None, config_path: str | None, flt: Any,
           collective: str | None, discovery_timeout: float | None, discovery: dict[str, Any],
           timeout: float | None, as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Run Puppet on all enabled nodes, CONCURRENCY at a time.

    At most CONCURRENCY nodes apply a catalog at once.

    Compound filters (-S) are AND-ed with "puppet().enabled=true". Runs are forced
    (no splay), so --splay and --splaylimit do not apply.
    """
    from .runall import Runner

    if concurrency < 1:
        raise click.UsageError("The concurrency for the runall command has to be greater than 0")
    if splay is not None or splaylimit is not None:
        raise click.UsageError("runall forces its runs: --splay and --splaylimit do not apply")
    if loops is not None and rerun is None:
        raise click.UsageError("--loops only applies with --rerun")
    data = runonce_data(False, server, tags, noop, environment, None, None, use_cached_catalog)

    def say(message: str) -> None:
        click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {message}")

    with make_client(config_path, collective) as client:
        client.validate("puppet", "runonce", {**data, "force": True})  # nothing bad is sent
        runner = Runner(client, flt, discovery, concurrency, data, say,
                        discovery_timeout=discovery_timeout)
        try:
            done = runner.forever(rerun, loops) if rerun is not None else [runner.once()]
        except KeyboardInterrupt:
            say("Interrupted")
            sys.exit(130)
    if not any(iteration.nodes for iteration in done):
        click.echo("No request sent, we did not discover any nodes.", err=True)
        sys.exit(1)
    failed = sorted({node for iteration in done for node in iteration.failed})
    if failed:
        say(f"Not run or not finished: {', '.join(failed)}")
    sys.exit(2 if failed else 0)

