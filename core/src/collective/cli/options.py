"""Options every ``mco`` application shares: filters, config, timeouts, output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]


def filter_options(func: F) -> F:
    """``-F -C -I -A -W -S`` as MCollective spells them, plus ``-T`` and ``--dt``.

    The command receives the parsed :class:`~collective.filters.Filter` as ``flt``;
    a filter that does not parse ends the command with one clear line (for
    ``-S``, MCollective's message and a caret under the offending token).
    """

    @functools.wraps(func)
    def inner(*args: Any, facts: tuple[str, ...] = (), classes: tuple[str, ...] = (),
              identities: tuple[str, ...] = (), agents: tuple[str, ...] = (),
              combined: tuple[str, ...] = (), selects: tuple[str, ...] = (),
              **kwargs: Any) -> Any:
        from ..filters import FilterError

        try:
            kwargs["flt"] = build_filter(facts, classes, identities, agents, combined, selects)
        except FilterError as exc:
            fail(click.get_current_context().info_name or "mco", str(exc), kwargs.get("verbose", False))
        return func(*args, **kwargs)

    decorators = [
        click.option("-F", "--wf", "--with-fact", "facts", multiple=True, metavar="FACT",
                     help="Fact filter: fact=value, fact!=v, fact>=3, fact=~re, fact=/re/"),
        click.option("-C", "--wc", "--with-class", "classes", multiple=True, metavar="CLASS",
                     help="Class filter: name or /regex/"),
        click.option("-I", "--wi", "--with-identity", "identities", multiple=True, metavar="ID",
                     help="Identity filter, repeatable (OR-ed): name or /regex/"),
        click.option("-A", "--wa", "--with-agent", "agents", multiple=True, metavar="AGENT",
                     help="Agent filter: name or /regex/"),
        click.option("-W", "--with", "combined", multiple=True, metavar="FILTER",
                     help='Combined filter: "class fact=value ..."'),
        click.option("-S", "--select", "selects", multiple=True, metavar="EXPR",
                     help='Compound filter, repeatable (AND-ed): '
                          '"(role=web or role=cache) and not location=us", '
                          '"fstat(\'/etc/hosts\').size>0"'),
        click.option("-T", "--target", "collective", default=None, help="Target this collective"),
        click.option("--dt", "--discovery-timeout", "discovery_timeout", type=float, default=None,
                     help="Discovery timeout in seconds"),
    ]
    for decorator in reversed(decorators):
        inner = decorator(inner)
    return inner  # type: ignore[return-value]


def common_options(func: F) -> F:
    decorators = [
        click.option("-c", "--config", "config_path", default=None, metavar="FILE",
                     envvar="COLLECTIVE_CONFIG", help="Client config file"),
        click.option("-t", "--timeout", type=float, default=None, help="Request timeout in seconds"),
        click.option("-j", "--json", "as_json", is_flag=True, help="Print JSON for scripts"),
        click.option("-v", "--verbose", is_flag=True, help="Verbose output"),
        click.option("--np", "--no-progress", "no_progress", is_flag=True, help="No progress bar"),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def build_filter(facts: tuple[str, ...] = (), classes: tuple[str, ...] = (),
                 identities: tuple[str, ...] = (), agents: tuple[str, ...] = (),
                 combined: tuple[str, ...] = (), selects: tuple[str, ...] = ()) -> Any:
    """The :class:`~collective.filters.Filter` for the MCollective filter options.

    ``-S`` expressions are parsed here; one that calls a function is checked
    against the data plugin registry (unknown function, field or argument is a
    :class:`~collective.compound.FilterSyntaxError`), so nothing bad is sent; then
    the whole filter is checked against the caps of
    :meth:`~collective.filters.Filter.validate`.
    """
    from ..filters import FactFilter, Filter, parse_fact, parse_with

    flt = Filter(fact=[parse_fact(f) for f in facts], cf_class=list(classes),
                 identity=list(identities), agent=list(agents))
    for group in combined:
        for word in group.split():
            item = parse_with(word)
            if isinstance(item, FactFilter):
                flt.fact.append(item)
            else:
                flt.cf_class.append(item)
    if selects:
        from ..compound import expression_functions, parse

        registry: Any = None
        for text in selects:
            if registry is None and expression_functions(parse(text)):
                from ..plugins import get_plugin_manager

                registry = get_plugin_manager().data_plugins()
            if registry is not None:
                parse(text, functions=registry)
            flt.compound.append(text)
    flt.validate()  # the caps on what a filter may cost a node: refused before anything else
    return flt


def fail(app: str, message: str, verbose: bool = False, code: int = 1) -> None:
    """One clear line on stderr, MCollective's wording, then exit."""
    if verbose:
        import traceback

        traceback.print_exc()
    click.echo(f"The {app} application failed to run, use -v for full error backtrace details: "
               f"{message}", err=True)
    sys.exit(code)


def guarded(app: str) -> Callable[[F], F]:
    """Turn the expected errors of a command into one line and exit status 1."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            from ..client import ClientError
            from ..config import ConfigError
            from ..ddl import DDLError
            from ..filters import FilterError
            from ..plugins import PluginError
            from ..security.base import SecurityError

            try:
                return func(*args, **kwargs)
            except (ClientError, ConfigError, DDLError, FilterError, PluginError, SecurityError,
                    OSError, ValueError) as exc:
                fail(app, str(exc), kwargs.get("verbose", False))

        return inner

    return wrap


def make_client(config_path: str | None, collective: str | None = None) -> Any:
    from ..client import Client
    from ..config import ConfigError, load_config, missing_client_config

    config = load_config(config_path, kind="client")
    if config.path is None and not config.get("security.private_key") \
            and config.get("security.provider", "ed25519") == "ed25519":
        raise ConfigError(missing_client_config())
    return Client(config, collective=collective)


class Progress:
    """``* [ ====> ] 3 / 10`` on a terminal; nothing otherwise (no ``\\r`` soup in logs)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = 0
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total
        self.draw()

    def tick(self, *_: Any) -> None:
        self.done += 1
        self.draw()

    def draw(self) -> None:
        if not self.enabled:
            return
        width = 60
        total = max(self.total, self.done, 1)
        filled = int(width * self.done / total)
        bar = "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (width - filled)
        sys.stderr.write(f"\r * [ {bar} ] {self.done} / {self.total or '?'}")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n\n")
            sys.stderr.flush()
