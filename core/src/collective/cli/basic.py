"""``mco ping``, ``mco find``, ``mco inventory`` and ``mco facts``."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click

from .discovery_opts import discovery_options
from .options import common_options, fail, filter_options, guarded, make_client

#: The bars of ``mco ping --graph``, lowest first (MCollective's).
SPARK_TICKS = "▁▂▃▄▅▆▇"


def spark(times: list[float], bucket_ms: float = 10.0) -> str:
    """A sparkline of how many replies took how long, one bar per ``bucket_ms`` from the
    fastest reply to the slowest (``mco ping --graph``)."""
    if not times:
        return ""
    low = int(min(times) // bucket_ms)
    counts = [0] * (int(max(times) // bucket_ms) - low + 1)
    for value in times:
        counts[int(value // bucket_ms) - low] += 1
    top = max(counts)
    return "".join(SPARK_TICKS[0] if not n else
                   SPARK_TICKS[min(len(SPARK_TICKS) - 1, (n * len(SPARK_TICKS) - 1) // top)]
                   for n in counts)


@click.command()
@filter_options
@common_options
@click.option("-g", "--graph", is_flag=True,
              help="Show the distribution of reply times as a sparkline (10 ms a bar)")
@guarded("ping")
def ping(config_path: str | None, flt: Any,
         collective: str | None, discovery_timeout: float | None, timeout: float | None,
         as_json: bool, verbose: bool, no_progress: bool, graph: bool) -> None:
    """Ping the nodes that match the filter and print each one's round trip.

    Ends when the discovery timeout passes, or as soon as every node named
    with -I answered.
    """
    with make_client(config_path, collective) as client:

        def show(reply: Any) -> None:
            if not as_json:
                click.echo(f"{reply.sender:<40} time={reply.elapsed_ms:.2f} ms")

        result = client.ping(flt, timeout if timeout is not None else discovery_timeout, on_reply=show)
    times = [r.elapsed_ms for r in result.replies]
    if as_json:
        click.echo(json.dumps([{"sender": r.sender, "time_ms": round(r.elapsed_ms, 2)}
                               for r in result.replies], indent=2))
    else:
        click.echo("\n\n---- ping statistics ----")
        if times:
            click.echo(f"{len(times)} replies max: {max(times):.2f} min: {min(times):.2f} "
                       f"avg: {sum(times) / len(times):.2f}")
            if graph:
                click.echo(f"\n{spark(times)}")
        else:
            click.echo("No responses received")
        missing = result.stats.no_response
        if missing:
            click.echo("\nNo response from:\n\n" + "".join(f"    {n}\n" for n in missing), nl=False)
    sys.exit(0 if times and not result.stats.no_response else 1)


@click.command()
@filter_options
@discovery_options
@common_options
@guarded("find")
def find(config_path: str | None, flt: Any, discovery: dict[str, Any],
         collective: str | None, discovery_timeout: float | None, timeout: float | None,
         as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Print the identity of every node that matches the filter, one per line.

    With --dm inventory the answer comes from the registration inventory at once;
    nodes that missed their registrations are listed and flagged on stderr.
    """
    with make_client(config_path, collective) as client:
        if discovery["nodes"] is None and not discovery["method"] and not discovery["options"]:
            nodes = [r.sender for r in client.ping(flt, timeout if timeout is not None else discovery_timeout)]
            stale: list[str] = []
        else:
            nodes, _, stale = client.select_targets(
                flt, discovery["nodes"], discovery["method"],
                timeout if timeout is not None else discovery_timeout, discovery["options"])
    if stale:
        click.echo(f"Warning: {len(stale)} node(s) missed their registrations: {', '.join(stale)}", err=True)
    if as_json:
        click.echo(json.dumps(nodes, indent=2))
    else:
        for node in nodes:
            click.echo(node)
    sys.exit(0 if nodes else 1)


def _facts_lines(facts: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(facts):
        value = facts[key]
        if isinstance(value, dict) and value:
            lines.extend(_facts_lines(value, f"{prefix}{key}."))
        else:
            shown = json.dumps(value) if isinstance(value, (list, dict)) else value
            lines.append(f"      {prefix}{key} => {shown}")
    return lines


@click.command()
@click.argument("node", required=False)
@filter_options
@common_options
@click.option("--list-collectives", "--lc", "list_collectives", is_flag=True,
              help="List the collectives and how many nodes are in each")
@click.option("--collective-graph", "--cg", "collective_graph", default=None, metavar="FILE",
              help="Write a DOT graph of the collectives and their nodes to FILE")
@click.option("--script", "script", default=None, metavar="FILE",
              help="Run the report script FILE over every matching node's inventory")
@guarded("inventory")
def inventory(node: str | None, config_path: str | None, flt: Any, collective: str | None,
              discovery_timeout: float | None, timeout: float | None, as_json: bool,
              verbose: bool, no_progress: bool, list_collectives: bool,
              collective_graph: str | None, script: str | None) -> None:
    """Show NODE's agents, facts, classes, collectives and daemon statistics.

    \b
    mco inventory NODE
    mco inventory --list-collectives
    mco inventory --collective-graph collectives.dot
    mco inventory --script report.py -F role=web
    """
    if list_collectives or collective_graph:
        _collectives_report(config_path, flt, collective, discovery_timeout, timeout,
                            list_collectives, collective_graph, as_json)
        return
    if script:
        _script_report(script, config_path, flt, collective, discovery_timeout, timeout)
        return
    if node is None:
        raise click.UsageError("give a NODE (or --list-collectives, --collective-graph FILE, "
                               "--script FILE)")
    with make_client(config_path, collective) as client:
        inv = client.rpc("rpcutil", "inventory", nodes=[node], timeout=timeout)
        stats = client.rpc("rpcutil", "daemon_stats", nodes=[node], timeout=timeout)
    if not inv.replies:
        fail("inventory", f"Did not receive a response from {node}")
    reply = inv.replies[0]
    if not reply.ok:
        fail("inventory", f"{node}: {reply.statusmsg}")
    data = reply.data
    st = stats.replies[0].data if stats.replies and stats.replies[0].ok else {}
    if as_json:
        click.echo(json.dumps({"inventory": data, "stats": st}, indent=2, sort_keys=True))
        return
    times = st.get("times") or {}
    rows = [
        ("Version", data.get("version")),
        ("Start Time", time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(st["starttime"])) if st.get("starttime") else "unknown"),
        ("Config File", st.get("configfile")),
        ("Collectives", ", ".join(data.get("collectives") or [])),
        ("Main Collective", data.get("main_collective")),
        ("Process ID", st.get("pid")),
        ("Total Messages", st.get("total")),
        ("Messages Passed Filters", st.get("passed")),
        ("Messages Filtered", st.get("filtered")),
        ("Expired Messages", st.get("ttlexpired")),
        ("Replies Sent", st.get("replies")),
        ("Total Processor Time", f"{times.get('user', 0) + times.get('system', 0):.2f} seconds"),
        ("System Time", f"{times.get('system', 0):.2f} seconds"),
    ]
    out = [f"Inventory for {node}:", "", "   Server Statistics:"]
    out += [f"{label:>35}: {value}" for label, value in rows]
    out += ["", "   Agents:"] + _columns(data.get("agents") or [])
    out += ["", "   Data Plugins:"] + _columns(data.get("data_plugins") or [])
    out += ["", "   Configuration Management Classes:"] + _columns(data.get("classes") or [])
    out += ["", "   Facts:"] + _facts_lines(data.get("facts") or {})
    click.echo("\n".join(out))


def _collectives_report(config_path: str | None, flt: Any, collective: str | None,
                        discovery_timeout: float | None, timeout: float | None,
                        listing: bool, graph: str | None, as_json: bool) -> None:
    """``--list-collectives`` and ``--collective-graph FILE``, from every matching node's
    ``rpcutil collective_info`` (MCollective's inventory application)."""
    with make_client(config_path, collective) as client:
        result = client.rpc("rpcutil", "collective_info", filter=flt, timeout=timeout,
                            discovery_timeout=discovery_timeout)
    members: dict[str, list[str]] = {}
    for reply in result.ok:
        for name in reply.data.get("collectives") or []:
            members.setdefault(str(name), []).append(reply.sender)
    if graph:
        lines = ["graph {"]
        for name in sorted(members):
            lines += [f'   "{name}" -- "{node}";' for node in sorted(members[name])]
        Path(graph).write_text("\n".join([*lines, "}"]) + "\n")
        click.echo(f"Retrieved {len(result.ok)} nodes' collectives; wrote the graph to {graph}")
    if listing:
        if as_json:
            click.echo(json.dumps({k: sorted(v) for k, v in members.items()}, indent=2,
                                  sort_keys=True))
        else:
            width = max([len("Collective"), *map(len, members)]) + 4
            out = [f"   {'Collective':<{width}}Nodes", f"   {'==========':<{width}}=====",
                   *(f"   {name:<{width}}{len(members[name])}" for name in sorted(members)),
                   "", f"   {'Total nodes:':<{width}}{len(result.ok)}"]
            click.echo("\n".join(out))
    sys.exit(0 if result.ok else 1)


class ReportScript:
    """What a ``--script`` file sees: ``inventory(format=..., fields=...)`` registers the
    report (MCollective's ``inventory do format ...; fields { ... } end``): ``format`` is
    a ``%`` format and ``fields(node)`` returns the values for one node, which has
    ``identity``, ``facts``, ``classes``, ``agents`` and ``collectives``."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, Any]] = []

    def inventory(self, format: str, fields: Any) -> None:
        if not isinstance(format, str) or not callable(fields):
            raise ValueError("inventory(format=STRING, fields=FUNCTION) is the report's form")
        self.reports.append((format, fields))


def _script_report(path: str, config_path: str | None, flt: Any, collective: str | None,
                   discovery_timeout: float | None, timeout: float | None) -> None:
    """``--script FILE``: run the admin's own report over every matching node's
    inventory. The script is Python the admin wrote and runs on their own machine, as
    MCollective's report scripts were Ruby; nothing from the nodes is executed."""
    from types import SimpleNamespace

    try:
        code = compile(Path(path).read_text(), path, "exec")
    except (OSError, SyntaxError) as exc:
        raise click.ClickException(f"cannot load the report script {path}: {exc}") from None
    script = ReportScript()
    try:
        exec(code, {"inventory": script.inventory, "__name__": "collective_report"})
    except Exception as exc:
        raise click.ClickException(f"{path}: {type(exc).__name__}: {exc}") from None
    if not script.reports:
        raise click.ClickException(f"{path}: no inventory(format=..., fields=...) report in it")
    with make_client(config_path, collective) as client:
        result = client.rpc("rpcutil", "inventory", filter=flt, timeout=timeout,
                            discovery_timeout=discovery_timeout)
    for reply in sorted(result.ok, key=lambda r: r.sender):
        data = reply.data
        node = SimpleNamespace(identity=reply.sender, facts=data.get("facts") or {},
                               classes=data.get("classes") or [], agents=data.get("agents") or [],
                               collectives=data.get("collectives") or [])
        for fmt, fields in script.reports:
            try:
                click.echo(fmt % tuple(fields(node)))
            except Exception as exc:
                raise click.ClickException(f"{path}: the report failed for {reply.sender}: "
                                           f"{type(exc).__name__}: {exc}") from None
    sys.exit(0 if result.ok else 1)


def _columns(items: list[str], per_line: int = 3) -> list[str]:
    if not items:
        return ["      No items"]
    width = max(len(i) for i in items) + 2
    items = sorted(items)
    return ["      " + "".join(f"{i:<{width}}" for i in items[n:n + per_line]).rstrip()
            for n in range(0, len(items), per_line)]


@click.command()
@click.argument("fact")
@filter_options
@discovery_options
@common_options
@guarded("facts")
def facts(fact: str, config_path: str | None, flt: Any, discovery: dict[str, Any],
          collective: str | None, discovery_timeout: float | None, timeout: float | None,
          as_json: bool, verbose: bool, no_progress: bool) -> None:
    """Report how often each value of FACT occurs across the matching nodes."""
    started = time.monotonic()
    with make_client(config_path, collective) as client:
        result = client.rpc("rpcutil", "get_fact", {"fact": fact}, filter=flt, timeout=timeout,
                            discovery_timeout=discovery_timeout, nodes=discovery["nodes"],
                            discovery_method=discovery["method"], discovery_options=discovery["options"])
    by_value: dict[str, list[str]] = {}
    lacking: list[str] = []  # nodes without the fact (or with null): not an empty value
    for reply in result.ok:
        value = reply.data.get("value")
        if value is None:
            lacking.append(reply.sender)
            continue
        shown = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        by_value.setdefault(shown, []).append(reply.sender)
    if as_json:
        click.echo(json.dumps(by_value, indent=2, sort_keys=True))
        if lacking:
            click.echo(f"Nodes without fact {fact}: {', '.join(sorted(lacking))}", err=True)
        sys.exit(result.exit_code())
    click.echo(f"Report for fact: {fact}\n")
    counts = Counter({value: len(nodes) for value, nodes in by_value.items()})
    for value, count in sorted(counts.items()):
        click.echo(f"        {value:<40}found {count} times")
        if verbose:
            for node in sorted(by_value[value]):
                click.echo(f"            {node}")
    if lacking:
        click.echo(f"\nNodes without fact {fact}: {len(lacking)}\n")
        for node in sorted(lacking):
            click.echo(f"            {node}")
    from .output import finished_line, no_response_text

    click.echo("\n" + finished_line(result, time.monotonic() - started))
    click.echo(no_response_text(result), nl=False)
    sys.exit(result.exit_code())
