"""Built-in plugins of the core, registered through the same hooks as third-party ones.

Each hook imports its classes inside the function so that loading this module
stays cheap for ``mco --help``.
"""

from __future__ import annotations

from typing import Any

from . import hookimpl


@hookimpl
def collective_security_providers() -> list[type]:
    from .security.ed25519 import Ed25519Provider
    from .security.psk import PskProvider

    return [Ed25519Provider, PskProvider]


@hookimpl
def collective_connectors() -> list[type]:
    from .connectors.stomp import StompConnector

    return [StompConnector]


@hookimpl
def collective_formats() -> list[Any]:
    from .formats import BUILTIN_FORMATS

    return list(BUILTIN_FORMATS)


@hookimpl
def collective_audit_sinks() -> list[type]:
    from .audit import JsonlAuditSink, SyslogAuditSink

    return [JsonlAuditSink, SyslogAuditSink]


@hookimpl
def collective_fact_sources() -> list[type]:
    from .facts import StaticFactSource

    return [StaticFactSource]


@hookimpl
def collective_aggregates() -> list[Any]:
    from .aggregates import BUILTIN_AGGREGATES

    return list(BUILTIN_AGGREGATES)


@hookimpl
def collective_discovery_methods() -> list[type]:
    from .client.discovery import BUILTIN_METHODS

    return list(BUILTIN_METHODS)


@hookimpl
def collective_data_plugins() -> list[Any]:
    from .data import BUILTIN_DATA_PLUGINS

    return list(BUILTIN_DATA_PLUGINS)


@hookimpl
def collective_authorizers() -> list[type]:
    from .authz import CallerAllowList

    return [CallerAllowList]
