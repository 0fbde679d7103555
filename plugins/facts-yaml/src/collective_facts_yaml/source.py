"""The ``yaml`` fact source: node facts from YAML files, reloaded when a file changes.

Configuration (server config)::

    facts:
      sources: [static, yaml]          # later sources win
      files:                           # merged in this order, later wins
        - /etc/collective/facts.yaml
        - facts.d/local.yaml           # relative to the config file's directory
    plugins:
      yaml:
        refresh: 1                     # seconds between checks of the files (default 1)
        max_bytes: 4194304             # per file (default 4 MiB)

``plugins.yaml.files`` may be used instead of ``facts.files`` (not both).

Every ``refresh`` seconds :meth:`YamlFactSource.facts` compares each file's
``(mtime_ns, size, inode, ctime_ns)`` with the last read and re-reads only the
files that changed, so an edit (in place or by atomic rename) is seen without a
restart. The daemon's :class:`~collective.facts.FactStore` caches merged facts
too (5 s by default), so a change shows within about that time; SIGHUP reads
every file again at once.

Files are parsed with ``yaml.safe_load`` only: a Python tag such as
``!!python/object/apply:os.system`` is refused, never constructed. A file that
cannot be read or parsed, is too large, or whose top level is not a mapping keeps
its last good facts, and one error naming the file (and the line and column for
YAML errors) is logged per change of the file. A missing file logs one error and
contributes nothing until it appears.

Values are made JSON-safe, because facts travel in replies and registrations:
keys become strings, dates ISO 8601 strings, sets sorted lists, ``!!binary``
base64 text. Nesting deeper than :data:`MAX_DEPTH` or more than
:data:`MAX_VALUES` values (anchors and aliases count each time they are used:
the "billion laughs") is refused.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from collective.facts import deep_merge

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_REFRESH", "FactFileError", "YamlFactSource"]

log = logging.getLogger(__name__)

#: Seconds between two checks of the files (``plugins.yaml.refresh``).
DEFAULT_REFRESH = 1.0
#: Largest file read, in bytes (``plugins.yaml.max_bytes``).
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: Deepest nesting of mappings and lists accepted.
MAX_DEPTH = 64
#: Most values (scalars, mappings and lists, aliases counted at each use) in one file.
MAX_VALUES = 1_000_000

_MISSING = ("missing",)


class FactFileError(Exception):
    """One facts file could not be used; the message names it."""


@dataclass
class _FileState:
    path: Path
    #: what the file looked like at the last attempt, good or bad (None: never tried)
    stamp: tuple[Any, ...] | None = None
    #: the last good facts (None: contributes nothing)
    facts: dict[str, Any] | None = None
    #: whether the last attempt failed (to log when the file is good again)
    failing: bool = False


class YamlFactSource:
    """Facts merged from the YAML files in ``facts.files`` (or ``plugins.yaml.files``).

    :param config: the daemon's :class:`~collective.config.Config`.
    :param clock: monotonic seconds, for tests.
    :raises ValueError: no files, both settings used, or a bad ``plugins.yaml`` value.
    """

    name = "yaml"

    def __init__(self, config: Any, clock: Callable[[], float] = time.monotonic) -> None:
        settings = config.plugin("yaml")
        core_files = list(config.get("facts.files") or [])
        plugin_files = settings.get("files") or []
        if core_files and plugin_files:
            raise ValueError("set the YAML facts files in facts.files or in plugins.yaml.files, "
                             "not both")
        files = core_files or plugin_files
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            raise ValueError("plugins.yaml.files must be a list of file names")
        if not files:
            raise ValueError("no YAML facts files: set facts.files to a list of files")
        self.refresh = _number(settings.get("refresh", DEFAULT_REFRESH), "plugins.yaml.refresh")
        max_bytes = settings.get("max_bytes", DEFAULT_MAX_BYTES)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"plugins.yaml.max_bytes must be a positive integer, not {max_bytes!r}")
        self.max_bytes = max_bytes
        self.clock = clock
        # Not resolved: a symlink swapped to a new target (atomic deploys) is followed.
        base = Path(getattr(config, "dir", None) or Path.cwd())
        self.files = [_FileState(base / Path(name).expanduser()) for name in files]
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._merged: dict[str, Any] = {}
        with self._lock:
            self._refresh(force=False)

    # -- the fact source API -------------------------------------------------------------
    @property
    def paths(self) -> list[Path]:
        """The files read, in merge order."""
        return [state.path for state in self.files]

    def facts(self) -> dict[str, Any]:
        """The merged facts, after re-reading the files that changed if ``refresh`` has passed."""
        with self._lock:
            if self._checked_at is None or self.clock() - self._checked_at >= self.refresh:
                self._refresh(force=False)
            return copy.deepcopy(self._merged)

    def classes(self) -> list[str]:
        """Always ``[]``: classes come from ``classes_file``."""
        return []

    def reload(self) -> None:
        """Read every file again now, changed or not (SIGHUP)."""
        with self._lock:
            self._refresh(force=True)

    # -- internals -------------------------------------------------------------------------
    def _refresh(self, force: bool) -> None:
        changed = [self._check(state, force) for state in self.files]  # no short-circuit
        self._checked_at = self.clock()
        if any(changed) or force:
            merged: dict[str, Any] = {}
            for state in self.files:
                if state.facts is not None:
                    merged = deep_merge(merged, state.facts)
            self._merged = merged

    def _check(self, state: _FileState, force: bool) -> bool:
        """Re-read ``state.path`` if it changed; True when its contribution changed."""
        path = state.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if state.stamp == _MISSING:
                return False
            state.stamp, state.failing = _MISSING, True
            had = state.facts is not None
            state.facts = None
            log.error("facts file %s does not exist; it contributes no facts until it appears",
                      path)
            return had
        except OSError as exc:
            stamp = ("error", exc.errno)
            if stamp != state.stamp:
                state.stamp, state.failing = stamp, True
                log.error("facts file %s: cannot read: %s; %s", path, exc.strerror or exc,
                          _kept(state))
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        if stamp == state.stamp and not force:
            return False
        # Stamp first, then read: a change during the read shows as a new stamp next time.
        state.stamp = stamp
        try:
            facts = self._read(path, st)
        except FactFileError as exc:
            state.failing = True
            log.error("%s; %s", exc, _kept(state))
            return False
        if state.failing:
            log.info("facts file %s read again", path)
        state.failing = False
        state.facts = facts
        return True

    def _read(self, path: Path, st: os.stat_result) -> dict[str, Any]:
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the daemon on open
            raise FactFileError(f"facts file {path}: not a regular file")
        if st.st_size > self.max_bytes:
            raise FactFileError(f"facts file {path}: {st.st_size} bytes is over the limit of "
                                f"{self.max_bytes} (plugins.yaml.max_bytes)")
        try:
            with open(path, "rb") as handle:
                raw = handle.read(self.max_bytes + 1)
        except OSError as exc:
            raise FactFileError(f"facts file {path}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > self.max_bytes:
            raise FactFileError(f"facts file {path}: over the limit of {self.max_bytes} bytes "
                                "(plugins.yaml.max_bytes)")
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise FactFileError(f"facts file {path}: {_describe(exc)}") from None
        except RecursionError:
            raise FactFileError(f"facts file {path}: nested too deeply") from None
        if data is None:  # empty, or only comments
            return {}
        if not isinstance(data, dict):
            raise FactFileError(f"facts file {path}: the top level must be a mapping of fact "
                                f"names to values, not {_yaml_kind(data)}")
        budget = [MAX_VALUES]
        try:
            return _plain(data, 0, budget)
        except FactFileError as exc:
            raise FactFileError(f"facts file {path}: {exc}") from None


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _kept(state: _FileState) -> str:
    if state.facts is None:
        return "it contributes no facts until fixed"
    return "keeping its last good facts"


def _describe(exc: yaml.YAMLError) -> str:
    """A YAML error as ``line L, column C: problem (context)``, without yaml's source snippet."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"byte {exc.position}: cannot decode the file ({exc.reason})"
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.constructor.ConstructorError) and "for the tag" in problem:
        return (f"{where}refused: {problem} (facts files are read with yaml.safe_load; "
                "Python and custom tags are not allowed)")
    context = getattr(exc, "context", None)
    return f"{where}invalid YAML: {problem}" + (f" ({context})" if context else "")


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (dt.date, dt.datetime)):
        return key.isoformat()
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)  # as JSON would write it: true, null, 1.5
    return str(key)


def _plain(value: Any, depth: int, budget: list[int]) -> Any:
    """A JSON-safe copy of ``value``, counting values against ``budget``."""
    budget[0] -= 1
    if budget[0] < 0:
        raise FactFileError(f"more than {MAX_VALUES} values (aliases count at each use)")
    if isinstance(value, (str, int, float)) or value is None:  # bool is an int
        return value
    if depth >= MAX_DEPTH:
        raise FactFileError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        return {_key(k): _plain(v, depth + 1, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1, budget) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v, depth + 1, budget) for v in value), key=str)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)
