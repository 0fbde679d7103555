"""The ``rpcutil`` agent (MCollective ``agent/rpcutil.rb``, Choria's Go copy).

``agent_ddl`` is ours: it returns an agent's DDL as data, so a client that lacks the
agent's plugin can still validate requests (``collective.client.remote_ddl``).

``get_config_item`` reads only keys in :data:`collective.config.READABLE_KEYS`
and refuses everything else with the same message, so it can neither return a
secret nor tell which secrets exist (MCollective's ``config.send(item)`` could
return ``pluginconf``, docs/security.md S19).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from ...agent import Aborted, Agent, Reply, Request, action
from ...config import READABLE_KEYS

#: what ``agent_inventory`` reports for each agent (missing metadata -> "unknown")
INVENTORY_KEYS = ("name", "description", "author", "license", "version", "url", "timeout")


def lookup_fact(facts: Mapping[str, Any], name: str) -> Any:
    """A fact by name, or by dotted path into nested facts (``os.release.major``,
    ``interfaces.0``); None when absent. A literal key containing dots wins."""
    if name in facts:
        return facts[name]
    node: Any = facts
    for part in name.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _times() -> dict[str, float]:
    t = os.times()
    return {"user": t.user, "system": t.system, "children_user": t.children_user,
            "children_system": t.children_system, "elapsed": t.elapsed}


class Rpcutil(Agent):
    """General helpful actions that expose stats and internals to clients."""

    name = "rpcutil"

    @action
    def ping(self, request: Request, reply: Reply) -> None:
        reply["pong"] = int(time.time())

    @action
    def inventory(self, request: Request, reply: Reply) -> None:
        node = self.node
        reply["agents"] = sorted(node.agent_ddls())
        reply["facts"] = node.facts()
        reply["classes"] = list(node.classes())
        reply["version"] = str(node.version)
        reply["main_collective"] = self.config.main_collective
        reply["collectives"] = list(node.collectives)
        reply["data_plugins"] = list(node.data_plugins())

    @action
    def daemon_stats(self, request: Request, reply: Reply) -> None:
        node = self.node
        stats = dict(node.stats())
        reply.update({
            "threads": threading.active_count(),
            "agents": sorted(node.agent_ddls()),
            "pid": os.getpid(),
            "validated": 0, "unvalidated": 0, "passed": 0, "filtered": 0,
            "total": 0, "replies": 0, "ttlexpired": 0,
            "starttime": int(node.start_time),
            "configfile": str(self.config.path) if self.config.path else None,
            "version": str(node.version),
        })
        reply.update(stats)  # the node's own numbers win, and any extra counters come along
        reply["times"] = _times()

    @action
    def get_fact(self, request: Request, reply: Reply) -> None:
        fact = request["fact"]
        reply["fact"] = fact
        reply["value"] = copy.deepcopy(lookup_fact(self.node.facts(), fact))

    @action
    def get_facts(self, request: Request, reply: Reply) -> None:
        facts = self.node.facts()
        names = [name.strip() for name in request["facts"].split(",") if name.strip()]
        reply["values"] = {name: copy.deepcopy(lookup_fact(facts, name)) for name in names}

    @action
    def agent_inventory(self, request: Request, reply: Reply) -> None:
        agents = []
        for name, ddl in sorted(self.node.agent_ddls().items()):
            meta = ddl.metadata if ddl is not None else {}
            entry: dict[str, Any] = {"agent": name}
            entry.update({key: meta.get(key, "unknown") for key in INVENTORY_KEYS})
            agents.append(entry)
        reply["agents"] = agents

    @action
    def agent_ddl(self, request: Request, reply: Reply) -> None:
        """The DDL this node validates ``agent``'s requests with: data, never code."""
        name = request["agent"]
        ddl = self.node.agent_ddls().get(name)
        if ddl is None:
            raise Aborted(f"Agent {name} is not loaded on this node")
        reply["agent"] = name
        reply["version"] = str(ddl.metadata["version"])
        reply["sha256"] = ddl.sha256
        reply["ddl"] = ddl.to_dict() if request.get("document", True) else None

    @action
    def collective_info(self, request: Request, reply: Reply) -> None:
        reply["main_collective"] = self.config.main_collective
        reply["collectives"] = list(self.node.collectives)

    @action
    def get_config_item(self, request: Request, reply: Reply) -> None:
        item = request["item"]
        if item not in READABLE_KEYS:
            raise Aborted(f"Unknown config property {item}")
        reply["item"] = item
        reply["value"] = copy.deepcopy(self.config.get(item))
