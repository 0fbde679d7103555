"""The embedded STOMP 1.2 broker (``mco broker``, demos and tests).

>>> from collective.broker import EmbeddedBroker
>>> broker = EmbeddedBroker(host="127.0.0.1", port=0).start()   # doctest: +SKIP
>>> broker.port, broker.stats()["connections"]                   # doctest: +SKIP
>>> broker.stop()                                                # doctest: +SKIP
"""

from __future__ import annotations

from .auth import ROLES, BrokerAuth, Permissions, User, hash_password
from .frames import Frame, FrameError, FrameParser, serialize
from .server import BrokerLimits, EmbeddedBroker, Listener, run_broker

__all__ = [
    "ROLES",
    "BrokerAuth",
    "BrokerLimits",
    "EmbeddedBroker",
    "Listener",
    "Permissions",
    "User",
    "hash_password",
    "Frame",
    "FrameError",
    "FrameParser",
    "run_broker",
    "serialize",
]
