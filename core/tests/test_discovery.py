"""Discovery methods: node lists, method resolution, and broadcast / inventory discovery
against in-process daemons on an embedded broker (registration → collector → inventory)."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest

from collective.client import Client
from collective.client.discovery import (
    Discovered,
    DiscoveryError,
    InventoryDiscovery,
    discover,
    read_nodes,
)
from collective.config import Config
from collective.filters import Filter, parse_fact
from collective.inventory import Collector, Inventory
from collective.plugins import PluginError, get_plugin_manager
from collective.security.keys import generate_keypair
from collective.server.daemon import Daemon


# -- read_nodes ---------------------------------------------------------------------------------
def test_read_nodes_text(tmp_path):
    path = tmp_path / "nodes.txt"
    path.write_text("# web servers\nweb-1\n\n  web-2  # the second one\nweb-1\n\t\ndb.example.com\n")
    assert read_nodes(path) == ["web-1", "web-2", "db.example.com"]
    assert read_nodes(str(path)) == ["web-1", "web-2", "db.example.com"]


def test_read_nodes_json_strings_as_mco_find_prints():
    assert read_nodes(io.StringIO(json.dumps(["a", "b", "a"], indent=2))) == ["a", "b"]


def test_read_nodes_json_reply_objects_as_mco_rpc_prints():
    replies = [{"sender": "n2", "statuscode": 0, "data": {}}, {"sender": "n1", "statuscode": 1}]
    assert read_nodes(io.StringIO("\n " + json.dumps(replies))) == ["n2", "n1"]


def test_read_nodes_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("x1\nx2\n"))
    assert read_nodes("-") == ["x1", "x2"]


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing\n", "[]", "  []  "])
def test_read_nodes_empty(text):
    assert read_nodes(io.StringIO(text)) == []


@pytest.mark.parametrize(("text", "where"), [
    ("good\nbad node\n", "line 2"),
    ("ok\n\n# c\n../etc/passwd\n", "line 4"),
    ("-leading-dash\n", "line 1"),
    ("x" * 65 + "\n", "line 1"),
    ('["a", "b c"]', "item 2"),
    ('["a", 3]', "item 2"),
    ('[{"sender": "a"}, {"statuscode": 0}]', "item 2"),
    ('[{"sender": "a"}, {"sender": "a/b"}]', "item 2"),
    ('[null]', "item 1"),
])
def test_read_nodes_bad_entries_name_their_position(text, where):
    with pytest.raises(DiscoveryError, match=where):
        read_nodes(io.StringIO(text))


@pytest.mark.parametrize(("text", "match"), [
    ('["a", ', "invalid JSON at line 1"),
    ('[1, 2', "invalid JSON"),
])
def test_read_nodes_bad_json(text, match):
    with pytest.raises(DiscoveryError, match=match):
        read_nodes(io.StringIO(text))


def test_read_nodes_missing_file(tmp_path):
    with pytest.raises(DiscoveryError, match="cannot read the node list"):
        read_nodes(tmp_path / "nope.txt")


# -- resolution and options (no broker) ------------------------------------------------------------
class StubClient:
    def __init__(self, config: Config | None = None) -> None:
        self.pm = get_plugin_manager(load_entrypoints=False)
        self.config = config or Config({}, kind="client", env={})
        self.collective = self.config.main_collective


def test_builtin_methods_are_registered():
    methods = get_plugin_manager(load_entrypoints=False).discovery_methods()
    assert {"broadcast", "mc", "inventory", "flatfile", "nodes"} <= set(methods)


def test_unknown_method_did_you_mean():
    with pytest.raises(PluginError, match="Did you mean 'inventory'"):
        discover(StubClient(), "inventroy", Filter(), 1.0, {})


def test_unknown_option_is_refused():
    with pytest.raises(DiscoveryError, match="no option 'dbb'.*known: db, stale_after"):
        discover(StubClient(), "inventory", Filter(), 1.0, {"dbb": "x"})


def test_nodes_and_flatfile(tmp_path):
    path = tmp_path / "n.txt"
    path.write_text("web-1\nweb-2\ndb-1\n")
    found = discover(StubClient(), "nodes", Filter(identity=["/^web/"]), None, {"file": str(path)})
    assert found == Discovered(["web-1", "web-2", "db-1"], [], "nodes")  # verbatim
    found = discover(StubClient(), "flatfile", Filter(identity=["/^web/"]), None, {"file": str(path)})
    assert found == Discovered(["web-1", "web-2"], [], "flatfile")
    with pytest.raises(DiscoveryError, match="needs the option file"):
        discover(StubClient(), "nodes", Filter(), None, {})


def test_inventory_needs_a_db(tmp_path):
    with pytest.raises(DiscoveryError, match="discovery.inventory"):
        discover(StubClient(), "inventory", Filter(), None, {})
    with pytest.raises(DiscoveryError, match="does not exist"):
        discover(StubClient(), "inventory", Filter(), None, {"db": str(tmp_path / "none.db")})
    assert not (tmp_path / "none.db").exists()


def test_inventory_from_config_key(tmp_path):
    from collective.message import RegistrationMessage

    db = tmp_path / "inv.db"
    with Inventory(db) as inventory:
        inventory.record(RegistrationMessage.new(
            identity="n1", collective="mcollective", collectives=["mcollective"], facts={"a": 1},
            classes=[], agents=[], interval=60))
    config = Config({"discovery": {"inventory": str(db), "stale_after": 1000}}, kind="client", env={})
    found = discover(StubClient(config), "inventory", Filter(fact=[parse_fact("a=1")]), None, {})
    assert found == Discovered(["n1"], [], "inventory")
    assert InventoryDiscovery(StubClient(config), {}).inventory().stale_after == 1000


# -- in-process fleet -----------------------------------------------------------------------------
NODES = {
    "web-1": ({"role": "web", "location": "uk"}, ["base", "role::web"]),
    "db-1": ({"role": "db", "location": "us"}, ["base", "role::db"]),
}


class Fleet:
    def __init__(self, tmp: Path, port: int) -> None:
        import collective_test_canary.plugin as canary_plugin

        self.tmp = tmp
        self.broker = {"port": port, "heartbeat_ms": 2000}
        keys, trust = tmp / "keys", tmp / "trust"
        for sub in ("clients", "nodes"):
            (trust / sub).mkdir(parents=True)
        generate_keypair("admin", keys)
        shutil.copy(keys / "admin.pub", trust / "clients" / "admin.pub")
        self.daemons: dict[str, Daemon] = {}
        for identity, (facts, classes) in NODES.items():
            generate_keypair(identity, keys)
            shutil.copy(keys / f"{identity}.pub", trust / "nodes" / f"{identity}.pub")
            (tmp / f"{identity}.classes").write_text("\n".join(classes) + "\n")
            plugins = [canary_plugin] if identity == "web-1" else []
            cfg = Config({
                "identity": identity, "broker": self.broker,
                "security": {"private_key": str(keys / f"{identity}.key"), "trust_dir": str(trust)},
                "facts": {"static": facts}, "classes_file": str(tmp / f"{identity}.classes"),
                "audit": {"file": str(tmp / f"{identity}.audit")},
                "server": {"registration_interval": 1},
                "plugins": {"canary": {"log": str(tmp / "canary.log")}},
            }, kind="server", env={})
            daemon = Daemon(cfg, pm=get_plugin_manager(load_entrypoints=False, plugins=plugins))
            daemon.start(connect_timeout=10)
            self.daemons[identity] = daemon
        self.db = tmp / "inventory.db"
        self.config = Config({
            "identity": "admin-client", "broker": self.broker,
            "security": {"identity": "admin", "private_key": str(keys / "admin.key"),
                         "trust_dir": str(trust)},
            "discovery": {"inventory": str(self.db), "timeout": 3.0},
        }, kind="client", env={})
        self.inventory = Inventory(self.db)
        self.collector = Collector(self.config, self.inventory,
                                   pm=get_plugin_manager(load_entrypoints=False))
        self.collector.start(timeout=10)

    def client(self) -> Client:
        return Client(self.config, pm=get_plugin_manager(load_entrypoints=False))

    def stop(self) -> None:
        self.collector.stop()
        self.inventory.close()
        for daemon in self.daemons.values():
            daemon.stop()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def fleet(tmp_path, collective_broker):
    env = Fleet(tmp_path, collective_broker.port)
    yield env
    env.stop()


def test_inventory_discovery_end_to_end(fleet):
    assert wait_for(lambda: len(fleet.inventory) == 2), fleet.collector.stats
    assert fleet.collector.stats["refused"] == 0
    node = fleet.inventory.get("web-1")
    assert node.classes == ["base", "role::web"] and node.interval == 1
    assert "canary" in node.agent_names and "rpcutil" in node.agent_names
    client = fleet.client()

    def names(flt: Filter, **options) -> list[str]:
        found = discover(client, "inventory", flt, None, options)
        assert found.method == "inventory"
        return found.nodes

    assert names(Filter()) == ["db-1", "web-1"]
    assert names(Filter(fact=[parse_fact("role=web")])) == ["web-1"]
    assert names(Filter(fact=[parse_fact("location=us")], cf_class=["role::db"])) == ["db-1"]
    assert names(Filter(cf_class=["/^role::/"])) == ["db-1", "web-1"]
    assert names(Filter(identity=["/^db/"])) == ["db-1"]
    assert names(Filter(agent=["canary"])) == ["web-1"]
    assert names(Filter(agent=["nope"])) == []
    # the same answers as broadcast discovery
    for flt in (Filter(fact=[parse_fact("role=web")]), Filter(agent=["canary"]), Filter()):
        assert discover(client, "broadcast", flt, 2.0, {"window": 0.5}).nodes == names(flt)

    # compound (-S) expressions without data functions work from the inventory too
    both = Filter(compound=["role=web or role::db"])
    assert names(both) == ["db-1", "web-1"]
    assert names(Filter(compound=["not location=uk"])) == ["db-1"]
    with pytest.raises(DiscoveryError, match="--dm broadcast"):
        names(Filter(compound=['fstat("/etc/hosts").size>0']))

    # stop db-1: after 3 intervals without a registration it is flagged, not dropped
    fleet.daemons["db-1"].stop()
    assert wait_for(lambda: discover(client, "inventory", Filter(), None, {}).stale == ["db-1"],
                    timeout=8)
    found = discover(client, "inventory", Filter(), None, {})
    assert found.nodes == ["db-1", "web-1"] and found.stale == ["db-1"]
    assert not fleet.inventory.get("web-1").stale  # still registering
    client.close()


def test_broadcast_with_a_window_ends_early(fleet):
    client = fleet.client()
    try:
        started = time.monotonic()
        found = discover(client, "broadcast", Filter(), 10.0, {"window": 0.5})
        elapsed = time.monotonic() - started
        assert found.nodes == ["db-1", "web-1"] and found.method == "broadcast"
        assert elapsed < 3.0, elapsed
        started = time.monotonic()
        found = discover(client, "mc", Filter(fact=[parse_fact("role=db")]), 1.0, {})
        assert found.nodes == ["db-1"]
        assert time.monotonic() - started >= 0.9  # no window: the full discovery timeout
        # exact identities need no broadcast at all
        started = time.monotonic()
        assert discover(client, "broadcast", Filter(identity=["x", "db-1"]), 10.0, {}).nodes == [
            "db-1", "x"]
        assert time.monotonic() - started < 0.5
    finally:
        client.close()
