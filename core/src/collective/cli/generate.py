"""``mco plugin generate agent|data|facts NAME``: start a plugin distribution."""

from __future__ import annotations

from pathlib import Path

import click


def _write(kind: str, name: str, directory: str, actions: str | None, description: str | None,
           author: str) -> None:
    from ..scaffold import GenerateError, generate

    names = [a.strip() for a in actions.split(",")] if actions else []
    try:
        made = generate(kind, name, Path(directory), names, description=description, author=author)
    except GenerateError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"could not write {directory}: {exc.strerror or exc}") from None
    click.echo(f"Created {made.dist} in {made.directory}\n")
    click.echo(f"    cd {made.directory}\n    pip install -e '.[test]'\n    pytest")
    if kind == "agent":
        click.echo(f"\nthen, on a fleet: mco rpc {name} {made.actions[0]} message=hello")


def _options(func):  # type: ignore[no-untyped-def]
    func = click.option("--dir", "directory", default=".", show_default=True,
                        type=click.Path(file_okay=False),
                        help="Where the distribution's directory goes")(func)
    func = click.option("--description", default=None, help="One line for the README and metadata")(func)
    func = click.option("--author", default="collective plugin author", show_default=True,
                        help="The author in the metadata (and the DDL)")(func)
    return func


@click.group()
def generate() -> None:
    """Write a new plugin distribution that builds and passes its tests as it is."""


@generate.command("agent")
@click.argument("name")
@click.option("--actions", default=None, metavar="A,B",
              help="Comma-separated action names (default: echo)")
@_options
def agent(name: str, actions: str | None, directory: str, description: str | None,
          author: str) -> None:
    """An agent NAME: collective-agent-NAME with its DDL, one input and output per action,
    and tests (in-process node, a real fleet, the wheel alone)."""
    _write("agent", name, directory, actions, description, author)


@generate.command("data")
@click.argument("name")
@_options
def data(name: str, directory: str, description: str | None, author: str) -> None:
    """A data plugin NAME() for -S filters and policies: collective-data-NAME."""
    _write("data", name, directory, None, description, author)


@generate.command("facts")
@click.argument("name")
@_options
def facts(name: str, directory: str, description: str | None, author: str) -> None:
    """A fact source NAME: collective-facts-NAME."""
    _write("facts", name, directory, None, description, author)
