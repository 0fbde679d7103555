"""The client's cache of DDLs fetched from the nodes.

One file per DDL, named by agent, version and sha256::

    ~/.cache/collective/ddl/nrpe-0.1.0-<sha256>.json

in ``ddl.cache_dir`` of the client config, else ``$XDG_CACHE_HOME/collective/ddl``,
else ``~/.cache/collective/ddl``. Directories are made 0700, files 0600, each file
written to a temporary name and renamed into place, so a reader never sees half a
file. A file's modification time is when the nodes last confirmed that DDL: a file
confirmed less than ``ddl.cache_ttl`` seconds ago is used without asking the nodes.

A file that cannot be read, is not the JSON it should be, or whose content does not
match its name is ignored with a warning and removed, so the DDL is fetched again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ddl import ddl_digest
from ..names import AGENT, AGENT_RE

log = logging.getLogger(__name__)

#: the cache file format (the ``format`` key of every file)
FORMAT = 1
#: a cache file larger than this is corrupt (a DDL is at most remote_ddl.MAX_DDL_BYTES)
MAX_FILE_BYTES = 1024 * 1024
#: DDLs kept per agent; older ones (by confirmation time) are removed
KEEP_PER_AGENT = 5
_VERSION = re.compile(r"[0-9]+(?:\.[0-9]+){0,2}(?:[-+][0-9A-Za-z.+-]{1,64})?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILE = re.compile(rf"(?P<agent>{AGENT})-(?P<version>[0-9A-Za-z.+-]{{1,80}})-(?P<sha256>[0-9a-f]{{64}})\.json")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/collective/ddl`` (an absolute XDG_CACHE_HOME only, as the XDG
    spec says), else ``~/.cache/collective/ddl``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "collective" / "ddl"


def cache_dir(config: Any) -> Path:
    """The cache directory for a client config (``ddl.cache_dir`` or the default)."""
    configured = config.get("ddl.cache_dir") if config is not None else None
    return Path(configured) if configured else default_cache_dir()


def valid_key(agent: str, version: str, sha256: str) -> bool:
    """Whether the three parts may name a cache file (nothing that could leave the directory)."""
    return (isinstance(agent, str) and isinstance(version, str) and isinstance(sha256, str)
            and bool(AGENT_RE.fullmatch(agent)) and bool(_VERSION.fullmatch(version))
            and bool(_SHA256.fullmatch(sha256)))


@dataclass
class CacheEntry:
    """One cached DDL."""

    path: Path
    agent: str
    version: str
    sha256: str
    #: the DDL document
    doc: dict[str, Any]
    #: when it was first fetched (epoch seconds)
    fetched_at: float
    #: when the nodes last confirmed it (the file's mtime)
    confirmed_at: float
    #: the nodes that reported it when it was fetched
    nodes: list[str] = field(default_factory=list)


class DDLCache:
    """Fetched DDLs on disk, keyed by agent, version and sha256.

    :param directory: where the files live (made 0700 when missing)
    :param ttl: seconds a confirmation stays fresh
    """

    def __init__(self, directory: Path, ttl: float = 3600.0, keep: int = KEEP_PER_AGENT) -> None:
        self.directory = Path(directory)
        self.ttl = float(ttl)
        self.keep = keep
        self._usable: bool | None = None

    @classmethod
    def from_config(cls, config: Any) -> DDLCache:
        return cls(cache_dir(config), float(config.get("ddl.cache_ttl", 3600)))

    # -- naming ----------------------------------------------------------------
    def path_for(self, agent: str, version: str, sha256: str) -> Path:
        """``DIR/AGENT-VERSION-SHA256.json``.

        :raises ValueError: a part that may not name a file (e.g. ``../x``)
        """
        if not valid_key(agent, version, sha256):
            raise ValueError(f"cannot name a cache file for {agent!r} {version!r} {sha256!r}")
        path = self.directory / f"{agent}-{version}-{sha256}.json"
        if path.parent != self.directory:  # belt and braces: the patterns allow no "/"
            raise ValueError(f"cache file {path} is not in {self.directory}")
        return path

    # -- the directory -------------------------------------------------------------
    def _ensure_dir(self) -> bool:
        """Make the directory (and missing parents) 0700; False when it cannot be used."""
        if self._usable is not None:
            return self._usable
        missing = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        try:
            for path in reversed(missing):
                path.mkdir(mode=0o700, exist_ok=True)
            info = self.directory.stat()
        except OSError as exc:
            log.warning("DDL cache %s cannot be used: %s", self.directory, exc.strerror or exc)
            self._usable = False
            return False
        if not stat.S_ISDIR(info.st_mode):
            log.warning("DDL cache %s is not a directory: not caching fetched DDLs", self.directory)
            self._usable = False
        elif info.st_mode & 0o022:
            log.warning("DDL cache %s is writable by others (mode %o): not using it", self.directory,
                        stat.S_IMODE(info.st_mode))
            self._usable = False
        else:
            self._usable = True
        return self._usable

    # -- reading ---------------------------------------------------------------------
    def discard(self, path: Path, why: str) -> None:
        """Warn that ``path`` is ignored and remove it, so the DDL is fetched again."""
        log.warning("ignoring the DDL cache file %s (%s); the DDL will be fetched again", path, why)
        with contextlib.suppress(OSError):
            path.unlink()

    def read(self, path: Path) -> CacheEntry | None:
        """Load one cache file; a corrupt one is removed with a warning (None)."""
        from ..message import MalformedMessage, strict_loads

        match = _FILE.fullmatch(path.name)
        if match is None:
            return None
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                self.discard(path, "not a regular file")
                return None
            if info.st_size > MAX_FILE_BYTES:
                self.discard(path, f"{info.st_size} bytes, more than {MAX_FILE_BYTES}")
                return None
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the DDL cache file %s: %s", path, exc.strerror or exc)
            return None
        try:
            data = strict_loads(raw, max_bytes=MAX_FILE_BYTES)
        except MalformedMessage as exc:
            self.discard(path, f"not valid JSON: {exc}")
            return None
        agent, version, sha256 = match["agent"], match["version"], match["sha256"]
        why = _wrapper_problem(data, agent, version, sha256)
        if why:
            self.discard(path, why)
            return None
        return CacheEntry(path=path, agent=agent, version=version, sha256=sha256, doc=data["ddl"],
                          fetched_at=float(data["fetched_at"]), confirmed_at=info.st_mtime,
                          nodes=[n for n in data["nodes"] if isinstance(n, str)])

    def entries(self, agent: str) -> list[CacheEntry]:
        """Every readable entry for ``agent``, the most recently confirmed first."""
        if not AGENT_RE.fullmatch(agent or "") or not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob(f"{agent}-*.json"):
            match = _FILE.fullmatch(path.name)
            if match is None or match["agent"] != agent:
                continue
            entry = self.read(path)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: (-e.confirmed_at, e.path.name))

    def get(self, agent: str, version: str, sha256: str) -> CacheEntry | None:
        """The entry for exactly this DDL, or None."""
        try:
            path = self.path_for(agent, version, sha256)
        except ValueError:
            return None
        return self.read(path) if path.exists() else None

    def current(self, agent: str) -> CacheEntry | None:
        """The most recently confirmed entry for ``agent`` (fresh or not), or None."""
        entries = self.entries(agent)
        return entries[0] if entries else None

    def is_fresh(self, entry: CacheEntry, now: float | None = None) -> bool:
        """Confirmed by the nodes less than ``ttl`` seconds ago."""
        return (time.time() if now is None else now) - entry.confirmed_at < self.ttl

    # -- writing ---------------------------------------------------------------------
    def put(self, agent: str, version: str, sha256: str, doc: dict[str, Any],
            nodes: list[str]) -> CacheEntry | None:
        """Write one entry atomically (temporary file, fsync, rename); None when the
        cache cannot be used (the DDL is then used without being cached)."""
        path = self.path_for(agent, version, sha256)
        if not self._ensure_dir():
            return None
        now = time.time()
        data = {"format": FORMAT, "agent": agent, "version": version, "sha256": sha256,
                "fetched_at": now, "nodes": sorted(nodes), "ddl": doc}
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")  # 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning("could not write the DDL cache file %s: %s", path, exc.strerror or exc)
            return None
        self._prune(agent)
        return CacheEntry(path=path, agent=agent, version=version, sha256=sha256, doc=doc,
                          fetched_at=now, confirmed_at=path.stat().st_mtime, nodes=sorted(nodes))

    def touch(self, entry: CacheEntry) -> None:
        """Record that the nodes confirmed ``entry`` now."""
        try:
            os.utime(entry.path)
            entry.confirmed_at = entry.path.stat().st_mtime
        except OSError as exc:
            log.debug("could not touch %s: %s", entry.path, exc)

    def _prune(self, agent: str) -> None:
        for old in self.entries(agent)[self.keep:]:
            with contextlib.suppress(OSError):
                old.path.unlink()


def _wrapper_problem(data: Any, agent: str, version: str, sha256: str) -> str | None:
    """Why a cache file's content does not match its name, or None."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"not a format-{FORMAT} cache file"
    for key, want in (("agent", agent), ("version", version), ("sha256", sha256)):
        if data.get(key) != want:
            return f"{key} {data.get(key)!r} does not match the file name"
    if not isinstance(data.get("ddl"), dict):
        return "no DDL document"
    if not isinstance(data.get("fetched_at"), int | float) or not isinstance(data.get("nodes"), list):
        return "no fetched_at or nodes"
    meta = data["ddl"].get("metadata")
    if not isinstance(meta, dict) or meta.get("name") != agent or meta.get("version") != version:
        return "the DDL's metadata does not match the file name"
    try:
        digest = ddl_digest(data["ddl"])
    except (TypeError, ValueError) as exc:
        return f"the DDL cannot be digested: {exc}"
    if digest != sha256:
        return f"the DDL's sha256 is {digest[:12]}..., not the one in its name"
    return None
