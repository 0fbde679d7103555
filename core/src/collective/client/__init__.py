"""The RPC client: discovery, requests, reply collection and results.

Example::

    from collective.client import Client
    from collective.config import load_config
    from collective.filters import Filter, parse_fact

    with Client(load_config("fleet/client.yaml")) as client:
        result = client.rpc("rpcutil", "get_fact", {"fact": "role"},
                            filter=Filter(fact=[parse_fact("location=uk")]))
        for reply in result:
            print(reply.sender, reply.data["value"])
"""

from __future__ import annotations

from .errors import ClientError
from .results import CallStats, NodeReply, Result
from .rpc import Client

__all__ = ["CallStats", "Client", "ClientError", "NodeReply", "Result"]
