"""A tour of the collective Python API: every option `mco rpc` has, from Python.

    python docs/examples/api_tour.py -c /tmp/fleet/client.yaml

Run it against a local fleet (`mco fleet up --nodes 4 --dir /tmp/fleet`); the test
suite runs it too.
"""

from __future__ import annotations

import argparse
import json

from collective.client import Client
from collective.config import load_config
from collective.filters import Filter, parse_fact


def tour(client: Client) -> dict[str, object]:
    seen: dict[str, object] = {}

    # Discovery: broadcast with a filter (-F role=web), or end early once replies stop.
    web = Filter(fact=[parse_fact("role=web")])
    seen["web"] = client.discover(web)
    seen["all"] = client.discover(timeout=2.0)

    # A call validated against the DDL; replies stream to on_reply as they arrive.
    arrived: list[str] = []
    result = client.rpc("rpcutil", "get_fact", {"fact": "location"}, filter=web,
                        on_reply=lambda reply: arrived.append(reply.sender))
    seen["locations"] = {r.sender: r.data["value"] for r in result.ok}
    seen["exit_code"] = result.exit_code()
    seen["streamed"] = sorted(arrived)

    # Direct addressing (no discovery): ends as soon as every named node answered.
    direct = client.rpc("rpcutil", "ping", nodes=seen["all"][:2])
    seen["direct"] = [r.sender for r in direct]
    seen["no_response"] = client.rpc("rpcutil", "ping", nodes=["no-such-node"], timeout=1).stats.no_response

    # Batches (fixed groups with a pause, or a sliding window) and limits.
    batches: list[list[str]] = []
    client.rpc("rpcutil", "ping", batch_size=2, batch_sleep=0.1, on_batch=lambda n, nodes: batches.append(nodes))
    seen["batches"] = batches
    seen["window"] = len(client.rpc("rpcutil", "ping", batch_size="50%", batch_mode="window"))
    seen["limited"] = len(client.rpc("rpcutil", "ping", limit="25%", limit_seed=1))

    # Fire and forget: returns the request id; the nodes act and do not reply.
    seen["request_id"] = client.send("rpcutil", "ping", nodes=seen["all"][:1])

    # Statistics as `mco rpc -v` prints them.
    stats = result.stats
    seen["stats"] = {"expected": len(stats.expected), "responded": len(stats.responded),
                     "discovery_performed": stats.discovery_performed}
    return seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-c", "--config")
    args = parser.parse_args(argv)
    with Client(load_config(args.config)) as client:
        print(json.dumps(tour(client), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
