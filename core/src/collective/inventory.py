"""The registration inventory: a SQLite store of what nodes last said about themselves.

Nodes with ``server.registration_interval`` > 0 publish signed registrations
(:mod:`collective.server.registration`); a :class:`Collector` (``mco registry
collect``) verifies each one with the client's security provider and records it in an
:class:`Inventory`; the ``inventory`` discovery method (:mod:`collective.client.discovery`)
then answers filters from the store instantly, without a broadcast.

The store is one table, ``nodes``, keyed by identity; facts, classes, agents and
collectives are JSON text. It runs in WAL mode so ``mco registry list`` and discovery
can read while a collector writes. The file is created mode 0600 (facts may be
sensitive).

A node is *stale* when its last registration arrived more than ``stale_after``
seconds ago (``discovery.stale_after``), or by default more than ``stale_factor`` (3)
times its own registration interval. Stale nodes are still returned by
:meth:`Inventory.match`, in both lists, so callers can flag them rather than drop
them silently.

Filters are evaluated here exactly as a node evaluates them
(:meth:`collective.filters.Filter.matches`), so ``-F``, ``-C``, ``-I``, ``-A`` and
``-W`` mean the same thing; compound (``-S``) expressions work as long as they use
no data functions: those run on the node (``fstat(...)``) and cannot be answered from
the inventory, so such a filter raises :class:`InventoryError` asking for
``--dm broadcast``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .filters import Filter, NodeInfo
from .message import RegistrationMessage

log = logging.getLogger(__name__)

#: Default staleness: a node is stale after this many of its own intervals without news.
STALE_FACTOR = 3.0
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    identity        TEXT PRIMARY KEY,
    collectives     TEXT NOT NULL,   -- JSON list of collective names
    facts           TEXT NOT NULL,   -- JSON object
    classes         TEXT NOT NULL,   -- JSON list of strings
    agents          TEXT NOT NULL,   -- JSON list of {"name", "version"}
    interval        INTEGER NOT NULL,
    last_seen       REAL NOT NULL,   -- collector clock, unix seconds
    registered_time INTEGER NOT NULL -- the node's clock in the registration, unix ms
)
"""
_COLUMNS = "identity, collectives, facts, classes, agents, interval, last_seen, registered_time"


class InventoryError(ValueError):
    """The inventory cannot answer: a missing file, a corrupt store, or a filter
    (data functions) that only the nodes themselves can evaluate."""


@dataclass
class InventoryNode:
    """One node as the inventory last saw it."""

    identity: str
    collectives: list[str]
    facts: dict[str, Any]
    classes: list[str]
    agents: list[dict[str, Any]]
    interval: int
    last_seen: float
    registered_time: int
    stale: bool = False
    #: seconds since ``last_seen`` when this row was read
    age: float = 0.0

    @property
    def agent_names(self) -> list[str]:
        return [str(a.get("name")) for a in self.agents]

    @property
    def node_info(self) -> NodeInfo:
        """What :meth:`Filter.matches` needs (no data resolver: no data functions off-node)."""
        return NodeInfo(identity=self.identity, facts=self.facts, classes=list(self.classes),
                        agents=self.agent_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity, "collectives": self.collectives, "facts": self.facts,
            "classes": self.classes, "agents": self.agents, "interval": self.interval,
            "last_seen": self.last_seen, "registered_time": self.registered_time,
            "age": round(self.age, 3), "stale": self.stale,
        }


def data_functions(flt: Filter) -> set[str]:
    """The data functions (``fstat``, ``puppet`` ...) the filter's compound expressions call.

    Raises :class:`InventoryError` when the filter has compound expressions but the
    compound language is not available in this installation.
    """
    if not flt.compound:
        return set()
    try:
        from . import compound
    except ImportError:
        raise InventoryError("compound (-S) filters need collective.compound, which is not "
                             "installed here; use --dm broadcast") from None
    names: set[str] = set()
    for entry in flt.compound:
        expr = compound.parse_cached(entry) if isinstance(entry, str) else entry
        names |= set(compound.expression_functions(expr))
    return names


class Inventory:
    """The SQLite store (see the module docstring). Thread-safe: one connection, one lock.

    :param path: the database file; created (mode 0600) unless ``create=False``, in
        which case a missing file raises :class:`InventoryError`.
    :param stale_factor: a node is stale after ``stale_factor`` × its interval ...
    :param stale_after: ... or, when given, after this many seconds whatever its interval.
    :param clock: unix seconds (injected by tests).
    """

    def __init__(self, path: str | Path, stale_factor: float = STALE_FACTOR,
                 stale_after: float | None = None, clock: Any = time.time,
                 create: bool = True) -> None:
        self.path = Path(path)
        self.stale_factor = float(stale_factor)
        self.stale_after = float(stale_after) if stale_after else None
        self.clock = clock
        if not self.path.exists():
            if not create:
                raise InventoryError(f"inventory {self.path} does not exist: fill it with "
                                     f"'mco registry collect --db {self.path}'")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise InventoryError(f"inventory {self.path} has schema version {version}; this "
                                     f"collective understands {SCHEMA_VERSION}")
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise InventoryError(f"inventory {self.path}: {exc}") from None

    # -- life cycle ------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------
    def record(self, registration: RegistrationMessage, now: float | None = None) -> bool:
        """Insert or update the node; returns False (nothing changed) when the stored
        registration is newer than this one (out of order, or a replay)."""
        return self.record_many([registration], now) == 1

    def record_many(self, registrations: Iterable[RegistrationMessage],
                    now: float | None = None) -> int:
        """Record several registrations in one transaction; returns how many were stored."""
        seen = self.clock() if now is None else now
        rows = [(r.identity, json.dumps(sorted(set(r.collectives))),
                 json.dumps(r.facts, sort_keys=True, separators=(",", ":")),
                 json.dumps(list(r.classes)), json.dumps(list(r.agents)), int(r.interval),
                 float(seen), int(r.time)) for r in registrations]
        stored = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    cursor = self._db.execute(
                        f"INSERT INTO nodes ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(identity) DO UPDATE SET collectives=excluded.collectives, "
                        "facts=excluded.facts, classes=excluded.classes, agents=excluded.agents, "
                        "interval=excluded.interval, last_seen=excluded.last_seen, "
                        "registered_time=excluded.registered_time "
                        "WHERE excluded.registered_time >= nodes.registered_time", row)
                    stored += cursor.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return stored

    def forget(self, identity: str) -> bool:
        """Remove one node; True if it was there."""
        with self._lock:
            return self._db.execute("DELETE FROM nodes WHERE identity = ?", (identity,)).rowcount > 0

    def prune(self, older_than: float, now: float | None = None) -> list[str]:
        """Remove nodes not heard from for more than ``older_than`` seconds; returns them."""
        cutoff = (self.clock() if now is None else now) - float(older_than)
        with self._lock:
            gone = [row[0] for row in self._db.execute(
                "SELECT identity FROM nodes WHERE last_seen < ? ORDER BY identity", (cutoff,))]
            self._db.execute("DELETE FROM nodes WHERE last_seen < ?", (cutoff,))
        return gone

    # -- reading -----------------------------------------------------------------------
    def is_stale(self, last_seen: float, interval: int, now: float) -> bool:
        limit = self.stale_after if self.stale_after else self.stale_factor * max(1, interval)
        return now - last_seen > limit

    def _node(self, row: Sequence[Any], now: float) -> InventoryNode:
        identity, collectives, facts, classes, agents, interval, last_seen, registered = row
        try:
            node = InventoryNode(identity, json.loads(collectives), json.loads(facts),
                                 json.loads(classes), json.loads(agents), int(interval),
                                 float(last_seen), int(registered))
        except (TypeError, ValueError) as exc:
            raise InventoryError(f"inventory {self.path}: corrupt row for {identity!r}: {exc}") from None
        node.age = max(0.0, now - node.last_seen)
        node.stale = self.is_stale(node.last_seen, node.interval, now)
        return node

    def nodes(self, collective: str | None = None) -> list[InventoryNode]:
        """Every node (of ``collective``, when given), sorted by identity."""
        now = self.clock()
        with self._lock:
            try:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM nodes ORDER BY identity").fetchall()
            except sqlite3.DatabaseError as exc:
                raise InventoryError(f"inventory {self.path}: {exc}") from None
        out = [self._node(row, now) for row in rows]
        if collective is not None:
            out = [node for node in out if collective in node.collectives]
        return out

    def get(self, identity: str) -> InventoryNode | None:
        now = self.clock()
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM nodes WHERE identity = ?",
                                   (identity,)).fetchone()
        return self._node(row, now) if row else None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0])

    def match(self, flt: Filter | None, collective: str | None = None
              ) -> tuple[list[str], list[str]]:
        """``(matching identities, the stale ones among them)``, both sorted.

        Every filter kind is honoured as the node would apply it. A compound filter
        that calls data functions raises :class:`InventoryError` (use ``--dm broadcast``).
        """
        flt = flt or Filter()
        functions = data_functions(flt)
        if functions:
            raise InventoryError(
                f"the -S filter calls data function(s) {', '.join(sorted(functions))}(), which "
                f"only run on the nodes themselves; the inventory cannot answer it: use "
                f"--dm broadcast")
        # Parse only the columns the filter looks at (JSON decoding dominates the cost),
        # and let SQLite drop other collectives (names cannot contain a quote).
        wanted = {"facts": bool(flt.fact or flt.compound),
                  "classes": bool(flt.cf_class or flt.compound),
                  "agents": bool(flt.agent or flt.compound)}
        columns = ["identity", "interval", "last_seen", *(c for c, need in wanted.items() if need)]
        sql = f"SELECT {', '.join(columns)} FROM nodes"
        params: tuple[Any, ...] = ()
        if collective is not None:
            sql += " WHERE instr(collectives, ?) > 0"
            params = (json.dumps(collective),)
        now = self.clock()
        with self._lock:
            try:
                rows = self._db.execute(sql + " ORDER BY identity", params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise InventoryError(f"inventory {self.path}: {exc}") from None
        matching: list[str] = []
        stale: list[str] = []
        for row in rows:
            identity, interval, last_seen = row[0], row[1], row[2]
            values = dict(zip(columns[3:], row[3:], strict=True))
            try:
                info = NodeInfo(
                    identity=identity,
                    facts=json.loads(values["facts"]) if "facts" in values else {},
                    classes=json.loads(values["classes"]) if "classes" in values else [],
                    agents=([str(a.get("name")) for a in json.loads(values["agents"])]
                            if "agents" in values else []))
            except (TypeError, ValueError, AttributeError) as exc:
                raise InventoryError(f"inventory {self.path}: corrupt row for {identity!r}: "
                                     f"{exc}") from None
            if flt.matches(info):
                matching.append(identity)
                if self.is_stale(float(last_seen), int(interval), now):
                    stale.append(identity)
        return matching, stale


# -- the collector ---------------------------------------------------------------------------
@dataclass
class _Counters:
    received: int = 0
    recorded: int = 0
    older: int = 0
    dropped: int = 0
    refused: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "recorded": self.recorded, "older": self.older,
                "dropped": self.dropped, "refused": sum(self.refused.values()),
                "refused_by_reason": dict(self.refused)}


class Collector:
    """Subscribes to ``C.registration`` for each collective, verifies every registration
    with the client's security provider (node keys from ``trust_dir/nodes``) and records
    it in ``inventory``.

    Refused (counted by reason, logged): anything that fails verification or strict
    parsing, a registration whose ``collective`` is not the one it arrived on, and one
    whose time is in the future (beyond ``security.skew``) or older than its own
    interval plus the skew (a replay of an old registration). Registrations older than
    the stored one are ignored (counted as ``older``).

    The connector's receive thread only queues the message; one worker thread verifies
    and records, batching what is queued into one transaction. Usage::

        collector = Collector(load_config("client.yaml"), Inventory("inventory.db"))
        collector.start()      # connects and subscribes; returns at once after that
        ...
        collector.stop()
    """

    #: messages waiting for the worker; beyond this they are dropped (and counted)
    MAX_QUEUED = 50_000
    BATCH = 500

    def __init__(self, config: Any, inventory: Inventory, collectives: Sequence[str] | None = None,
                 pm: Any = None, clock: Any = time.time) -> None:
        from .plugins import get_plugin_manager, resolve

        self.config = config
        self.inventory = inventory
        self.collectives = list(collectives or config.collectives)
        for collective in self.collectives:
            if collective not in config.collectives:
                raise ValueError(f"collective {collective!r} is not one of {config.collectives}")
        self.pm = pm or get_plugin_manager()
        self.clock = clock
        self.skew = float(config["security"]["skew"])
        provider_cls = resolve(config["security"]["provider"], self.pm.security_providers(),
                               "security provider")
        self.security = provider_cls(config, role="client")
        connector_cls = resolve(config["broker"]["connector"], self.pm.connectors(), "connector")
        self.connector = connector_cls(
            config, client_id=f"collector-{config.identity}-{uuid.uuid4().hex[:8]}")
        self.counters = _Counters()
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(self.MAX_QUEUED)
        self._worker: threading.Thread | None = None
        self._processed = 0
        self._log_budget: Counter[str] = Counter()

    @property
    def stats(self) -> dict[str, Any]:
        return self.counters.as_dict()

    # -- life cycle ------------------------------------------------------------------
    def start(self, timeout: float | None = None) -> None:
        """Connect, subscribe to every collective's registration topic, start the worker.

        Raises :class:`collective.connectors.stomp.ConnectorError` if the broker cannot
        be reached within ``timeout`` (default ``broker.connect_timeout``).
        """
        from .connectors.destinations import Destination

        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="collector", daemon=True)
            self._worker.start()
        self.connector.connect(timeout=float(self.config["broker"]["connect_timeout"])
                               if timeout is None else timeout)
        for collective in self.collectives:
            self.connector.subscribe(Destination.registration(collective),
                                     self._receiver(collective))
        log.info("collecting registrations from %s into %s",
                 ", ".join(f"{c}.registration" for c in self.collectives), self.inventory.path)

    def stop(self) -> None:
        try:
            self.connector.disconnect()
        finally:
            worker, self._worker = self._worker, None
            if worker is not None:
                self._queue.put(None)
                worker.join(10)

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until everything received so far has been processed (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._processed + self.counters.dropped >= self.counters.received:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    # -- receiving -------------------------------------------------------------------
    def _receiver(self, collective: str) -> Any:
        def on_message(wire: bytes) -> None:
            self.counters.received += 1
            try:
                self._queue.put_nowait((collective, wire))
            except queue.Full:
                self.counters.dropped += 1
        return on_message

    def _refuse(self, reason: str, detail: str) -> None:
        self.counters.refused[reason] += 1
        self._log_budget[reason] += 1
        count = self._log_budget[reason]
        level = logging.WARNING if count <= 10 or count % 1000 == 0 else logging.DEBUG
        log.log(level, "refused a registration (%s, %d so far): %s", reason, count, detail)

    def check(self, collective: str, wire: bytes) -> RegistrationMessage | None:
        """Verify one registration received on ``collective``; None (counted) if refused."""
        from .message import MalformedMessage
        from .security.base import SecurityError

        try:
            _verified, registration = self.security.verify_registration(wire)
        except (SecurityError, MalformedMessage) as exc:
            self._refuse(getattr(exc, "reason", "malformed"), str(exc))
            return None
        if registration.collective != collective:
            self._refuse("collective", f"registration of {registration.identity} for "
                                       f"{registration.collective!r} arrived on {collective!r}")
            return None
        now_ms = self.clock() * 1000
        skew_ms = self.skew * 1000
        if registration.time > now_ms + skew_ms:
            self._refuse("future", f"registration of {registration.identity} is "
                                   f"{(registration.time - now_ms) / 1000:.1f}s in the future")
            return None
        if registration.time < now_ms - skew_ms - registration.interval * 1000:
            self._refuse("expired", f"registration of {registration.identity} is "
                                    f"{(now_ms - registration.time) / 1000:.1f}s old "
                                    f"(interval {registration.interval}s)")
            return None
        return registration

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            try:
                accepted = [r for r in (self.check(c, w) for c, w in
                                        (i for i in batch if i is not None)) if r is not None]
                if accepted:
                    stored = self.inventory.record_many(accepted, now=self.clock())
                    self.counters.recorded += stored
                    self.counters.older += len(accepted) - stored
            except Exception:  # a broken store must not kill the collector silently
                log.exception("could not record %d registration(s)", len(batch))
            finally:
                self._processed += sum(1 for i in batch if i is not None)
            if stop:
                return
