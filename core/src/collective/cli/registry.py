"""``mco registry``: collect node registrations into an inventory, list and forget nodes.

::

    mco registry collect --db inventory.db [-c client.yaml] [-T collective]   # foreground
    mco registry list    --db inventory.db [--json]
    mco registry forget  NODE --db inventory.db
    mco registry prune   --older-than 3600 --db inventory.db

``--db`` defaults to ``discovery.inventory`` from the client config, which is also
what ``--dm inventory`` reads.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def _config(config_path: str | None) -> Any:
    from ..config import load_config

    return load_config(config_path, kind="client")


def _db(db: str | None, config: Any) -> str:
    path = db or config.get("discovery.inventory")
    if not path:
        raise click.ClickException("no inventory file: pass --db FILE or set discovery.inventory "
                                   "in the client config")
    return str(path)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _open(db: str | None, config_path: str | None, create: bool = False) -> Any:
    from ..config import ConfigError
    from ..inventory import Inventory, InventoryError

    try:
        config = _config(config_path)
        return Inventory(_db(db, config), stale_after=config.get("discovery.stale_after"),
                         create=create)
    except (ConfigError, InventoryError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


config_option = click.option("-c", "--config", "config_path", default=None, metavar="FILE",
                             envvar="COLLECTIVE_CONFIG", help="Client config file")
db_option = click.option("--db", default=None, metavar="FILE",
                         help="Inventory file (default: discovery.inventory from the config)")


@click.group()
def registry() -> None:
    """Collect the nodes' registrations into an inventory for --dm inventory.

    Nodes register when server.registration_interval > 0 in their config.
    """


@registry.command()
@db_option
@config_option
@click.option("-T", "--target", "collectives", multiple=True, metavar="COLLECTIVE",
              help="Collect this collective (repeatable; default: every collective in the config)")
@click.option("--log-level", default="INFO", show_default=True)
def collect(db: str | None, config_path: str | None, collectives: tuple[str, ...],
            log_level: str) -> None:
    """Run in the foreground (until SIGINT/SIGTERM), verifying and recording registrations."""
    import logging
    import os
    import signal
    import threading

    from ..config import ConfigError
    from ..connectors.stomp import ConnectorError
    from ..inventory import Collector, Inventory, InventoryError
    from ..plugins import PluginError
    from ..safelog import configure
    from ..security.base import SecurityError

    configure(log_level, stream=sys.stderr)
    logging.getLogger("stomp").setLevel(logging.WARNING)
    log = logging.getLogger("collective.registry")
    try:
        config = _config(config_path)
        inventory = Inventory(_db(db, config), stale_after=config.get("discovery.stale_after"))
        collector = Collector(config, inventory, collectives=list(collectives) or None)
    except (ConfigError, InventoryError, PluginError, SecurityError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        collector.start()
    except ConnectorError as exc:
        inventory.close()
        raise click.ClickException(str(exc)) from None
    log.info("collector running (pid %d); stop with SIGINT or SIGTERM", os.getpid())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        collector.stop()
        inventory.close()
    stats = collector.stats
    log.info("collector stopped: received %d, recorded %d, refused %d %s, dropped %d",
             stats["received"], stats["recorded"], stats["refused"],
             stats["refused_by_reason"] or "", stats["dropped"])


@registry.command("list")
@db_option
@config_option
@click.option("-T", "--target", "collective", default=None, metavar="COLLECTIVE",
              help="Only nodes of this collective")
@click.option("-j", "--json", "as_json", is_flag=True, help="Print JSON for scripts")
def list_nodes(db: str | None, config_path: str | None, collective: str | None,
               as_json: bool) -> None:
    """Print every node in the inventory: identity, last seen, stale flag, agents."""
    from ..inventory import InventoryError

    with _open(db, config_path) as inventory:
        try:
            nodes = inventory.nodes(collective)
        except InventoryError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([n.to_dict() for n in nodes], indent=2, sort_keys=True))
        return
    if not nodes:
        click.echo("No nodes in the inventory")
        return
    width = max(8, *(len(n.identity) for n in nodes))
    click.echo(f"{'identity':<{width}}  {'last seen':>10}  {'stale':<5}  agents")
    for node in nodes:
        click.echo(f"{node.identity:<{width}}  {_age(node.age):>10}  "
                   f"{'yes' if node.stale else 'no':<5}  {len(node.agents)}")
    stale = sum(1 for n in nodes if n.stale)
    click.echo(f"\n{len(nodes)} node(s), {stale} stale")


@registry.command()
@click.argument("node")
@db_option
@config_option
def forget(node: str, db: str | None, config_path: str | None) -> None:
    """Remove NODE from the inventory (it comes back when it registers again)."""
    with _open(db, config_path) as inventory:
        if not inventory.forget(node):
            raise click.ClickException(f"{node} is not in the inventory {inventory.path}")
    click.echo(f"forgot {node}")


@registry.command()
@click.option("--older-than", type=float, required=True, metavar="SECONDS",
              help="Remove nodes not heard from for this long")
@db_option
@config_option
def prune(older_than: float, db: str | None, config_path: str | None) -> None:
    """Remove every node not heard from for more than --older-than seconds."""
    with _open(db, config_path) as inventory:
        gone = inventory.prune(older_than)
    for node in gone:
        click.echo(f"pruned {node}")
    click.echo(f"{len(gone)} node(s) pruned")
