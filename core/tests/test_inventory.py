"""The registration inventory: recording, matching every filter kind, staleness with an
injected clock, persistence, and the collector's checks (without a broker)."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from collective.config import Config
from collective.filters import Filter, parse_fact
from collective.inventory import Collector, Inventory, InventoryError, data_functions
from collective.message import RegistrationMessage, encode_wire
from collective.security.base import DOMAINS
from collective.security.keys import generate_keypair, key_id, load_private_key


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reg(identity: str, *, role: str = "web", location: str = "uk", classes=None, agents=None,
        collectives=None, interval: int = 60, time_s: float = 1_700_000_000.0,
        **facts) -> RegistrationMessage:
    collectives = collectives or ["mcollective"]
    return RegistrationMessage(
        identity=identity, collective=collectives[0], collectives=collectives,
        facts={"role": role, "location": location, "os": {"family": "Debian"}, **facts},
        classes=classes if classes is not None else ["base", f"role::{role}"],
        agents=[{"name": a, "version": "1.0.0"} for a in (agents or ["rpcutil"])],
        interval=interval, time=int(time_s * 1000))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inv(tmp_path, clock) -> Inventory:
    inventory = Inventory(tmp_path / "inv.db", clock=clock)
    inventory.record(reg("web-1", agents=["rpcutil", "nrpe"]))
    inventory.record(reg("web-2", location="us", index=7))
    inventory.record(reg("db-1", role="db", classes=["base", "role::db", "mysql::server"],
                         agents=["rpcutil", "package"], collectives=["mcollective", "uk"]))
    inventory.record(reg("db-2", role="db", location="us", collectives=["us", "mcollective"]))
    yield inventory
    inventory.close()


def flt(**kw) -> Filter:
    facts = kw.pop("fact", [])
    return Filter(fact=[parse_fact(f) for f in facts], **kw)


def test_record_and_read_back(inv, clock):
    node = inv.get("web-1")
    assert node is not None
    assert node.facts["os"] == {"family": "Debian"}
    assert node.agent_names == ["rpcutil", "nrpe"]
    assert node.agents[0] == {"name": "rpcutil", "version": "1.0.0"}
    assert node.last_seen == clock.now and node.interval == 60 and not node.stale
    assert node.node_info.identity == "web-1"
    assert [n.identity for n in inv.nodes()] == ["db-1", "db-2", "web-1", "web-2"]
    assert len(inv) == 4
    assert inv.get("nope") is None


def test_update_replaces_and_older_is_ignored(inv, clock):
    clock.now += 30
    assert inv.record(reg("web-1", role="app", time_s=clock.now))
    assert inv.get("web-1").facts["role"] == "app"
    # an older registration (out of order, or replayed) changes nothing
    assert not inv.record(reg("web-1", role="web", time_s=clock.now - 60))
    assert inv.get("web-1").facts["role"] == "app"
    assert inv.get("web-1").last_seen == clock.now


@pytest.mark.parametrize(("kw", "expected"), [
    ({}, ["db-1", "db-2", "web-1", "web-2"]),
    ({"fact": ["role=web"]}, ["web-1", "web-2"]),
    ({"fact": ["role=db", "location=uk"]}, ["db-1"]),
    ({"fact": ["os.family=Debian"]}, ["db-1", "db-2", "web-1", "web-2"]),
    ({"fact": ["index>=5"]}, ["web-2"]),
    ({"fact": ["role=~^d"]}, ["db-1", "db-2"]),
    ({"cf_class": ["role::db"]}, ["db-1", "db-2"]),
    ({"cf_class": ["/mysql/"]}, ["db-1"]),
    ({"identity": ["web-1", "db-2"]}, ["db-2", "web-1"]),
    ({"identity": ["/^web/"]}, ["web-1", "web-2"]),
    ({"agent": ["nrpe"]}, ["web-1"]),
    ({"agent": ["discovery"]}, ["db-1", "db-2", "web-1", "web-2"]),  # every node answers it
    ({"agent": ["/^pack/"], "fact": ["location=uk"]}, ["db-1"]),
    ({"fact": ["missing=1"]}, []),
])
def test_match_honours_every_filter(inv, kw, expected):
    assert inv.match(flt(**kw)) == (expected, [])


def test_match_by_collective(inv):
    assert inv.match(Filter(), "uk") == (["db-1"], [])
    assert inv.match(Filter(), "us") == (["db-2"], [])
    assert inv.match(Filter(), "de") == ([], [])
    assert [n.identity for n in inv.nodes("us")] == ["db-2"]


def test_stale_after_three_intervals(inv, clock):
    clock.now += 60 * 3
    assert inv.match(Filter())[1] == []          # exactly 3 intervals: not yet
    clock.now += 1
    nodes, stale = inv.match(flt(fact=["role=web"]))
    assert nodes == ["web-1", "web-2"] and stale == ["web-1", "web-2"]  # kept AND flagged
    inv.record(reg("web-1", time_s=clock.now))
    assert inv.match(flt(fact=["role=web"])) == (["web-1", "web-2"], ["web-2"])
    assert inv.get("web-2").stale and inv.get("web-2").age == pytest.approx(181)


def test_stale_factor_and_stale_after(tmp_path, clock):
    with Inventory(tmp_path / "a.db", clock=clock, stale_factor=1.5) as inventory:
        inventory.record(reg("n1", interval=10))
        clock.now += 16
        assert inventory.match(Filter()) == (["n1"], ["n1"])
    with Inventory(tmp_path / "a.db", clock=clock, stale_after=100) as inventory:
        assert inventory.match(Filter()) == (["n1"], [])   # 16 s < 100 s
        clock.now += 100
        assert inventory.match(Filter()) == (["n1"], ["n1"])


def test_persistence_across_reopen(tmp_path, clock):
    path = tmp_path / "sub" / "inv.db"
    with Inventory(path, clock=clock) as inventory:
        inventory.record(reg("n1", agents=["rpcutil", "nrpe"]))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with Inventory(path, clock=clock, create=False) as inventory:
        assert inventory.get("n1").agent_names == ["rpcutil", "nrpe"]
        assert inventory.match(Filter(agent=["nrpe"])) == (["n1"], [])


def test_missing_file_is_a_clear_error_without_create(tmp_path):
    with pytest.raises(InventoryError, match="mco registry collect"):
        Inventory(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(InventoryError, match="junk.db"):
        Inventory(path)


def test_forget_and_prune(inv, clock):
    assert inv.forget("web-1") and not inv.forget("web-1")
    clock.now += 100
    inv.record(reg("db-1", time_s=clock.now))
    assert inv.prune(50) == ["db-2", "web-2"]
    assert [n.identity for n in inv.nodes()] == ["db-1"]


def test_record_many_in_one_transaction(tmp_path, clock):
    with Inventory(tmp_path / "m.db", clock=clock) as inventory:
        stored = inventory.record_many([reg(f"n{i}") for i in range(200)])
        assert stored == 200 and len(inventory) == 200


def test_concurrent_reader_sees_writes(tmp_path, clock):
    """WAL: a second connection (mco registry list) reads while the collector writes."""
    path = tmp_path / "w.db"
    with Inventory(path, clock=clock) as writer, Inventory(path, clock=clock) as reader:
        writer.record(reg("n1"))
        assert [n.identity for n in reader.nodes()] == ["n1"]


# -- compound (-S) ------------------------------------------------------------------------------
def test_data_functions_empty_without_compound():
    assert data_functions(Filter()) == set()


@pytest.mark.parametrize(("expr", "expected"), [
    ("role=db and not location=us", ["db-1"]),
    ("role=web or mysql::server", ["db-1", "web-1", "web-2"]),
    ("/^role::d/", ["db-1", "db-2"]),
    ("(location=us or index>=7) and !role=db", ["web-2"]),
    ("os.family=~^deb", []),
    ("os.family=/^Deb/", ["db-1", "db-2", "web-1", "web-2"]),
])
def test_compound_without_functions(inv, expr, expected):
    assert inv.match(Filter(compound=[expr])) == (expected, [])


def test_compound_is_and_ed_with_the_rest(inv):
    assert inv.match(Filter(compound=["role=db"], identity=["/-2$/"])) == (["db-2"], [])
    assert inv.match(Filter(compound=["role=db", "location=uk"])) == (["db-1"], [])


@pytest.mark.parametrize("expr", ['fstat("/etc/hosts").size>0', "role=web and puppet().enabled=true",
                                  "not sysctl('vm.swappiness')"])
def test_compound_with_data_functions_is_a_clear_error(inv, expr):
    with pytest.raises(InventoryError, match="--dm broadcast") as exc:
        inv.match(Filter(compound=[expr]))
    assert "only run on the nodes" in str(exc.value)
    assert data_functions(Filter(compound=[expr]))


def test_compound_syntax_error(inv):
    from collective.filters import FilterError

    with pytest.raises(FilterError):
        inv.match(Filter(compound=["role=web and"]))


# -- the collector's checks (no broker needed) ---------------------------------------------------
@pytest.fixture
def pki(tmp_path):
    keys, trust = tmp_path / "keys", tmp_path / "trust"
    for sub in ("clients", "nodes"):
        (trust / sub).mkdir(parents=True)
    for name, kind in (("admin", "clients"), ("n1", "nodes"), ("n2", "nodes")):
        generate_keypair(name, keys)
        shutil.copy(keys / f"{name}.pub", trust / kind / f"{name}.pub")
    generate_keypair("rogue", keys)
    return keys, trust


def signed(keys, name: str, registration: RegistrationMessage) -> bytes:
    key = load_private_key(keys / f"{name}.key")
    body = registration.to_body()
    return encode_wire("ed25519", key_id(key.public_key()),
                       key.sign(DOMAINS["registration"] + body), body)


@pytest.fixture
def collector(pki, tmp_path, clock):
    keys, trust = pki
    config = Config({"identity": "admin-client", "collectives": ["mcollective", "uk"],
                     "security": {"identity": "admin", "private_key": str(keys / "admin.key"),
                                  "trust_dir": str(trust)}}, kind="client", env={})
    inventory = Inventory(tmp_path / "c.db", clock=clock)
    yield Collector(config, inventory, clock=clock)
    inventory.close()


def test_collector_accepts_a_valid_registration(collector, pki, clock):
    keys, _ = pki
    registration = collector.check("mcollective", signed(keys, "n1", reg("n1", time_s=clock.now)))
    assert registration is not None and registration.identity == "n1"
    assert not collector.counters.refused


@pytest.mark.parametrize(("case", "reason"), [
    ("identity", "identity_mismatch"),
    ("rogue", "unknown_key"),
    ("client", "wrong_role"),
    ("future", "future"),
    ("old", "expired"),
    ("collective", "collective"),
    ("garbage", "json"),
])
def test_collector_refuses(collector, pki, clock, case, reason):
    keys, _ = pki
    now = clock.now
    wire = {
        "identity": lambda: signed(keys, "n1", reg("n2", time_s=now)),
        "rogue": lambda: signed(keys, "rogue", reg("rogue", time_s=now)),
        "client": lambda: signed(keys, "admin", reg("n1", time_s=now)),
        "future": lambda: signed(keys, "n1", reg("n1", time_s=now + 60)),
        "old": lambda: signed(keys, "n1", reg("n1", time_s=now - 60 - 11)),
        "collective": lambda: signed(keys, "n1", reg("n1", time_s=now, collectives=["uk"])),
        "garbage": lambda: b"{not json",
    }[case]()
    assert collector.check("mcollective", wire) is None
    assert collector.counters.refused == {reason: 1}
    assert collector.stats["refused"] == 1


def test_collector_refuses_unknown_collective(pki, tmp_path):
    keys, trust = pki
    config = Config({"identity": "c", "security": {"identity": "admin",
                     "private_key": str(keys / "admin.key"), "trust_dir": str(trust)}},
                    kind="client", env={})
    with pytest.raises(ValueError, match="not one of"):
        Collector(config, Inventory(tmp_path / "x.db"), collectives=["nope"])
