"""Broker connectors: logical destinations and the supervised STOMP connector."""

from __future__ import annotations

from typing import Any

from collective.connectors.destinations import (
    FLAVOURS,
    Destination,
    parse_logical,
    stomp_send,
    stomp_subscribe,
)
from collective.connectors.stomp import ConnectorConfigError, ConnectorError, StompConnector

#: The connector class named by ``broker.connector`` (only ``stomp`` for now).
CONNECTORS: dict[str, type[StompConnector]] = {"stomp": StompConnector}

#: The contract's name for "a connector" (docs/contracts.md).
Connector = StompConnector


def create_connector(config: Any, client_id: str) -> StompConnector:
    """The connector selected by ``broker.connector`` (default ``stomp``)."""
    name = config.get("broker.connector", "stomp") or "stomp"
    try:
        cls = CONNECTORS[name]
    except KeyError:
        raise ConnectorConfigError(
            f"broker.connector: unknown connector {name!r} (known: {', '.join(CONNECTORS)})"
        ) from None
    return cls(config, client_id)


__all__ = [
    "CONNECTORS",
    "FLAVOURS",
    "Connector",
    "ConnectorConfigError",
    "ConnectorError",
    "Destination",
    "StompConnector",
    "create_connector",
    "parse_logical",
    "stomp_send",
    "stomp_subscribe",
]
