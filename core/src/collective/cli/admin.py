"""``mco broker`` and ``mco keys``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("-c", "--config", "config_path", default=None, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="Broker config: listeners, users (hashed passwords), roles, limits")
@click.option("--host", default=None, help="Listen here instead of the first listener's host")
@click.option("--port", default=None, type=int, help="Listen here instead of the first listener's port")
@click.option("--pidfile", default=None, help="Write the broker's PID here")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--hash-password", is_flag=True,
              help="Read a password from standard input, print its hash for users: and exit")
def broker(config_path: str | None, host: str | None, port: int | None, pidfile: str | None,
           log_level: str, hash_password: bool) -> None:
    """Run the embedded STOMP 1.2 broker in the foreground.

    Every connection must log in, on loopback too: give --config FILE with a users:
    section (a node user reads its own queue and the broadcast topics and writes
    replies; a client user writes requests and reads only its own reply queues).
    mco fleet up writes such a file for its nodes and clients. SIGHUP re-reads the
    users: section (listeners and limits need a restart); a connection whose user was
    removed or changed is closed.
    """
    import sys

    from ..broker.auth import hash_password as make_hash

    if hash_password:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.ClickException("no password on standard input")
        click.echo(make_hash(password))
        return
    if config_path is None:
        raise click.UsageError("--config FILE is required: the broker asks every connection for "
                               "a login, so it needs users (see 'mco broker --help')")

    from ..broker import run_broker
    from ..broker.config import BrokerConfigError, load_broker_config
    from ..safelog import configure

    configure(log_level.upper())
    try:
        conf = load_broker_config(config_path)
        first = conf.listeners[0]
        if host is not None:
            first.host = host
        if port is not None:
            first.port = port
        run_broker(first.host, first.port, pidfile=pidfile or conf.pidfile, limits=conf.limits,
                   auth=conf.auth, listeners=conf.listeners,
                   reload_auth=lambda: load_broker_config(config_path).auth)
    except BrokerConfigError as exc:
        raise click.ClickException(str(exc)) from None
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
