"""``mco fleet up|down|status``: a local fleet of daemons on this machine."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def fleet() -> None:
    """Start and stop a local fleet: a broker and N collectived daemons."""


@fleet.command("up")
@click.option("--nodes", "-n", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Where keys, configs, logs and client.yaml go")
@click.option("--broker", "flavour", type=click.Choice(["embedded", "rabbitmq", "activemq"]),
              default="embedded", show_default=True)
@click.option("--broker-url", default=None, help="stomp://user:password@host:port/vhost (not for embedded)")
@click.option("--port", default=0, type=int, help="Embedded broker port (default: a free one)")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for every node")
@click.option("--server-config", "server_config", default=None, metavar="FILE",
              type=click.Path(dir_okay=False),
              help="YAML sections merged into every node's config, e.g. plugins: {nrpe: ...}; "
                   "{identity} in a string becomes the node's identity")
def up(nodes: int, directory: str, flavour: str, broker_url: str | None, port: int, timeout: float,
       server_config: str | None) -> None:
    """Start the fleet in the background and return once every node answers."""
    from ..fleet import BrokerSpec, FleetError, fleet_up, load_server_config, per_identity

    if flavour == "embedded":
        if broker_url:
            raise click.UsageError("--broker-url is for --broker rabbitmq or activemq")
        spec = BrokerSpec(port=port)
    else:
        if not broker_url:
            raise click.UsageError(f"--broker {flavour} needs --broker-url stomp://user:pass@host:port/vhost")
        spec = BrokerSpec.from_url(flavour, broker_url)
    try:
        sections = load_server_config(Path(server_config)) if server_config else None
        result = fleet_up(Path(directory), nodes=nodes, broker=spec, timeout=timeout,
                          server_config_for=per_identity(sections) if sections else None)
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"fleet of {nodes} node(s) up on the {flavour} broker "
               f"{spec.host}:{spec.port}; drive it with:\n\n    mco ping -c {result.client_config}\n")


@fleet.command("down")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False))
def down(directory: str) -> None:
    """Stop exactly the processes this fleet started."""
    from ..fleet import FleetError, fleet_down

    try:
        stopped = fleet_down(Path(directory))
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stopped {len(stopped)} process(es)")
