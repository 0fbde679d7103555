"""Node facts and classes.

Fact sources are plugins (hook ``collective_fact_sources``): a class with a
``name``, constructed with the daemon :class:`~collective.config.Config`, with
``facts() -> dict`` and optionally ``classes() -> list[str]`` and ``reload()``.
The core ships ``static`` (the ``facts.static`` mapping of the config).

:class:`FactStore` builds the sources named in ``facts.sources`` and merges
their facts in that order: later sources win, nested mappings are merged key
by key. The merged facts are cached for ``refresh`` seconds. A source that
raises keeps its last good facts (an error naming it is logged), so one broken
source never empties the node's facts or breaks filtering.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .config import Config
from .plugins import PluginError, resolve

__all__ = ["FactStore", "StaticFactSource", "deep_merge", "read_classes"]

log = logging.getLogger(__name__)


class StaticFactSource:
    """Facts written in the config under ``facts.static`` (any nesting)."""

    name = "static"

    def __init__(self, config: Config) -> None:
        self.config = config

    def facts(self) -> dict[str, Any]:
        static = self.config.get("facts.static") or {}
        if not isinstance(static, Mapping):
            raise TypeError(f"facts.static must be a mapping, not {type(static).__name__}")
        return copy.deepcopy(dict(static))

    def classes(self) -> list[str]:
        return []


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class FactStore:
    """The merged facts of the sources named in ``facts.sources``.

    ``sources`` is the registry of fact source classes by name (the daemon
    passes ``PluginManager.fact_sources()``). An unknown name raises
    :class:`~collective.plugins.PluginError` naming it and the known ones.
    ``facts()`` re-reads the sources at most every ``refresh`` seconds;
    :meth:`reload` re-reads them now.
    """

    def __init__(self, config: Config, sources: Mapping[str, type], refresh: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.refresh = float(refresh)
        self.clock = clock
        self._lock = threading.Lock()
        self.sources: list[tuple[str, Any]] = []
        for name in config.get("facts.sources") or []:
            cls = resolve(name, dict(sources), "fact source")
            try:
                self.sources.append((name, cls(config)))
            except Exception as exc:
                raise PluginError(f"fact source {name!r} failed to start: {exc}") from exc
        self._facts: dict[str, dict[str, Any]] = {}
        self._classes: dict[str, list[str]] = {}
        self._merged: dict[str, Any] = {}
        self._merged_classes: list[str] = []
        self._loaded_at: float | None = None

    # -- public ------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        """The merged facts (a copy the caller may change)."""
        with self._lock:
            self._refresh_if_stale()
            return copy.deepcopy(self._merged)

    def view(self) -> Mapping[str, Any]:
        """The merged facts, read-only and not copied: for filters, which a node
        evaluates for every message (a deep copy of large facts was most of the cost).
        Each refresh builds new objects and never changes old ones; do not change them."""
        with self._lock:
            self._refresh_if_stale()
            return MappingProxyType(self._merged)

    def classes(self) -> list[str]:
        """Classes reported by the sources (in order, without duplicates)."""
        with self._lock:
            self._refresh_if_stale()
            return list(self._merged_classes)

    def reload(self) -> None:
        """Re-read every source now (SIGHUP); calls a source's own ``reload()`` first."""
        with self._lock:
            for name, source in self.sources:
                hook = getattr(source, "reload", None)
                if callable(hook):
                    try:
                        hook()
                    except Exception as exc:
                        log.error("fact source %r failed to reload: %s", name, exc)
            self._load()

    # -- internals ---------------------------------------------------------------
    def _refresh_if_stale(self) -> None:
        if self._loaded_at is None or self.clock() - self._loaded_at >= self.refresh:
            self._load()

    def _load(self) -> None:
        merged: dict[str, Any] = {}
        classes: list[str] = []
        for name, source in self.sources:
            try:
                facts = source.facts()
                if not isinstance(facts, Mapping):
                    raise TypeError(f"facts() returned {type(facts).__name__}, not a mapping")
                self._facts[name] = copy.deepcopy(dict(facts))
            except Exception as exc:
                kept = "its last good facts" if name in self._facts else "no facts from it"
                log.error("fact source %r failed: %s; keeping %s", name, exc, kept)
            getter = getattr(source, "classes", None)
            if callable(getter):
                try:
                    found = getter()
                    self._classes[name] = [str(c) for c in found or []]
                except Exception as exc:
                    log.error("fact source %r failed to list classes: %s", name, exc)
            merged = deep_merge(merged, self._facts.get(name, {}))
            classes.extend(c for c in self._classes.get(name, []) if c not in classes)
        self._merged = merged
        self._merged_classes = classes
        self._loaded_at = self.clock()


_classes_cache: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
_classes_lock = threading.Lock()


def read_classes(path: str | os.PathLike[str]) -> list[str]:
    """The classes in a classes file: one per line, blank lines and ``#`` comments skipped.

    A missing file gives ``[]``; an unreadable one logs a warning and gives ``[]``.
    The parsed file is cached until its size or modification time changes.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read classes file %s: %s", path, exc.strerror or exc)
        return []
    key = str(path)
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    with _classes_lock:
        cached = _classes_cache.get(key)
        if cached and cached[0] == stamp:
            return list(cached[1])
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("cannot read classes file %s: %s", path, exc.strerror or exc)
        return []
    classes = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            classes.append(line)
    with _classes_lock:
        _classes_cache[key] = (stamp, classes)
    return list(classes)
