"""Fixtures shared by core tests: real daemons with the canary agent on a real
embedded broker (in process)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from collective.client import Client
from collective.config import Config
from collective.plugins import get_plugin_manager
from collective.security.keys import generate_keypair
from collective.server.daemon import Daemon


def pm() -> Any:
    import collective_test_canary.plugin as canary_plugin  # on sys.path once pytest configured

    return get_plugin_manager(load_entrypoints=False, plugins=[canary_plugin])


@pytest.fixture
def canary_daemons(tmp_path: Path, collective_broker):
    """``(start_node(**config sections), client())``: in-process daemons ``n1`` (one key,
    so several are clones of one node) that allow ``cert=admin``, and a client as admin."""
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    for sub in ("clients", "nodes"):
        (trust / sub).mkdir(parents=True)
    for name in ("admin", "n1"):
        generate_keypair(name, keys)
    shutil.copy(keys / "admin.pub", trust / "clients" / "admin.pub")
    shutil.copy(keys / "n1.pub", trust / "nodes" / "n1.pub")
    daemons: list[Daemon] = []

    def start_node(**sections: Any) -> Daemon:
        config = Config({
            "identity": "n1", "broker": {"port": collective_broker.port},
            "security": {"private_key": str(keys / "n1.key"), "trust_dir": str(trust)},
            "audit": {"file": str(tmp_path / f"audit-{len(daemons)}.jsonl")},
            "authorization": {"provider": "callers", "callers": ["cert=admin"]},
            "plugins": {"canary": {"log": str(tmp_path / "canary.log")}},
            **sections,
        }, kind="server", env={})
        daemons.append(Daemon(config, pm=pm()))
        daemons[-1].start(connect_timeout=10)
        return daemons[-1]

    client_config = Config({
        "identity": "admin-client", "broker": {"port": collective_broker.port},
        "security": {"identity": "admin", "private_key": str(keys / "admin.key"),
                     "trust_dir": str(trust)}}, kind="client", env={})
    yield start_node, (lambda: Client(client_config, pm=pm()))
    for daemon in daemons:
        daemon.stop()
