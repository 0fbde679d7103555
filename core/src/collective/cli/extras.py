"""``mco completion`` and ``mco replies``."""

from __future__ import annotations

import json
import queue
import sys
import time

import click

from .options import guarded, make_client


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL.

    \b
    bash: eval "$(mco completion bash)"     (or save it under /etc/bash_completion.d/)
    zsh:  eval "$(mco completion zsh)"
    fish: mco completion fish > ~/.config/fish/completions/mco.fish
    """
    from click.shell_completion import get_completion_class

    from .main import cli

    cls = get_completion_class(shell)
    assert cls is not None  # every choice above is a shell click knows
    click.echo(cls(cli, {}, "mco", "_MCO_COMPLETE").source())


@click.command()
@click.argument("destination")
@click.option("-c", "--config", "config_path", default=None, envvar="COLLECTIVE_CONFIG",
              help="Client config file")
@click.option("--count", type=int, default=None, help="Stop after this many replies")
@click.option("-t", "--timeout", type=float, default=60.0, show_default=True,
              help="Stop after this many seconds without a reply")
@guarded("replies")
def replies(destination: str, config_path: str | None, count: int | None, timeout: float) -> None:
    """Collect the replies sent to DESTINATION (COLLECTIVE.reply.NAME.TAG) by
    ``mco rpc ... --reply-to DESTINATION``, one verified JSON line each.

    NAME is the caller name of this client's key (admin for cert=admin): nodes reply
    only to the caller's own reply destinations, and the broker lets each client read
    only its own. Start it before sending the request: a broker may drop replies to a
    destination nobody listens on yet.
    """
    from ..connectors.destinations import parse_logical
    from ..message import MalformedMessage
    from ..security.base import SecurityError

    dest = parse_logical(destination)
    if dest.kind != "reply":
        raise click.UsageError(f"{destination!r} is not a reply destination (COLLECTIVE.reply.NAME.TAG)")
    inbox: queue.Queue[bytes] = queue.Queue()
    with make_client(config_path, dest.collective) as client:
        client.check_reply_to(destination)
        client.connect()
        client._connector.subscribe(dest, inbox.put)
        click.echo(f"Waiting for replies on {destination}", err=True)
        received = 0
        deadline = time.monotonic() + timeout
        while (count is None or received < count) and time.monotonic() < deadline:
            try:
                wire = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            try:
                _verified, reply = client.security.verify_reply(wire)
            except (SecurityError, MalformedMessage) as exc:
                click.echo(f"dropped an unverifiable reply: {exc}", err=True)
                continue
            received += 1
            deadline = time.monotonic() + timeout
            click.echo(json.dumps({"request_id": reply.request_id, "sender": reply.sender,
                                   "agent": reply.agent, "action": reply.action,
                                   "statuscode": reply.statuscode, "statusmsg": reply.statusmsg,
                                   "data": reply.data}, sort_keys=True))
            sys.stdout.flush()
