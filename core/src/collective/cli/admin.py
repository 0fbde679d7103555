"""``mco broker`` and ``mco keys``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option("--port", default=61613, show_default=True, type=int, help="STOMP port")
@click.option("--pidfile", default=None, help="Write the broker's PID here")
@click.option("--log-level", default="INFO", show_default=True)
def broker(host: str, port: int, pidfile: str | None, log_level: str) -> None:
    """Run the embedded STOMP 1.2 broker in the foreground (loopback by default)."""
    import logging

    from ..broker import run_broker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_broker(host, port, pidfile=pidfile)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def keys() -> None:
    """Manage Ed25519 keys: generate a pair for a client or a node."""


@keys.command("generate")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where to write NAME.key (mode 0600) and NAME.pub")
@click.option("--force", is_flag=True, help="Overwrite an existing key pair")
def generate(name: str, directory: str, force: bool) -> None:
    """Generate the Ed25519 key pair NAME.key / NAME.pub.

    Give NAME.pub to the nodes (trust_dir/clients/NAME.pub for a client, whose
    caller id becomes cert=NAME; trust_dir/nodes/NAME.pub for a node).
    """
    from ..security.keys import generate_keypair

    Path(directory).mkdir(parents=True, exist_ok=True)
    try:
        private, public = generate_keypair(name, Path(directory), overwrite=force)
    except (ValueError, FileExistsError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {private} (private, mode 0600) and {public}")
