"""``mco rpc AGENT ACTION key=value ...``: call any action, validated by its DDL."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from .app import call, finish, print_json
from .discovery_opts import discovery_options
from .options import common_options, fail, filter_options, guarded, make_client


def parse_arguments(pairs: tuple[str, ...]) -> dict[str, str]:
    args: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"Could not parse argument {pair!r}: expected key=value")
        args[key] = value
    return args


def orchestration_options(func: Any) -> Any:
    """``--batch``, ``--batch-sleep``, ``--batch-mode``, ``--limit-nodes``, ``-1``, ``--limit-seed``."""
    decorators = [
        click.option("--batch", "batch", default=None, metavar="N|N%",
                     help="Send to this many nodes (or this share) at a time"),
        click.option("--batch-sleep", type=float, default=None, metavar="SECONDS",
                     help="Pause between fixed batches (default rpc.batch_sleep, 1 s)"),
        click.option("--batch-mode", type=click.Choice(["fixed", "window"]), default="fixed",
                     show_default=True,
                     help="fixed: groups with a pause (MCollective); window: keep N busy (Salt)"),
        click.option("--limit-nodes", "--ln", "limit", default=None, metavar="N|N%",
                     help="Only act on this many (or this share) of the discovered nodes"),
        click.option("-1", "--one", "one", is_flag=True, help="Only act on one node (--limit-nodes 1)"),
        click.option("--limit-seed", type=int, default=None,
                     help="Random but repeatable choice for --limit-nodes"),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@click.command()
@click.argument("words", nargs=-1, metavar="AGENT ACTION [KEY=VALUE]...")
@click.option("--agent", "agent_option", default=None, metavar="AGENT",
              help="The agent (MCollective's spelling; instead of the first word)")
@click.option("--action", "action_option", default=None, metavar="ACTION",
              help="The action (instead of the word after the agent)")
@click.option("--arg", "--argument", "arg_options", multiple=True, metavar="KEY=VALUE",
              help="One input (repeatable), as the KEY=VALUE words are")
@filter_options
@discovery_options
@orchestration_options
@common_options
@click.option("--display", type=click.Choice(["ok", "failed", "all", "none"]), default=None,
              help="Which replies to print (default: the DDL's display policy)")
@click.option("--jsonl", is_flag=True, help="Print one JSON line per reply as it arrives")
@click.option("--no-results", "--nr", "no_results", is_flag=True,
              help="Fire and forget: send, print the request id, do not wait for replies")
@click.option("--reply-to", default=None, metavar="DESTINATION",
              help="Have replies sent to COLLECTIVE.reply.NAME.TAG (NAME: your key's caller "
                   "name) for 'mco replies' to collect")
@click.option("--filter-replies", "filter_replies", default=None, metavar="EXPR",
              help="Only print replies matching this -S style expression, e.g. 'statuscode=0 and data.ensure=present'")
@guarded("rpc")
def rpc(words: tuple[str, ...], agent_option: str | None, action_option: str | None,
        arg_options: tuple[str, ...], config_path: str | None,
        flt: Any, collective: str | None, discovery_timeout: float | None, discovery: dict[str, Any],
        batch: str | None, batch_sleep: float | None, batch_mode: str, limit: str | None, one: bool,
        limit_seed: int | None, timeout: float | None, as_json: bool, verbose: bool,
        no_progress: bool, display: str | None, jsonl: bool, no_results: bool,
        reply_to: str | None, filter_replies: str | None) -> None:
    """Call AGENT's ACTION on the matching nodes with key=value ARGUMENTS.

    \b
    mco rpc service restart service=nginx -F location=uk --batch 10%
    mco rpc rpcutil ping -I node-001 -I node-002
    mco rpc package status package=vim --json | mco rpc package update package=vim --nodes -
    """
    from ..ddl import RequestError
    from .output import (
        node_text,
        should_show,
    )

    agent, action, arguments = agent_action_arguments(words, agent_option, action_option,
                                                      arg_options)
    started = time.monotonic()
    select = compile_reply_filter(filter_replies)
    with make_client(config_path, collective) as client:
        args = parse_arguments(arguments)
        # an agent whose plugin is not installed here: its DDL comes from the targeted nodes
        act = client.action_ddl(agent, action, args, filter=flt, nodes=discovery["nodes"])
        try:
            data = act.convert_cli(args)
        except RequestError as exc:
            fail("rpc", str(exc))
        if no_results or reply_to:
            targets = discovery["nodes"]
            if targets is None and not flt.is_identity_only():
                targets, _, _ = client.select_targets(flt, None, discovery["method"], discovery_timeout,
                                                      discovery["options"])
                if not targets:
                    click.echo("No request sent, we did not discover any nodes.", err=True)
                    sys.exit(1)
            request_id = client.send(agent, action, data, filter=flt, nodes=targets, reply_to=reply_to)
            click.echo(f"Request sent with id: {request_id}"
                       + (f" replies to {reply_to}" if reply_to else ""))
            return
        progress = not (no_progress or as_json or jsonl)

        def on_reply(reply: Any) -> None:
            if jsonl and (select is None or select(reply)):
                click.echo(json.dumps(reply.to_dict(), sort_keys=True))

        result = call(
            client, agent, action, data, flt=flt, discovery=discovery, timeout=timeout,
            discovery_timeout=discovery_timeout, progress=progress, on_reply=on_reply,
            limit=1 if one else limit, limit_seed=limit_seed,
            batch_size=batch if batch is not None else client.config["rpc"].get("batch_size"),
            batch_sleep=batch_sleep if batch_sleep is not None else client.config["rpc"].get("batch_sleep", 1.0),
            batch_mode=batch_mode)
        aggregates = client.pm.aggregates() if act.aggregates else {}
    shown = [r for r in result.replies if select is None or select(r)]
    if jsonl:
        sys.exit(result.exit_code())
    if as_json:
        print_json(result, shown)
    policy = display or act.display
    for reply in shown:
        if should_show(reply, policy) or (verbose and display is None):
            click.echo(node_text(reply, act.outputs, verbose) + "\n")
    if result.replies and not any(should_show(r, policy) for r in shown):
        click.echo("")
    finish(result, act, aggregates, started, verbose)


def agent_action_arguments(words: tuple[str, ...], agent: str | None, action: str | None,
                           args: tuple[str, ...]) -> tuple[str, str, tuple[str, ...]]:
    """``mco rpc AGENT ACTION k=v`` or MCollective's ``--agent A --action B --arg k=v``
    (mixed as MCollective allows: the words fill in what the options did not say)."""
    rest = list(words)
    if agent is None and rest and "=" not in rest[0]:
        agent = rest.pop(0)
    if action is None and rest and "=" not in rest[0]:
        action = rest.pop(0)
    if not agent or not action:
        raise click.UsageError("give an agent and an action: mco rpc AGENT ACTION [KEY=VALUE]..., "
                               "or --agent AGENT --action ACTION [--arg KEY=VALUE]...")
    return agent, action, (*rest, *args)


def compile_reply_filter(expression: str | None) -> Any:
    """``--filter-replies``: the -S language evaluated over each reply.

    A reply is seen as a node whose facts are ``sender``, ``statuscode``,
    ``statusmsg``, ``ok`` and ``data`` (dotted paths reach into it):
    ``'statuscode=0 and data.ensure=present'``.
    """
    if not expression:
        return None
    from ..compound import evaluate, parse
    from ..filters import NodeInfo

    tree = parse(expression, functions=set())

    def select(reply: Any) -> bool:
        facts = {"sender": reply.sender, "statuscode": reply.statuscode, "statusmsg": reply.statusmsg,
                 "ok": reply.ok, "data": reply.data}
        return bool(evaluate(tree, NodeInfo(identity=reply.sender, facts=facts)))

    return select
