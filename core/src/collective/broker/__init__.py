"""The embedded STOMP 1.2 broker (``mco broker``, demos and tests).

>>> from collective.broker import EmbeddedBroker
>>> broker = EmbeddedBroker(host="127.0.0.1", port=0).start()   # doctest: +SKIP
>>> broker.port, broker.stats()["connections"]                   # doctest: +SKIP
>>> broker.stop()                                                # doctest: +SKIP
"""

from __future__ import annotations

from .frames import Frame, FrameError, FrameParser, serialize
from .server import BrokerLimits, EmbeddedBroker, run_broker

__all__ = [
    "BrokerLimits",
    "EmbeddedBroker",
    "Frame",
    "FrameError",
    "FrameParser",
    "run_broker",
    "serialize",
]
