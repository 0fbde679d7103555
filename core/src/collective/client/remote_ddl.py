"""DDLs travel, code never does: an agent's DDL fetched from the nodes.

A client without an agent's plugin asks the nodes the request targets for the DDL
they validate that agent with (``rpcutil agent_ddl``), in two steps:

1. every targeted node (``-I`` nodes directly; otherwise a broadcast with the
   request's filter plus ``-A AGENT``) reports only the version and sha256 of its
   DDL, so a large fleet sends a few bytes each;
2. one node that reported the chosen DDL sends the document, unless the cache has
   it already (``collective.client.ddl_cache``).

When nodes disagree the client validates with the DDL *most* of the targeted nodes
report (ties: the newest version): it best predicts what those nodes will accept,
and one odd or hostile node cannot choose it. A warning lists every version with its
nodes. An installed DDL always wins; nothing is fetched then.

A fetched DDL is untrusted data even though it arrives in a signed reply (a node can
be compromised), so :func:`check_untrusted` bounds it: at most
:data:`MAX_DDL_BYTES`, the meta-schema, the agent's own name, a plain version, no
control characters (nothing reaches the terminal through ``mco plugin doc``), no
``$ref`` (nothing is ever resolved), plain printf aggregate formats, and the sha256
the node reported. It can only narrow what the client sends: the client fills in no
defaults from it, and inputs it does not declare are refused. Formats the agent's
plugin registers (``nrpe_arguments``) are not checked here, with a warning; every
node validates the request again with its own installed DDL.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..ddl import AgentDDL, DDLError, canonical_json, ddl_digest
from ..names import AGENT_RE
from .ddl_cache import CacheEntry, DDLCache

log = logging.getLogger(__name__)

#: the largest DDL document accepted from a node (canonical JSON bytes)
MAX_DDL_BYTES = 256 * 1024
#: a broadcast ask ends this long after the last reply (or at ``ddl.fetch_timeout``)
QUIET_WINDOW = 0.5
#: nodes tried in turn for the document before giving up
MAX_DOWNLOAD_TRIES = 3
#: nodes named per version in the disagreement warning
SHOW_NODES = 5

_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+){0,2}(?:[-+][0-9A-Za-z.+-]{1,64})?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: C0 and C1 controls (but newline and tab) and the bidirectional overrides
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_DIRECTIVE = re.compile(r"%[^A-Za-z%]{0,20}[A-Za-z%]?")
_PLAIN_DIRECTIVE = re.compile(r"%%|%[-+ #0]{0,4}[0-9]{0,3}(?:\.[0-9]{1,3})?[sdifFeEgGxXo]")


@dataclass
class DDLSource:
    """Where the DDL a client uses for one agent came from."""

    agent: str
    #: ``installed`` (a plugin on this machine), ``cache`` or ``nodes`` (fetched now)
    origin: str
    version: str
    sha256: str
    #: the installed DDL file or the cache file (None when it could not be cached)
    location: str | None = None
    #: the nodes that reported this DDL (when it was fetched or last confirmed)
    nodes: list[str] = field(default_factory=list)
    #: label (``0.1.0``, or ``0.1.0 (sha256 1a2b3c4d5e6f)`` when one version has two
    #: documents) -> nodes, for every DDL the asked nodes reported; empty when none were asked
    versions: dict[str, list[str]] = field(default_factory=dict)
    #: when it was first fetched (epoch seconds); None for an installed DDL
    fetched_at: float | None = None
    #: when the nodes last confirmed it (epoch seconds); None for an installed DDL
    confirmed_at: float | None = None

    @property
    def fetched(self) -> bool:
        """True unless the DDL is installed here."""
        return self.origin != "installed"

    def describe(self) -> str:
        """One line: what ``mco plugin doc`` says about where the DDL came from."""
        if self.origin == "installed":
            return f"DDL of {self.agent} {self.version}: installed here ({self.location})"
        head = f"DDL of {self.agent} {self.version} (sha256 {self.sha256[:12]}): not installed here; "
        nodes = _node_list(self.nodes) or "the nodes"
        if self.origin == "nodes":
            where = f"; cached in {self.location}" if self.location else " (not cached)"
            return head + f"fetched just now from {nodes}{where}"
        fetched = _when(self.fetched_at)
        if self.versions:
            return head + f"from the cache {self.location} (fetched {fetched}), confirmed just now by {nodes}"
        return (head + f"from the cache {self.location}: fetched from {nodes} {fetched}, "
                f"last confirmed by the nodes {_when(self.confirmed_at)}")


def _when(epoch: float | None) -> str:
    return "at " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch or time.time()))


# -- checking an untrusted document ------------------------------------------------------


def _strings(doc: Any) -> Iterable[str]:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, value in item.items():
                yield str(key)
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def _plain_printf(text: str) -> bool:
    return all(_PLAIN_DIRECTIVE.fullmatch(d) for d in _DIRECTIVE.findall(text))


def check_untrusted(doc: Any, agent: str, sha256: str | None = None, source: str = "") -> None:
    """Refuse a DDL document from a node unless it is safe to use as data here.

    The meta-schema check comes after, in :func:`load_untrusted`.

    :param sha256: the digest the node reported; the document must have it
    :raises DDLError: with one clear reason
    """
    where = source or f"the DDL of {agent}"
    if not isinstance(doc, dict):
        raise DDLError(f"{where}: (top level): a DDL must be a JSON object")
    try:
        size = len(canonical_json(doc))
    except (TypeError, ValueError) as exc:
        raise DDLError(f"{where}: not plain JSON data: {exc}") from None
    if size > MAX_DDL_BYTES:
        raise DDLError(f"{where}: {size} bytes, more than the {MAX_DDL_BYTES} a fetched DDL may have")
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not AGENT_RE.fullmatch(name):
        raise DDLError(f"{where}: metadata.name: {name!r} is not an agent name")
    if name != agent:
        raise DDLError(f"{where}: metadata.name: {name!r} is not the agent that was asked for ({agent!r})")
    version = meta.get("version") if isinstance(meta, dict) else None
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise DDLError(f"{where}: metadata.version: {version!r} is not a plain version such as 1.2.3")
    for text in _strings(doc):
        if _CONTROL.search(text):
            raise DDLError(f"{where}: a string contains a control character: {text[:40]!r}")
    actions = doc.get("actions")
    for i, spec in enumerate(actions if isinstance(actions, list) else []):
        if not isinstance(spec, dict):
            continue
        _check_refs(spec.get("input"), f"{where}: actions[{i}].input")
        aggregates = spec.get("aggregate")
        for j, agg in enumerate(aggregates if isinstance(aggregates, list) else []):
            fmt = agg.get("format") if isinstance(agg, dict) else None
            if isinstance(fmt, str) and not _plain_printf(fmt):
                raise DDLError(f"{where}: actions[{i}].aggregate[{j}].format: {fmt!r} is not a plain "
                               "printf format (%s, %d, %5.2f, at most 3 digits of width)")
    if sha256 is not None and ddl_digest(doc) != sha256:
        raise DDLError(f"{where}: its sha256 is not the {sha256[:12]}... the node reported")


def _check_refs(schema: Any, where: str) -> None:
    """No ``$ref``, ``$id``, ``$anchor``, ... in a fetched input schema: nothing to resolve."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and key.startswith("$") and key != "$comment":
                    raise DDLError(f"{where}: {key} is not allowed in a DDL fetched from a node")
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def load_untrusted(doc: Any, agent: str, formats: Any = None, sha256: str | None = None,
                   source: str | None = None) -> AgentDDL:
    """:func:`check_untrusted`, then the meta-schema, with unknown formats left unchecked.

    :raises DDLError: naming the source and the reason
    """
    label = source or f"the DDL of {agent} from the nodes"
    check_untrusted(doc, agent, sha256, label)
    return AgentDDL.load(doc, formats=formats, source=label, unknown_formats="skip")


# -- what the nodes reported -------------------------------------------------------------


def version_key(version: str) -> tuple[Any, ...]:
    """Orders versions: release numbers, then a release above its pre-releases."""
    core, _, build = version.partition("+")
    release, dash, pre = core.partition("-")
    numbers = tuple(int(n) for n in release.split(".") if n.isdigit())
    return (numbers + (0,) * (3 - len(numbers)), 0 if dash else 1, pre, build)


def ranked(groups: Mapping[tuple[str, str], list[str]]) -> list[tuple[str, str]]:
    """The reported DDLs, best first: most nodes, then the newest version, then the
    smaller sha256 (so the choice never depends on reply order)."""
    keys = sorted(groups, key=lambda key: key[1])
    keys.sort(key=lambda key: version_key(key[0]), reverse=True)
    keys.sort(key=lambda key: len(groups[key]), reverse=True)
    return keys


def group_reports(replies: Iterable[Any], agent: str) -> tuple[dict[tuple[str, str], list[str]],
                                                                dict[str, str]]:
    """``{(version, sha256): [nodes]}`` from ``agent_ddl`` replies, and ``{node: why}``
    for the replies that report nothing usable (no such agent, an old node, garbage)."""
    groups: dict[tuple[str, str], list[str]] = {}
    ignored: dict[str, str] = {}
    for reply in replies:
        if not reply.ok:
            ignored[reply.sender] = f"status {reply.statuscode}: {reply.statusmsg}"
            continue
        data = reply.data if isinstance(reply.data, Mapping) else {}
        version, sha256 = data.get("version"), data.get("sha256")
        if data.get("agent") != agent or not isinstance(version, str) or not isinstance(sha256, str) \
                or not _VERSION.fullmatch(version) or not _SHA256.fullmatch(sha256):
            ignored[reply.sender] = "the reply does not name a version and sha256 of this agent"
            continue
        groups.setdefault((version, sha256), []).append(reply.sender)
    return {key: sorted(nodes) for key, nodes in groups.items()}, ignored


def choose(groups: Mapping[tuple[str, str], list[str]]) -> tuple[str, str]:
    """The DDL most nodes report; ties go to the newest version, then the smaller sha256."""
    if not groups:
        raise ValueError("no DDL reported")
    return ranked(groups)[0]


def labels(groups: Mapping[tuple[str, str], list[str]]) -> dict[str, list[str]]:
    """``version`` (or ``version (sha256 …)`` when one version has two documents) -> nodes,
    best first (:func:`ranked`)."""
    return {_label(key, groups): groups[key] for key in ranked(groups)}


def _label(key: tuple[str, str], groups: Mapping[tuple[str, str], list[str]]) -> str:
    version, sha256 = key
    twins = sum(1 for other, _ in groups if other == version)
    return version if twins == 1 else f"{version} (sha256 {sha256[:12]})"


def _node_list(nodes: list[str]) -> str:
    shown = ", ".join(nodes[:SHOW_NODES])
    return shown + (f" and {len(nodes) - SHOW_NODES} more" if len(nodes) > SHOW_NODES else "")


def disagreement_text(agent: str, groups: Mapping[tuple[str, str], list[str]],
                      chosen: tuple[str, str]) -> str:
    """The warning shown when the nodes report more than one DDL of ``agent``."""
    parts = "; ".join(f"{label} on {_node_list(nodes)}" for label, nodes in labels(groups).items())
    return (f"Warning: the nodes report {len(groups)} different DDLs of agent {agent}: {parts}. "
            f"Validating with {_label(chosen, groups)}, the one most of them have; every node still "
            "validates with its own.")


# -- asking the nodes ----------------------------------------------------------------------


def _targets(agent: str, flt: Any, nodes: Iterable[str] | None) -> tuple[Any, list[str] | None]:
    from ..filters import Filter

    flt = flt or Filter()
    if nodes is not None:
        return flt, sorted(set(nodes))
    if flt.is_identity_only():
        return flt, sorted(set(flt.identity))
    if agent in flt.agent:
        return flt, None
    return dataclasses.replace(flt, agent=[*flt.agent, agent]), None


def ask(client: Any, agent: str, flt: Any = None, nodes: Iterable[str] | None = None,
        timeout: float = 2.0) -> tuple[dict[tuple[str, str], list[str]], dict[str, str]]:
    """Step 1: the version and sha256 of ``agent``'s DDL on every targeted node.

    :returns: ``(groups, ignored)`` as :func:`group_reports`
    """
    data = client.validate("rpcutil", "agent_ddl", {"agent": agent, "document": False})
    flt, targets = _targets(agent, flt, nodes)
    log.debug("asking %s for the DDL version of %s", ", ".join(targets) if targets else "the nodes",
              agent)
    result = client.request("rpcutil", "agent_ddl", data, filter=flt, targets=targets,
                            timeout=timeout, quiet_window=None if targets else QUIET_WINDOW)
    return group_reports(result.replies, agent)


def download(client: Any, agent: str, version: str, sha256: str, nodes: list[str],
             formats: Any, timeout: float = 2.0) -> tuple[dict[str, Any], AgentDDL, str]:
    """Step 2: the document from one of ``nodes`` (up to :data:`MAX_DOWNLOAD_TRIES`).

    :returns: ``(document, loaded DDL, sender)``
    :raises DDLError: every node tried sent something refused, or nothing
    """
    data = client.validate("rpcutil", "agent_ddl", {"agent": agent, "document": True})
    problems = []
    for node in nodes[:MAX_DOWNLOAD_TRIES]:
        log.debug("fetching the DDL of %s %s from %s", agent, version, node)
        result = client.request("rpcutil", "agent_ddl", data, targets=[node], timeout=timeout)
        reply = next((r for r in result.replies if r.sender == node), None)
        if reply is None:
            problems.append(f"{node} did not answer")
            continue
        if not reply.ok:
            problems.append(f"{node}: status {reply.statuscode}: {reply.statusmsg}")
            continue
        doc = reply.data.get("ddl") if isinstance(reply.data, Mapping) else None
        try:
            if reply.data.get("sha256") != sha256:
                raise DDLError(f"the DDL of {agent} from {node}: it now reports another sha256")
            ddl = load_untrusted(doc, agent, formats, sha256, source=f"the DDL of {agent} from {node}")
        except DDLError as exc:
            log.warning("refused the DDL of %s sent by %s: %s", agent, node, exc)
            problems.append(str(exc))
            continue
        assert isinstance(doc, dict)
        return doc, ddl, node
    raise DDLError("; ".join(problems) or "no node to fetch it from")


def resolve(client: Any, agent: str, *, filter: Any = None, nodes: Iterable[str] | None = None,
            refresh: bool = False) -> tuple[AgentDDL, DDLSource]:
    """The DDL of an agent that is not installed here: from the cache while the nodes
    confirmed it less than ``ddl.cache_ttl`` ago, else from the targeted nodes.

    :param refresh: ask the nodes even when the cache is fresh
    :raises ClientError: no targeted node has the agent, or what they sent was refused
    """
    from ..security.base import SecurityError
    from .errors import ClientError

    if not isinstance(agent, str) or not AGENT_RE.fullmatch(agent):
        raise ClientError(f"No DDL found for agent {agent!r}: not an agent name")
    cache: DDLCache = client.ddl_cache
    formats = client.pm.formats()
    nodes = list(nodes) if nodes is not None else None
    stale: tuple[AgentDDL, CacheEntry] | None = None  # used when the nodes cannot be asked
    entry = cache.current(agent)
    ddl = _from_entry(cache, entry, formats) if entry is not None else None
    if entry is not None and ddl is not None:
        if cache.is_fresh(entry) and not refresh:
            log.debug("DDL of %s %s from the cache %s", agent, entry.version, entry.path)
            return ddl, _cached_source(entry, [])
        stale = (ddl, entry)
    timeout = float(client.config.get("ddl.fetch_timeout") or 2.0)
    try:
        groups, ignored = ask(client, agent, filter, nodes, timeout)
    except (ClientError, SecurityError) as exc:
        if stale is None:
            raise
        log.warning("could not ask the nodes for the DDL of %s (%s): using the cached %s", agent, exc,
                    stale[1].path)
        return stale[0], _cached_source(stale[1], [])
    if not groups:
        if stale is not None:
            log.warning("no targeted node reported the DDL of %s: using the cached %s", agent,
                        stale[1].path)
            return stale[0], _cached_source(stale[1], [])
        why = f" ({_why(ignored)})" if ignored else ""
        raise ClientError(f"No DDL found for agent {agent!r}: its plugin is not installed here and "
                          f"no targeted node reported it within {timeout:g}s{why}")
    version, sha256 = choose(groups)
    if len(groups) > 1:
        log.warning("%s", disagreement_text(agent, groups, (version, sha256)))
    reported = labels(groups)
    entry = cache.get(agent, version, sha256)
    ddl = _from_entry(cache, entry, formats) if entry is not None else None
    if entry is not None and ddl is not None:
        cache.touch(entry)
        log.debug("DDL of %s %s confirmed by the nodes; from the cache %s", agent, version, entry.path)
        source = _cached_source(entry, reported)
        source.nodes = groups[(version, sha256)]
        return ddl, source
    try:
        doc, ddl, _sender = download(client, agent, version, sha256, groups[(version, sha256)],
                                     formats, timeout)
    except DDLError as exc:
        raise ClientError(f"No usable DDL for agent {agent!r}: its plugin is not installed here and "
                          f"the nodes' DDL was refused: {exc}") from None
    written = cache.put(agent, version, sha256, doc, groups[(version, sha256)])
    return ddl, DDLSource(agent=agent, origin="nodes", version=version, sha256=sha256,
                          location=str(written.path) if written else None,
                          nodes=groups[(version, sha256)], versions=reported,
                          fetched_at=written.fetched_at if written else time.time(),
                          confirmed_at=written.confirmed_at if written else time.time())


def _why(ignored: Mapping[str, str]) -> str:
    items = sorted(ignored.items())
    text = "; ".join(f"{node}: {why}" for node, why in items[:3])
    return text + (f"; and {len(items) - 3} more" if len(items) > 3 else "")


def _from_entry(cache: DDLCache, entry: CacheEntry, formats: Any) -> AgentDDL | None:
    try:
        return load_untrusted(entry.doc, entry.agent, formats, entry.sha256, source=entry.path.name)
    except DDLError as exc:
        cache.discard(entry.path, str(exc))
        return None


def _cached_source(entry: CacheEntry, reported: Mapping[str, list[str]]) -> DDLSource:
    return DDLSource(agent=entry.agent, origin="cache", version=entry.version, sha256=entry.sha256,
                     location=str(entry.path), nodes=list(entry.nodes), versions=dict(reported),
                     fetched_at=entry.fetched_at, confirmed_at=entry.confirmed_at)
