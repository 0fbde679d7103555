"""Every hook a collective plugin may implement: the plugin author's reference.

Each registration hook returns an iterable; the core flattens the results into a
registry keyed by name (two plugins claiming one name is an error that names both).
Nothing may depend on the order pluggy calls implementations in.

A plugin is a module named by an entry point in the group ``collective``::

    [project.entry-points.collective]
    agent-nrpe = "collective_agent_nrpe.plugin"

That module must stay cheap to import: ``mco`` imports it on every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only
    from importlib.resources.abc import Traversable

    import click

hookspec = pluggy.HookspecMarker("collective")


@hookspec
def collective_agents() -> Iterable[type]:
    """Return agent classes (subclasses of :class:`collective.agent.Agent`).

    Called by the daemon only. Import the agent module inside the hook so the
    client never pays for it.

    Example::

        @hookimpl
        def collective_agents():
            from .agent import Nrpe
            return [Nrpe]

    .. versionadded:: 0.1
    """


@hookspec
def collective_ddls() -> Iterable[Traversable]:
    """Return the DDL files this plugin ships, one JSON file per agent.

    Called by the client and by the daemon, so it must not import agent code.
    Read them with :mod:`importlib.resources`, never ``__file__``.

    Example: ``return [files(__package__) / "nrpe.json"]``

    .. versionadded:: 0.1
    """


@hookspec
def collective_fact_sources() -> Iterable[type]:
    """Return fact source classes.

    A fact source has a class attribute ``name``, is constructed with the
    daemon's :class:`collective.config.Config`, and has ``facts() -> dict``
    (nested mappings allowed; dotted paths reach into them) and
    ``classes() -> list[str]`` (may return ``[]``). The daemon merges the
    sources named in ``facts.sources`` in that order, later wins.

    .. versionadded:: 0.1
    """


@hookspec
def collective_security_providers() -> Iterable[type]:
    """Return security provider classes (subclasses of
    :class:`collective.security.base.SecurityProvider`), chosen by
    ``security.provider`` in the config.

    .. versionadded:: 0.1
    """


@hookspec
def collective_connectors() -> Iterable[type]:
    """Return broker connector classes, chosen by ``broker.connector``.

    .. versionadded:: 0.1
    """


@hookspec
def collective_authorizers() -> Iterable[type]:
    """Return authorizer classes, chosen by ``authorization.provider``.

    An authorizer has ``name``, is constructed with the daemon config, and has
    ``authorize(ctx) -> collective.authz.Decision`` where ``ctx`` is a
    :class:`collective.authz.AuthzContext` (verified caller, agent, action, data,
    node facts and classes). It may have ``reload()``.

    .. versionadded:: 0.1
    """


@hookspec
def collective_discovery_methods() -> Iterable[type]:
    """Return discovery method classes, chosen with ``mco --dm NAME``.

    .. versionadded:: 0.1
    """


@hookspec
def collective_data_plugins() -> Iterable[Any]:
    """Return data plugins: functions usable in ``-S`` compound filters and policies,
    such as ``fstat("/etc/hosts").size > 0``.

    Each is a subclass of :class:`collective.data.DataPlugin` with ``name``,
    ``description``, ``argument`` (what its one argument means, or None),
    ``outputs`` (name → description), ``default_output`` and
    ``query(argument, node) -> dict``. It runs on the node, read-only; the client
    uses the registry only to refuse unknown functions and fields before sending.
    In a request's filter it runs only for a caller the node has authorized, off the
    receive thread and within a time budget, unless its class sets ``inline = True``
    (only for lookups that are cheap, never block and reveal nothing beyond the
    node's facts, agents and collectives).

    Example: ``return [ServiceData]`` for ``service("nginx").status=running``.

    .. versionadded:: 0.1
    """


@hookspec
def collective_audit_sinks() -> Iterable[type]:
    """Return audit sink classes, chosen by ``audit.sinks``.

    A sink has ``name``, is constructed with the daemon config, and has
    ``write(record: dict) -> None`` (raise ``OSError`` when it cannot write),
    ``reopen()`` and ``close()``.

    .. versionadded:: 0.1
    """


@hookspec
def collective_formats() -> Iterable[Any]:
    """Return named input formats (:class:`collective.formats.Format`) that DDL
    inputs reference with ``"format": "NAME"``, such as ``shellsafe`` or ``ipv4``.

    .. versionadded:: 0.1
    """


@hookspec
def collective_aggregates() -> Iterable[Any]:
    """Return aggregate functions (:class:`collective.aggregates.Aggregate`) that DDL
    actions name in ``"aggregate": [{"function": NAME, "args": [OUTPUT, ...]}]``.

    Used by the client only, to print ``Summary of ...`` blocks.

    Example::

        @hookimpl
        def collective_aggregates():
            from collective.aggregates import Aggregate, AggregateResult
            return [Aggregate("nagios_states", lambda values, args: AggregateResult(
                "collection", {...}))]

    .. versionadded:: 0.1
    """


@hookspec
def collective_cli_commands(cli: click.Group) -> None:
    """Add click commands to the ``mco`` group, e.g. ``mco nrpe``.

    Keep heavy imports inside the command body.

    Example::

        @hookimpl
        def collective_cli_commands(cli):
            @cli.command()
            def nrpe(): ...

    .. versionadded:: 0.1
    """
