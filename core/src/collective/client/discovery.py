"""Discovery methods: how the client learns which nodes a filter selects.

Each method is a class registered through the ``collective_discovery_methods`` hook
(the built-in ones in :mod:`collective.builtins`), with a ``name``, a constructor
``(client, options: dict)`` and ``discover(filter, timeout) -> Discovered``:

``broadcast`` (alias ``mc``)
    The discovery ping (:meth:`Client.request` to the ``discovery`` agent). Ends at
    the discovery timeout, or — with the option ``window`` (seconds) — as soon as no
    new reply arrived for that long (``quiet_window``). A filter of exact identities
    needs no broadcast at all.
``inventory``
    Answers from the SQLite store ``mco registry collect`` fills (option ``db``, else
    config ``discovery.inventory``). Instant. Stale nodes (no registration for 3
    intervals, or ``discovery.stale_after`` / option ``stale_after`` seconds) are in
    ``nodes`` *and* in ``stale``, so the CLI can flag them; they are never dropped
    silently. A ``-S`` filter calling data functions is refused (use ``broadcast``).
``flatfile``
    Identities from a file (option ``file``; ``-`` is stdin), narrowed by the filter's
    identity entries as MCollective's flatfile method did; other filter kinds cannot be
    answered from a list and are checked by the nodes when the request arrives.
``nodes``
    Identities from a file or stdin, verbatim: ``--nodes FILE|-`` means "address
    exactly these", no discovery at all.

Both file methods read :func:`read_nodes`: one identity per line (``#`` comments and
blank lines ignored), or the JSON ``mco find --json`` (a list of strings) or
``mco rpc --json`` (a list of objects with ``sender``) prints — so results chain:
``mco rpc ... --json | mco rpc ... --nodes -``.

Wiring into the CLI (for ``mco rpc``/``find``/``ping``)::

    from collective.client.discovery import discover
    options = dict(kv.split("=", 1) for kv in do_options)        # --do key=value
    if nodes_file is not None:                                   # --nodes FILE|-
        found = discover(client, "nodes", flt, dt, {"file": nodes_file})
    else:
        if window is not None:                                   # --discovery-window S
            options["window"] = window
        method = dm or client.config["discovery"]["method"]      # --dm NAME
        found = discover(client, method, flt, dt, options)
    for node in found.stale:
        warn(f"{node}: inventory data is stale (last registration {age} ago)")
    result = client.request(agent, action, data, filter=flt, targets=found.nodes, ...)

A method raises :class:`DiscoveryError` (a :class:`~collective.client.errors.ClientError`
and a ``ValueError``)
with one clear line when it cannot answer; :func:`discover` raises
:class:`~collective.plugins.PluginError` with a "did you mean" hint for an unknown
method name.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TextIO

from ..filters import Filter, NodeInfo
from ..names import IDENTITY_RE
from .errors import ClientError

log = logging.getLogger(__name__)

#: Largest node list read from a file or stdin.
MAX_NODES_BYTES = 16 * 1024 * 1024


class DiscoveryError(ClientError, ValueError):
    """Discovery could not run; the message says why and what to do instead (also a
    ``ValueError``, so a bad node list is caught like any other bad input)."""


@dataclass
class Discovered:
    """The outcome of discovery: ``nodes`` to address (stale ones included), the
    ``stale`` subset, and the ``method`` that produced them."""

    nodes: list[str]
    stale: list[str] = field(default_factory=list)
    method: str = ""

    def __iter__(self) -> Any:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)


# -- reading node lists ----------------------------------------------------------------------
def _check_identity(value: Any, where: str) -> str:
    if not isinstance(value, str) or not IDENTITY_RE.fullmatch(value):
        raise DiscoveryError(f"{where}: {value!r} is not a valid node identity "
                             f"(letters, digits, '_', '.', '-'; at most 64 characters)")
    return value


def _json_nodes(text: str, name: str) -> list[str]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DiscoveryError(f"{name}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                             f"{exc.msg}") from None
    if not isinstance(doc, list):
        raise DiscoveryError(f"{name}: expected a JSON list of identities or of replies with "
                             f"a 'sender', got a {type(doc).__name__}")
    out = []
    for index, item in enumerate(doc):
        where = f"{name}: item {index + 1}"
        if isinstance(item, Mapping):
            if "sender" not in item:
                raise DiscoveryError(f"{where}: an object without a 'sender' key")
            item = item["sender"]
        out.append(_check_identity(item, where))
    return out


def _text_nodes(text: str, name: str) -> list[str]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            out.append(_check_identity(entry, f"{name}: line {number}"))
    return out


def read_nodes(source: str | Path | TextIO) -> list[str]:
    """Identities from a file (``"-"`` is stdin), a path, or an open text stream.

    Plain text: one identity per line; ``#`` starts a comment; blank lines are ignored.
    JSON (the input starts with ``[``): a list of identities (``mco find --json``) or
    of objects with a ``sender`` key (``mco rpc --json``). Duplicates are dropped, the
    first order kept. A bad entry raises :class:`DiscoveryError` naming its line or
    item. Empty input gives ``[]``.
    """
    if isinstance(source, io.TextIOBase) or hasattr(source, "read"):
        name = getattr(source, "name", "<stream>")
        text = source.read(MAX_NODES_BYTES + 1)  # type: ignore[union-attr]
    elif str(source) == "-":
        name = "<stdin>"
        text = sys.stdin.read(MAX_NODES_BYTES + 1)
    else:
        name = str(source)
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read(MAX_NODES_BYTES + 1)
        except OSError as exc:
            raise DiscoveryError(f"cannot read the node list {name}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise DiscoveryError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    if len(text) > MAX_NODES_BYTES:
        raise DiscoveryError(f"{name}: the node list is larger than {MAX_NODES_BYTES} bytes")
    stripped = text.lstrip("\ufeff \t\r\n")
    nodes = _json_nodes(stripped, name) if stripped.startswith("[") else _text_nodes(text, name)
    return list(dict.fromkeys(nodes))


# -- the methods -----------------------------------------------------------------------------
class DiscoveryMethod:
    """Base class: ``name``, ``__init__(client, options)``, ``discover(filter, timeout)``."""

    name: ClassVar[str]
    #: option names this method understands (others are refused, with this list)
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, client: Any, options: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.opts = dict(options or {})
        unknown = sorted(set(self.opts) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise DiscoveryError(f"discovery method {self.name!r} has no option "
                                 f"{', '.join(map(repr, unknown))} (known: {known})")

    def discover(self, flt: Filter | None, timeout: float | None) -> Discovered:
        raise NotImplementedError

    def _float_option(self, key: str) -> float | None:
        value = self.opts.get(key)
        if value is None or value == "":
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise DiscoveryError(f"discovery option {key}={value!r} is not a number") from None
        if number <= 0:
            raise DiscoveryError(f"discovery option {key}={value!r} must be positive")
        return number


class BroadcastDiscovery(DiscoveryMethod):
    """The discovery ping; option ``window``: end once no new reply came for that long."""

    name = "broadcast"
    options = ("window",)

    def discover(self, flt: Filter | None, timeout: float | None) -> Discovered:
        flt = flt or Filter()
        if flt.is_identity_only():
            return Discovered(sorted(set(flt.identity)), [], self.name)
        result = self.client.request(
            "discovery", "ping", {}, filter=flt, timeout=self.client.discovery_timeout(timeout),
            quiet_window=self._float_option("window"))
        return Discovered(sorted({reply.sender for reply in result if reply.ok}), [], self.name)


class McDiscovery(BroadcastDiscovery):
    """MCollective's name for broadcast discovery."""

    name = "mc"


class InventoryDiscovery(DiscoveryMethod):
    """Answers from the registration inventory (options ``db``, ``stale_after``)."""

    name = "inventory"
    options = ("db", "stale_after")

    def inventory(self) -> Any:
        from ..inventory import Inventory, InventoryError

        config = self.client.config
        db = self.opts.get("db") or config.get("discovery.inventory")
        if not db:
            raise DiscoveryError("inventory discovery needs an inventory: set discovery.inventory "
                                 "in the client config or pass the option db=FILE, and fill it "
                                 "with 'mco registry collect --db FILE'")
        stale_after = self._float_option("stale_after") or config.get("discovery.stale_after")
        try:
            return Inventory(db, stale_after=stale_after, create=False)
        except InventoryError as exc:
            raise DiscoveryError(str(exc)) from None

    def discover(self, flt: Filter | None, timeout: float | None) -> Discovered:
        from ..inventory import InventoryError

        inventory = self.inventory()
        try:
            nodes, stale = inventory.match(flt or Filter(), self.client.collective)
        except InventoryError as exc:
            raise DiscoveryError(str(exc)) from None
        finally:
            inventory.close()
        if stale:
            log.info("inventory: %d of %d matching node(s) are stale: %s", len(stale), len(nodes),
                     ", ".join(stale[:10]))
        return Discovered(nodes, stale, self.name)


class NodesDiscovery(DiscoveryMethod):
    """``--nodes FILE|-``: exactly the identities listed (option ``file``), no discovery."""

    name = "nodes"
    options = ("file",)

    def source(self) -> Any:
        source = self.opts.get("file")
        if source is None or source == "":
            raise DiscoveryError(f"discovery method {self.name!r} needs the option file=PATH "
                                 f"(or '-' for stdin)")
        return source

    def discover(self, flt: Filter | None, timeout: float | None) -> Discovered:
        return Discovered(read_nodes(self.source()), [], self.name)


class FlatfileDiscovery(NodesDiscovery):
    """Identities from a file, narrowed by the filter's identity entries (MCollective's
    ``flatfile``); fact, class, agent and compound filters are left to the nodes."""

    name = "flatfile"

    def discover(self, flt: Filter | None, timeout: float | None) -> Discovered:
        nodes = read_nodes(self.source())
        flt = flt or Filter()
        if flt.identity:
            by_identity = Filter(identity=list(flt.identity))
            nodes = [n for n in nodes if by_identity.matches(NodeInfo(identity=n))]
        if flt.fact or flt.cf_class or flt.agent or flt.compound:
            log.info("flatfile discovery: fact/class/agent/compound filters are checked by the "
                     "nodes when the request arrives, not here")
        return Discovered(nodes, [], self.name)


class StdinDiscovery(FlatfileDiscovery):
    """``--dm stdin``: identities (text or ``mco --json`` output) read from standard
    input, narrowed by the filter's identity entries, as MCollective's ``stdin`` method."""

    name = "stdin"
    options = ()

    def source(self) -> Any:
        return "-"


BUILTIN_METHODS: tuple[type[DiscoveryMethod], ...] = (
    BroadcastDiscovery, McDiscovery, InventoryDiscovery, FlatfileDiscovery, NodesDiscovery,
    StdinDiscovery)


def discover(client: Any, method: str, flt: Filter | None, timeout: float | None = None,
             options: Mapping[str, Any] | None = None) -> Discovered:
    """Run discovery method ``method`` (resolved through the plugin registry; an unknown
    name raises :class:`~collective.plugins.PluginError` with a "did you mean" hint)."""
    from ..plugins import resolve

    cls = resolve(method, client.pm.discovery_methods(), "discovery method")
    found = cls(client, dict(options or {})).discover(flt, timeout)
    if not found.method:
        found.method = method
    return found


__all__ = [
    "BUILTIN_METHODS", "BroadcastDiscovery", "Discovered", "DiscoveryError", "DiscoveryMethod",
    "FlatfileDiscovery", "InventoryDiscovery", "McDiscovery", "NodesDiscovery", "StdinDiscovery",
    "discover",
    "read_nodes",
]
