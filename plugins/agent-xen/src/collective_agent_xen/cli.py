"""``mco xen list|find|info|start|shutdown|reboot|destroy|suspend|resume|migrate``.

- ``mco xen list [--all]``: per host a line with its domain states (``3 domains: 1
  running, 1 paused, 1 shutoff``) and a table, then ``Summary of Domains``.
- ``mco xen find DOMAIN``: one broadcast, no discovery round, with the filter
  ``xen("DOMAIN").present=true`` so only the host that has the domain answers;
  collection ends at its reply (or after the discovery timeout). Exit 0 when
  found, 1 when no host has it, as ``mco find``.
- ``mco xen info|start|... DOMAIN`` and ``mco xen migrate DOMAIN DEST``: discovery
  with the same filter, so only the holder is asked (with ``-I`` or ``--nodes`` the
  named nodes are addressed directly and a node without the domain says so).

Only click is imported at module level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from collective.cli.discovery_opts import discovery_options
from collective.cli.options import common_options, filter_options, guarded, make_client

from .common import QUICK_WAIT

F = Callable[..., Any]
#: the actions that take one DOMAIN and reply with its state
STATE_ACTIONS = ("start", "shutdown", "reboot", "destroy", "suspend", "resume")


def holder_expression(domain: str) -> str:
    """The ``-S`` expression that only the host holding ``domain`` matches."""
    return f'xen("{domain}").present=true'


def scoped(flt: Any, discovery: dict[str, Any] | None, domain: str | None) -> Any:
    """``flt`` narrowed to xen nodes (and to the holder of ``domain``), unless the nodes
    are addressed directly (``-I`` only, or ``--nodes``)."""
    if (discovery or {}).get("nodes") is not None or flt.is_identity_only():
        return flt
    if "xen" not in flt.agent:
        flt.agent.append("xen")
    if domain is not None:
        flt.compound.append(holder_expression(domain))
    return flt


def failure_line(reply: Any, width: int) -> str:
    from collective.client.results import STATUS_LABELS

    label = STATUS_LABELS.get(reply.statuscode, "Unknown Request Status")
    return (f"{reply.sender:>{width}}: {click.style(label, fg='red')}: "
            f"{click.style(reply.statusmsg, fg='yellow')}")


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def host_block(reply: Any) -> list[str]:
    """The lines ``mco xen list`` prints for one host."""
    from .common import describe_counts, state_counts

    domains = [d for d in reply.data.get("domains") or [] if isinstance(d, dict)]
    lines = [f"{reply.sender}: {describe_counts(state_counts(domains))}"]
    if domains:
        width = max(12, *(len(str(d.get("name", ""))) for d in domains))
        lines.append(f"   {'NAME':<{width}} {'ID':>5}  {'STATE':<11} {'MEMORY':>10} {'VCPUS':>5}")
        for d in domains:
            memory = "-" if d.get("memory") is None else f"{d['memory']} MiB"
            lines.append(f"   {str(d.get('name')):<{width}} {_cell(d.get('id')):>5}  "
                         f"{_cell(d.get('state')):<11} {memory:>10} {_cell(d.get('vcpus')):>5}")
    return lines


def xen_options(func: F) -> F:
    return filter_options(discovery_options(common_options(guarded("xen")(func))))


@click.group(name="xen")
def xen() -> None:
    """Manage Xen domains on the matching hosts.

    \b
    mco xen list [--all]
    mco xen find web01
    mco xen info web01
    mco xen start|shutdown|reboot|destroy|suspend|resume web01
    mco xen migrate web01 xen-host-2 [--no-live]
    """


@xen.command(name="list")
@click.option("-a", "--all", "all_domains", is_flag=True, help="Also list shut-off domains")
@xen_options
def list_domains(all_domains: bool, config_path: str | None, flt: Any, collective: str | None,
                 discovery_timeout: float | None, discovery: dict[str, Any],
                 timeout: float | None, as_json: bool, verbose: bool, no_progress: bool) -> None:
    """List the domains of every matching host, with a summary of their states."""
    from collective.cli.app import call, finish, print_json

    started = time.monotonic()
    with make_client(config_path, collective) as client:
        act = client.ddl("xen").actions["list"]
        result = call(client, "xen", "list", {"all": all_domains},
                      flt=scoped(flt, discovery, None), discovery=discovery,
                      timeout=timeout if timeout is not None else QUICK_WAIT,
                      discovery_timeout=discovery_timeout, progress=not (no_progress or as_json))
        aggregates = client.pm.aggregates()
    if as_json:
        print_json(result)
    replies = sorted(result.replies, key=lambda r: r.sender)
    width = max((len(r.sender) for r in replies), default=0)
    for reply in replies:
        click.echo(failure_line(reply, width) if not reply.ok else "\n".join(host_block(reply)))
        click.echo("")
    finish(result, act, aggregates, started, verbose)


@xen.command(name="find")
@click.argument("domain")
@filter_options
@common_options
@guarded("xen")
def find(domain: str, config_path: str | None, flt: Any, collective: str | None,
         discovery_timeout: float | None, timeout: float | None, as_json: bool, verbose: bool,
         no_progress: bool) -> None:
    """Print the host that has DOMAIN. Only that host answers, and the command ends as
    soon as it did (else after the discovery timeout, or -t)."""
    import sys

    from collective.cli.app import print_json
    from collective.cli.output import stats_block

    started = time.monotonic()
    with make_client(config_path, collective) as client:
        data = client.validate("xen", "find", {"domain": domain})
        flt.agent.append("xen")
        flt.compound.append(holder_expression(domain))
        wait = timeout if timeout is not None else client.discovery_timeout(discovery_timeout)
        result = client.request("xen", "find", data, filter=flt, timeout=wait,
                                until=lambda reply: reply.ok and reply.data.get("found") is True)
    result.stats.total_time = time.monotonic() - started
    if as_json:
        print_json(result)
    holders = [r for r in result.replies if r.ok and r.data.get("found") is True]
    width = max((len(r.sender) for r in result.replies), default=0)
    for reply in sorted(result.replies, key=lambda r: r.sender):
        if reply in holders:
            ident = reply.data.get("id")
            click.echo(f"{reply.sender:>{width}}: {domain} {reply.data.get('state')}"
                       + (f" (id {ident})" if ident is not None else ""))
        elif not reply.ok:
            click.echo(failure_line(reply, width))
    if verbose:
        click.echo("\n" + stats_block(result), nl=False)
    if not holders:
        click.echo(f"No host has domain {domain} (waited {wait:g}s)", err=True)
        sys.exit(1)
    sys.exit(0)


@xen.command(name="info")
@click.argument("domain")
@xen_options
def info(domain: str, config_path: str | None, flt: Any, collective: str | None,
         discovery_timeout: float | None, discovery: dict[str, Any], timeout: float | None,
         as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Show everything the hypervisor says about DOMAIN."""
    from collective.cli.app import call, finish, print_json
    from collective.cli.output import node_text

    started = time.monotonic()
    with make_client(config_path, collective) as client:
        act = client.ddl("xen").actions["info"]
        result = call(client, "xen", "info", {"domain": domain},
                      flt=scoped(flt, discovery, domain), discovery=discovery,
                      timeout=timeout if timeout is not None else QUICK_WAIT,
                      discovery_timeout=discovery_timeout, progress=not (no_progress or as_json))
        aggregates = client.pm.aggregates()
    if as_json:
        print_json(result)
    for reply in sorted(result.replies, key=lambda r: r.sender):
        click.echo(node_text(reply, act.outputs, verbose) + "\n")
    finish(result, act, aggregates, started, verbose)


def _state_command(action: str) -> click.Command:
    verb = {"suspend": "Pause", "resume": "Resume", "shutdown": "Shut down"}.get(
        action, action.capitalize())

    @click.argument("domain")
    @xen_options
    def command(domain: str, config_path: str | None, flt: Any, collective: str | None,
                discovery_timeout: float | None, discovery: dict[str, Any],
                timeout: float | None, as_json: bool, verbose: bool, no_progress: bool) -> None:
        from collective.cli.app import call, finish, print_json

        started = time.monotonic()
        with make_client(config_path, collective) as client:
            act = client.ddl("xen").actions[action]
            result = call(client, "xen", action, {"domain": domain},
                          flt=scoped(flt, discovery, domain), discovery=discovery,
                          timeout=timeout if timeout is not None else QUICK_WAIT,
                          discovery_timeout=discovery_timeout,
                          progress=not (no_progress or as_json))
            aggregates = client.pm.aggregates()
        if as_json:
            print_json(result)
        replies = sorted(result.replies, key=lambda r: r.sender)
        width = max((len(r.sender) for r in replies), default=0)
        for reply in replies:
            click.echo(failure_line(reply, width) if not reply.ok
                       else f"{reply.sender:>{width}}: {domain} {reply.data.get('state')}")
        click.echo("")
        finish(result, act, aggregates, started, verbose)

    command.__doc__ = f"{verb} DOMAIN on the host that has it."
    return click.command(name=action)(command)


for _action in STATE_ACTIONS:
    xen.add_command(_state_command(_action))


@xen.command(name="migrate")
@click.argument("domain")
@click.argument("destination")
@click.option("--live/--no-live", default=True, show_default=True,
              help="Keep the domain running while its memory is copied")
@xen_options
def migrate(domain: str, destination: str, live: bool, config_path: str | None, flt: Any,
            collective: str | None, discovery_timeout: float | None, discovery: dict[str, Any],
            timeout: float | None, as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Move DOMAIN from the host that has it to DESTINATION (a host name or address)."""
    from collective.cli.app import call, finish, print_json

    started = time.monotonic()
    with make_client(config_path, collective) as client:
        act = client.ddl("xen").actions["migrate"]
        result = call(client, "xen", "migrate",
                      {"domain": domain, "destination": destination, "live": live},
                      flt=scoped(flt, discovery, domain), discovery=discovery, timeout=timeout,
                      discovery_timeout=discovery_timeout, progress=not (no_progress or as_json))
        aggregates = client.pm.aggregates()
    if as_json:
        print_json(result)
    replies = sorted(result.replies, key=lambda r: r.sender)
    width = max((len(r.sender) for r in replies), default=0)
    for reply in replies:
        if not reply.ok:
            click.echo(failure_line(reply, width))
            continue
        mode = "live" if reply.data.get("live") else "offline"
        click.echo(f"{reply.sender:>{width}}: {domain} migrated to "
                   f"{reply.data.get('destination')} ({mode})")
        if verbose and reply.data.get("output"):
            click.echo("   " + str(reply.data["output"]).replace("\n", "\n   "))
    click.echo("")
    finish(result, act, aggregates, started, verbose)
