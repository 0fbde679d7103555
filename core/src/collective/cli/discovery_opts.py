"""``--dm``, ``--do``, ``--discovery-window`` and ``--nodes FILE|-``: how targets are found."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from .options import fail

F = Callable[..., Any]


def discovery_options(func: F) -> F:
    """The command receives ``discovery``: ``{"method", "options", "nodes"}``.

    ``nodes`` is a list when ``--nodes`` was given (direct addressing, no discovery).
    """

    @functools.wraps(func)
    def inner(*args: Any, dm: str | None = None, do: tuple[str, ...] = (),
              discovery_window: float | None = None, nodes_source: str | None = None,
              **kwargs: Any) -> Any:
        options: dict[str, Any] = {}
        for pair in do:
            key, sep, value = pair.partition("=")
            if not sep and dm in ("flatfile", "nodes"):
                key, value = "file", pair  # MCollective: --dm flatfile --do FILE
            elif not sep or not key:
                fail(click.get_current_context().info_name or "mco",
                     f"--do {pair!r}: expected key=value (or a file with --dm flatfile)")
            options[key] = value
        if discovery_window is not None:
            options["window"] = discovery_window
        nodes = None
        if nodes_source is not None:
            from ..client.discovery import read_nodes

            try:
                nodes = read_nodes(sys.stdin if nodes_source == "-" else nodes_source)
            except (OSError, ValueError) as exc:
                fail(click.get_current_context().info_name or "mco", str(exc))
        kwargs["discovery"] = {"method": dm, "options": options, "nodes": nodes}
        return func(*args, **kwargs)

    decorators = [
        click.option("--dm", "--discovery-method", "dm", default=None, metavar="METHOD",
                     help="Discovery method: broadcast (default), inventory, flatfile, stdin, ..."),
        click.option("--do", "--discovery-option", "do", multiple=True, metavar="KEY=VALUE",
                     help="Option for the discovery method (repeatable); with --dm flatfile "
                          "the file of identities"),
        click.option("--discovery-window", type=float, default=None, metavar="SECONDS",
                     help="Broadcast discovery ends once no new node answered for this long"),
        click.option("--nodes", "nodes_source", default=None, metavar="FILE|-",
                     help="Address these identities (one per line, or mco --json output); - reads stdin"),
    ]
    for decorator in reversed(decorators):
        inner = decorator(inner)
    return inner  # type: ignore[return-value]
