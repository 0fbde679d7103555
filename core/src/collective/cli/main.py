"""``mco``: a click group whose commands are imported only when they run.

Built-in commands are named here as ``module:attribute`` and imported on use,
so ``mco --help`` stays fast; plugin commands come from the
``collective_cli_commands`` hook.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .. import __version__

BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "ping": ("collective.cli.basic:ping", "Ping all nodes and report their latency"),
    "find": ("collective.cli.basic:find", "Find the nodes that match a filter"),
    "describe-filter": ("collective.cli.describe:describe_filter",
                        "Describe what a filter selects, in plain English"),
    "inventory": ("collective.cli.basic:inventory", "Show a node's agents, facts, classes and stats"),
    "facts": ("collective.cli.basic:facts", "Report the values of one fact across the fleet"),
    "rpc": ("collective.cli.rpc:rpc", "Call any agent action: mco rpc AGENT ACTION key=value ..."),
    "plugin": ("collective.cli.plugin:plugin", "List installed plugins, render an agent's DDL"),
    "broker": ("collective.cli.admin:broker", "Run the embedded STOMP broker"),
    "keys": ("collective.cli.admin:keys", "Manage Ed25519 keys"),
    "fleet": ("collective.cli.fleet:fleet", "Start and stop a local fleet of daemons"),
    "registry": ("collective.cli.registry:registry", "Collect node registrations into an inventory"),
    "completion": ("collective.cli.extras:completion", "Print the shell completion script"),
    "replies": ("collective.cli.extras:replies", "Collect replies sent with mco rpc --reply-to"),
    "audit": ("collective.cli.audit:audit", "Check the hash chain of the nodes' audit logs"),
    "help": ("collective.cli.main:help_command", "Show the commands, or one command's help"),
}


class LazyGroup(click.Group):
    """Resolve built-in commands by name on use; add plugin commands once."""

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from ..plugins import PluginError, get_plugin_manager

        try:
            get_plugin_manager().add_cli_commands(self)
        except PluginError as exc:
            click.echo(f"mco: {exc}", err=True)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return sorted({*BUILTIN_COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in BUILTIN_COMMANDS:
            import importlib

            module, attr = BUILTIN_COMMANDS[name][0].split(":")
            return getattr(importlib.import_module(module), attr)
        command = super().get_command(ctx, name)
        if command is None:
            self._load_plugins()
            command = super().get_command(ctx, name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List commands without importing the built-in ones."""
        rows = []
        for name in self.list_commands(ctx):
            if name in BUILTIN_COMMANDS:
                rows.append((name, BUILTIN_COMMANDS[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=70)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mco")
@click.option("-c", "--config", "config_path", default=None, metavar="FILE",
              help="Client config file, for whichever command follows (as MCollective, -c "
                   "may come before the command or after it; after it wins)")
def cli(config_path: str | None) -> None:
    """collective: orchestrate your fleet in parallel, MCollective style.

    \b
    mco ping                                  who is out there
    mco find -F role=web                      which nodes match
    mco rpc rpcutil get_fact fact=role -I n1  call any agent action
    mco inventory NODE                        all about one node
    """
    if config_path:
        # every client command reads its -c from COLLECTIVE_CONFIG when not given
        # after it, so this reaches them all, plugin commands too
        os.environ["COLLECTIVE_CONFIG"] = os.path.abspath(config_path)


@click.command("help")
@click.argument("command", nargs=-1)
@click.pass_context
def help_command(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Show the commands (``mco help``), or one command's help (``mco help rpc``,
    ``mco help plugin doc``), as MCollective's ``mco help`` does."""
    group_ctx = ctx.parent if ctx.parent is not None else ctx
    current: click.Command = cli
    current_ctx = group_ctx
    for name in command:
        if not isinstance(current, click.Group):
            raise click.UsageError(f"{current_ctx.command_path} has no subcommand {name!r}")
        sub = current.get_command(current_ctx, name)
        if sub is None:
            known = ", ".join(current.list_commands(current_ctx))
            raise click.UsageError(f"unknown command {name!r}; the commands are: {known}")
        current_ctx = click.Context(sub, info_name=name, parent=current_ctx)
        current = sub
    click.echo(current.get_help(current_ctx))


def main(argv: list[str] | None = None) -> Any:
    os.environ.setdefault("PYTHONSAFEPATH", "1")
    import logging

    if not logging.getLogger().handlers:  # warnings to stderr, one printable line each
        from ..safelog import configure

        configure("WARNING", fmt="%(message)s")
    return cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="mco")
