"""The client's errors, in a module of their own so every client module can raise them
without importing :mod:`collective.client.rpc` (which imports the others)."""

from __future__ import annotations

__all__ = ["ClientError"]


class ClientError(Exception):
    """A client-side problem: nothing was sent (bad input, unknown agent, no broker)."""
