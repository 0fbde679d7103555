"""Data plugins: the functions of compound filters, such as ``fstat("/etc/hosts").size``.

A data plugin is a read-only lookup on the node that takes at most one string
argument and returns a flat mapping of simple values (string, number, boolean or
null), MCollective's rules [MC data.md]. Plugins register through the
``collective_data_plugins`` hook, keyed by ``name``; the hook may return classes
(instantiated without arguments) or instances.

The client uses the registry to refuse unknown functions, unknown fields and bad
arguments before anything is sent (:func:`collective.compound.parse` with
``functions=``); the node evaluates with a :class:`DataResolver`, which calls
each ``(plugin, argument)`` at most once per message and turns every failure
into "no match".

Data plugins in a request's filter run before the request is authorized, so a
node runs them only for a caller its authorizer lets do what the request asks
(``discovery ping`` for a discovery request), never on its receive thread, and
within a time budget (:mod:`collective.server.prefilter`). A denied caller gets
no answer at all from a node whose match depends on a data plugin, so even
``fstat('/root/secret').size>100`` tells it nothing. Only plugins marked
:attr:`DataPlugin.inline` (cheap, never blocking, and revealing no more than the
facts, agents and collectives filters already see: the built-in ``fact``,
``agent`` and ``collective``) are answered on the receive thread for anyone.

Built-ins: ``fstat(path)``, ``fact(path)``, ``agent(name)``, ``collective(name)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from .compound import Deferred
from .matching import MISSING, lookup_fact, render_value
from .names import AGENT, AGENT_RE, COLLECTIVE_RE

log = logging.getLogger(__name__)

__all__ = [
    "AgentData",
    "BUILTIN_DATA_PLUGINS",
    "CollectiveData",
    "DataPlugin",
    "DataResolver",
    "DataResult",
    "FactData",
    "FstatData",
    "instantiate",
]

#: At most this many characters in a data plugin argument.
MAX_ARGUMENT_CHARS = 1024


class DataPlugin:
    """Base class of data plugins.

    Subclasses set the class attributes and implement :meth:`query`; they may
    extend :meth:`validate` (it runs on the client before sending and on the node
    before :meth:`query`).
    """

    #: the function name in ``-S`` expressions
    name: ClassVar[str] = ""
    #: one line for ``mco plugin`` and ``describe-filter``
    description: ClassVar[str] = ""
    #: what the single argument is, or None when the function takes none
    argument: ClassVar[str | None] = None
    #: output name -> description; :meth:`query` returns every one of them
    outputs: ClassVar[dict[str, str]] = {}
    #: the output used when the expression names no ``.field``
    default_output: ClassVar[str | None] = None
    #: answer filters on the node's receive thread, for every caller, before
    #: authorization: only for a plugin that is cheap, never blocks and reveals nothing
    #: beyond the node's facts, agents and collectives (which plain filters see
    #: anyway). False (the default) defers the plugin until the caller is authorized.
    inline: ClassVar[bool] = False

    @classmethod
    def validate(cls, argument: str | None) -> None:
        """Raise :class:`ValueError` with a one-line reason if ``argument`` is unusable."""
        if cls.argument is None:
            if argument is not None:
                raise ValueError(f"{cls.name}() takes no argument")
            return
        if argument is None:
            raise ValueError(f"{cls.name}() needs an argument: {cls.argument}")
        if not isinstance(argument, str):
            raise ValueError(f"{cls.name}() takes a string argument")
        if len(argument) > MAX_ARGUMENT_CHARS:
            raise ValueError(f"the argument of {cls.name}() is longer than "
                             f"{MAX_ARGUMENT_CHARS} characters")
        if "\x00" in argument:
            raise ValueError(f"the argument of {cls.name}() contains a NUL character")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        """Look ``argument`` up on ``node`` (a
        :class:`~collective.server.dispatch.NodeContext`); return every output."""
        raise NotImplementedError

    @staticmethod
    def settings(node: Any, plugin: str) -> dict[str, Any]:
        """``plugins.PLUGIN`` of the node's config (``{}`` when the node has none), e.g.
        the agent's settings that its data plugin shares."""
        config = getattr(node, "config", None)
        if config is None or not hasattr(config, "plugin"):
            return {}
        return dict(config.plugin(plugin))


class DataResult(dict):  # type: ignore[type-arg]
    """A plugin's outputs, plus the name of its default output for the evaluator."""

    def __init__(self, values: Mapping[str, Any], default_output: str | None = None) -> None:
        super().__init__(values)
        self.default_output = default_output


def instantiate(registry: Mapping[str, Any]) -> dict[str, Any]:
    """Plugin instances from a registry of classes or instances (a broken one is skipped)."""
    plugins: dict[str, Any] = {}
    for name, plugin in registry.items():
        if isinstance(plugin, type):
            try:
                plugin = plugin()
            except Exception:
                log.exception("data plugin %s could not be constructed; it is skipped", name)
                continue
        plugins[name] = plugin
    return plugins


class DataResolver:
    """``resolver(name, argument) -> DataResult | None`` for :class:`collective.filters.NodeInfo`.

    Results are cached for the resolver's life (one message). Unknown plugins,
    refused arguments, exceptions and non-mapping results give None (the
    expression then does not match) and a log line; nothing else raises.

    :param inline_only: raise :class:`collective.compound.Deferred` for every known
        plugin that is not :attr:`DataPlugin.inline` (the node's receive thread)
    :param deadline: a ``clock()`` time after which no further plugin is called (each
        then answers None and :attr:`exhausted` is set)
    """

    def __init__(self, plugins: Mapping[str, Any], node: Any, *, inline_only: bool = False,
                 deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.plugins = plugins
        self.node = node
        self.inline_only = inline_only
        self.deadline = deadline
        self.clock = clock
        #: True once a call was refused because the deadline had passed
        self.exhausted = False
        #: the plugin calls made (not the cached answers), for counters and tests
        self.calls: list[tuple[str, str | None]] = []
        #: CPU seconds of this thread spent inside plugin calls (bounded by ``deadline``,
        #: not by the filter's own CPU budget)
        self.cpu_in_calls = 0.0
        self._cache: dict[tuple[str, str | None], DataResult | None] = {}

    def __call__(self, name: str, argument: str | None) -> DataResult | None:
        key = (name, argument)
        if key in self._cache:
            return self._cache[key]
        plugin = self.plugins.get(name)
        if self.inline_only and plugin is not None and not getattr(plugin, "inline", False):
            raise Deferred(name)
        if self.deadline is not None and self.clock() > self.deadline:
            self.exhausted = True
            log.info("compound filter: no time left for %s(%r)", name, argument)
            return None
        self.calls.append(key)
        started = time.thread_time()
        try:
            self._cache[key] = self._query(name, argument)
        finally:
            self.cpu_in_calls += time.thread_time() - started
        return self._cache[key]

    def _query(self, name: str, argument: str | None) -> DataResult | None:
        plugin = self.plugins.get(name)
        if plugin is None:
            log.warning("compound filter calls %s(), but no data plugin of that name is "
                        "installed here", name)
            return None
        try:
            validate = getattr(plugin, "validate", None)
            if callable(validate):
                validate(argument)
            result = plugin.query(argument, self.node)
        except ValueError as exc:
            log.warning("data plugin %s refused %r: %s", name, argument, exc)
            return None
        except Exception:
            log.exception("data plugin %s failed for %r", name, argument)
            return None
        if not isinstance(result, Mapping):
            log.error("data plugin %s returned %s, not a mapping", name, type(result).__name__)
            return None
        return DataResult(result, getattr(plugin, "default_output", None))


# -- fstat ---------------------------------------------------------------------------------

_TYPES = (
    (stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
    (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev"),
    (stat.S_ISFIFO, "fifo"),
)


def _within(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


class FstatData(DataPlugin):
    """``fstat("/etc/hosts").size``: a file's type, size, mode, owner and times.

    The path must be absolute, normalised (no ``..``, ``.``, ``//`` or trailing
    ``/``) and inside one of the roots in ``plugins.fstat.roots`` (default
    ``["/"]``), both as written and with symlinks in its directories resolved.
    The last component is not followed (``lstat``): a symlink reports
    ``type=symlink``. ``md5`` is given only for a regular file of at most 16 MiB
    that any local user could read (``mode & 0o004`` on the file and ``o+x`` on
    every directory above it), so fstat cannot leak the hash of ``/etc/shadow``;
    devices and fifos are never opened. A missing file has ``present=false``
    and null sizes, modes and times (MCollective reported 0).

    fstat sees what the daemon (usually root) sees, so in a request filter it
    runs only for callers the node's authorizer lets do what the request asks
    (module docstring): a denied caller learns nothing, not even one bit, about
    ``/root``. ``plugins.fstat.roots`` confines it further, for every caller and
    for policies alike: a site whose authorized callers should not see the whole
    file system lists the directories they may (``["/etc", "/var/lib/app"]``).
    """

    name = "fstat"
    description = "Information about a file: type, size, mode, owner, times, MD5"
    argument = "Absolute path of the file"
    outputs = {
        "name": "The path",
        "type": "file, directory, symlink, socket, chardev, blockdev, fifo or unknown",
        "present": "Whether the file exists",
        "size": "Size in bytes",
        "mode": "st_mode in octal, e.g. 100644",
        "uid": "Owner user id",
        "gid": "Owner group id",
        "mtime": "Modification time, YYYY-MM-DD HH:MM:SS local time",
        "mtime_seconds": "Modification time, unix seconds",
        "mtime_age": "Seconds since the last modification",
        "atime": "Access time, YYYY-MM-DD HH:MM:SS local time",
        "atime_seconds": "Access time, unix seconds",
        "atime_age": "Seconds since the last access",
        "ctime": "Change time, YYYY-MM-DD HH:MM:SS local time",
        "ctime_seconds": "Change time, unix seconds",
        "ctime_age": "Seconds since the last status change",
        "md5": "MD5 of a world-readable regular file of at most 16 MiB, else null",
    }
    default_output = "present"
    #: Files larger than this get no md5.
    MAX_MD5_BYTES = 16 * 1024 * 1024

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        assert argument is not None
        if not argument.startswith("/"):
            raise ValueError(f"fstat() needs an absolute path, not {argument!r}")
        if argument.startswith("//") or (argument != "/" and os.path.normpath(argument) != argument):
            raise ValueError(f"fstat() needs a normalised path (no '..', '.', '//' or trailing "
                             f"'/'): {argument!r}")

    @staticmethod
    def roots(node: Any) -> list[str]:
        roots = DataPlugin.settings(node, "fstat").get("roots", ["/"])
        if isinstance(roots, str):
            roots = [roots]
        return [os.path.normpath(r) for r in roots if isinstance(r, str) and r.startswith("/")]

    def confine(self, path: str, node: Any) -> None:
        """Raise :class:`ValueError` unless ``path`` is inside a configured root."""
        roots = self.roots(node)
        if not any(_within(path, root) for root in roots):
            raise ValueError(f"{path} is outside the fstat roots ({', '.join(roots) or 'none'})")
        parent, base = os.path.split(path)
        resolved = os.path.join(os.path.realpath(parent), base) if base else os.path.realpath(path)
        if not any(_within(resolved, os.path.realpath(root)) for root in roots):
            raise ValueError(f"{path} resolves to {resolved}, outside the fstat roots")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        assert argument is not None
        self.confine(argument, node)
        result: dict[str, Any] = {key: None for key in self.outputs}
        result.update(name=argument, type="unknown", present=False)
        try:
            st = os.lstat(argument)
        except OSError as exc:
            log.debug("fstat %s: %s", argument, exc)
            return result
        now = time.time()
        result.update(present=True, size=st.st_size, mode=f"{st.st_mode:o}", uid=st.st_uid,
                      gid=st.st_gid)
        for test, kind in _TYPES:
            if test(st.st_mode):
                result["type"] = kind
                break
        for item in ("mtime", "atime", "ctime"):
            seconds = getattr(st, f"st_{item}")
            result[item] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
            result[f"{item}_seconds"] = int(seconds)
            result[f"{item}_age"] = int(now - seconds)
        if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH and st.st_size <= self.MAX_MD5_BYTES:
            result["md5"] = self.md5(argument, st)
        return result

    def md5(self, path: str, st: os.stat_result) -> str | None:
        """The MD5 of ``path`` if it is still the same world-readable regular file."""
        if not self.world_reachable(path):
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
            | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return None
        try:
            fst = os.fstat(fd)
            if (not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino)
                    or not fst.st_mode & stat.S_IROTH or fst.st_size > self.MAX_MD5_BYTES):
                return None
            digest = hashlib.md5(usedforsecurity=False)
            total = 0
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > self.MAX_MD5_BYTES:  # grew while we read it
                    return None
                digest.update(chunk)
            return digest.hexdigest()
        except OSError:
            return None
        finally:
            os.close(fd)

    @staticmethod
    def world_reachable(path: str) -> bool:
        """Every directory above ``path`` (symlinks resolved) is searchable by others."""
        directory = os.path.realpath(os.path.dirname(path))
        while True:
            try:
                if not os.stat(directory).st_mode & stat.S_IXOTH:
                    return False
            except OSError:
                return False
            if directory == "/":
                return True
            directory = os.path.dirname(directory)


# -- fact, agent, collective -----------------------------------------------------------------

def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "hash"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


class FactData(DataPlugin):
    """``fact('os.family').value``: one fact, by dotted path (MCollective MCO-363).

    A structured value (a list or mapping) is given as compact JSON text.
    """

    name = "fact"
    description = "The value of a fact, by dotted path"
    argument = "Dotted path of the fact, e.g. os.family"
    outputs = {
        "exists": "Whether the fact exists",
        "value": "The value (lists and mappings as JSON text)",
        "type": "string, integer, float, boolean, array, hash or null",
    }
    default_output = "value"
    inline = True  # the same facts a -F filter sees

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        if not argument:
            raise ValueError("fact() needs a fact name")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        assert argument is not None
        view = getattr(getattr(node, "facts_store", None), "view", None)
        value = lookup_fact(view() if callable(view) else node.facts(), argument)  # no copy
        if value is MISSING:
            return {"exists": False, "value": None, "type": None}
        shown = render_value(value) if isinstance(value, (Mapping, list, tuple)) else value
        return {"exists": True, "value": shown, "type": _type_name(value)}


_AGENT_META = ("name", "version", "timeout", "author", "description", "license", "url")


class AgentData(DataPlugin):
    """``agent('service').present``: whether an agent is loaded, and its DDL metadata."""

    name = "agent"
    description = "Whether an agent is loaded here, and its DDL metadata"
    argument = "Agent name"
    outputs = {
        "present": "Whether the agent is loaded",
        "name": "Agent name (DDL)",
        "version": "Agent version (DDL)",
        "timeout": "Action timeout in seconds (DDL)",
        "author": "Author (DDL)",
        "description": "Description (DDL)",
        "license": "License (DDL)",
        "url": "URL (DDL)",
    }
    default_output = "present"
    inline = True  # what -A and rpcutil agent_inventory show

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        if not AGENT_RE.fullmatch(argument or ""):
            raise ValueError(f"agent() needs an agent name ({AGENT}), not {argument!r}")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        ddls = node.agent_ddls()
        result: dict[str, Any] = {key: None for key in self.outputs}
        result["present"] = argument in ddls
        ddl = ddls.get(argument) if result["present"] else None
        metadata = getattr(ddl, "metadata", None)
        if isinstance(metadata, Mapping):
            for key in _AGENT_META:
                value = metadata.get(key)
                result[key] = value if value is None or isinstance(value, (str, int, float)) else str(value)
        return result


class CollectiveData(DataPlugin):
    """``collective('uk').member``: whether this node is in a (sub)collective."""

    name = "collective"
    description = "Whether this node is a member of a collective"
    argument = "Collective name"
    outputs = {"member": "Whether the node is in the collective"}
    default_output = "member"
    inline = True  # the node subscribes to its collectives on the broker anyway

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        if not COLLECTIVE_RE.fullmatch(argument or ""):
            raise ValueError(f"collective() needs a collective name, not {argument!r}")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        return {"member": argument in list(node.collectives)}


#: Registered by :mod:`collective.builtins`.
BUILTIN_DATA_PLUGINS: tuple[type[DataPlugin], ...] = (FstatData, FactData, AgentData, CollectiveData)
