"""The plugin manager: built-ins and entry points, loaded one at a time.

A plugin that fails to import is reported by name, distribution and version and
the rest keep working (the bug behind llm#1280 and httpie#1204 is pluggy's own
``load_setuptools_entrypoints`` stopping at the first error).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import __version__, hookspecs

log = logging.getLogger(__name__)

GROUP = "collective"

#: Built-in plugins register through the same hooks as third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "collective.builtins",
    "collective.agents.rpcutil.plugin",
)


class PluginError(Exception):
    """A plugin problem that stops the caller (strict mode, name clashes)."""


@dataclass
class PluginStatus:
    """What ``mco plugin list`` shows for one plugin."""

    name: str
    module: str
    distribution: str = "builtin"
    version: str = __version__
    #: ``ok``, ``blocked``, ``incompatible: ...`` or ``failed: ...``
    status: str = "ok"
    hooks: list[str] = field(default_factory=list)
    builtin: bool = False


def entry_points() -> list[md.EntryPoint]:
    """The ``collective`` entry points, sorted by name (install order is meaningless)."""
    return sorted(md.entry_points(group=GROUP), key=lambda ep: ep.name)


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


_REQ = re.compile(r"^collective-core\s*(?P<spec>[^;]*)", re.IGNORECASE)
_CLAUSE = re.compile(r"^(?P<op>>=|<=|==|!=|>|<)\s*(?P<version>\d+(?:\.\d+)*)$")
_COMPARE = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def _release(version: str) -> tuple[int, ...]:
    numbers = tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:4])
    return numbers + (0,) * (4 - len(numbers))


def version_satisfies(version: str, spec: str) -> bool | None:
    """Whether ``version`` meets a simple specifier such as ``>=0.1,<0.2``.

    Returns None for anything fancier (``~=``, wildcards, pre-releases), which the
    caller hands to ``packaging``; importing that for every run costs 1.6 MB of RSS.
    """
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        match = _CLAUSE.match(clause)
        if not match:
            return None
        if not _COMPARE[match["op"]](_release(version), _release(match["version"])):
            return False
    return True


def _incompatible(dist: md.Distribution | None) -> str | None:
    """Return why ``dist`` cannot work with this core, or None when it can."""
    if dist is None:
        return None
    for req in dist.requires or []:
        match = _REQ.match(req.replace("_", "-"))
        if not match:
            continue
        spec = match.group("spec").strip().strip("()")
        ok = version_satisfies(__version__, spec)
        if ok is None:
            try:
                from packaging.specifiers import SpecifierSet
            except ImportError:  # without packaging, trust the installer
                return None
            ok = __version__ in SpecifierSet(spec, prereleases=True)
        if not ok:
            return f"incompatible: needs collective-core{spec}, found {__version__}"
    return None


class PluginManager:
    """A typed facade over :class:`pluggy.PluginManager` with one registry per hook."""

    def __init__(self, load_entrypoints: bool = True, plugins: Iterable[Any] = ()) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.statuses: dict[str, PluginStatus] = {}
        self.strict = os.environ.get("COLLECTIVE_STRICT_PLUGINS", "") not in ("", "0")
        for module_name in DEFAULT_PLUGINS:
            self._register_module(importlib.import_module(module_name), module_name, builtin=True)
        for plugin in plugins:
            name = getattr(plugin, "__name__", repr(plugin))
            self._register_module(plugin, name)
        if load_entrypoints:
            self.load_entrypoints()

    # -- loading -------------------------------------------------------------
    def _register_module(self, module: Any, name: str, builtin: bool = False, **meta: Any) -> None:
        status = PluginStatus(name=name, module=getattr(module, "__name__", name), builtin=builtin, **meta)
        try:
            self.pm.register(module, name=name)
            self.pm.check_pending()
        except Exception as exc:  # a misspelled hook, a bad hookimpl signature
            if self.pm.is_registered(module):
                self.pm.unregister(module)
            status.status = f"failed: {type(exc).__name__}: {exc}"
            self._report(status)
        else:
            status.hooks = sorted(h.name for h in self.pm.get_hookcallers(module) or [])
        self.statuses[name] = status

    def load_entrypoints(self) -> None:
        """Load every ``collective`` entry point, one at a time, honouring the env switches."""
        only = _env_list("COLLECTIVE_LOAD_PLUGINS")
        blocked = set(_env_list("COLLECTIVE_DISABLE_PLUGINS") or [])
        for ep in entry_points():
            dist = getattr(ep, "dist", None)
            meta = {
                "distribution": dist.metadata["Name"] if dist else "unknown",
                "version": dist.version if dist else "unknown",
            }
            if (only is not None and ep.name not in only) or ep.name in blocked:
                self.pm.set_blocked(ep.name)
                self.statuses[ep.name] = PluginStatus(ep.name, ep.value, status="blocked", **meta)
                continue
            why = _incompatible(dist)
            if why:
                status = PluginStatus(ep.name, ep.value, status=why, **meta)
                self._report(status)
                self.statuses[ep.name] = status
                continue
            try:
                module = ep.load()
            except Exception as exc:
                status = PluginStatus(ep.name, ep.value, status=f"failed: {type(exc).__name__}: {exc}", **meta)
                self._report(status, exc)
                self.statuses[ep.name] = status
                continue
            self._register_module(module, ep.name, **meta)

    def _report(self, status: PluginStatus, exc: BaseException | None = None) -> None:
        message = (
            f'While loading plugin "{status.name}" ({status.distribution} {status.version}) '
            f"an error occurred: {status.status}. It is skipped; fix or uninstall it "
            f"(pip uninstall {status.distribution}) or disable it with "
            f"COLLECTIVE_DISABLE_PLUGINS={status.name}"
        )
        if self.strict:
            raise PluginError(message) from exc
        log.warning(message, exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)

    def register(self, plugin: Any, name: str) -> None:
        """Register a throw-away plugin (tests)."""
        self._register_module(plugin, name)

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.statuses.pop(name, None)

    # -- registries ----------------------------------------------------------
    def _collect(self, hook_name: str, key: Callable[[Any], str], **kwargs: Any) -> dict[str, Any]:
        """Call a registration hook and key the flattened results by name.

        Each plugin is called on its own so a failing implementation is
        reported by plugin name and the others still count.
        """
        hook = getattr(self.pm.hook, hook_name)
        registry: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for impl in hook.get_hookimpls():
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
                items = list(result or [])
            except Exception as exc:
                self._hook_failed(impl.plugin_name, hook_name, exc)
                continue
            for item in items:
                name = key(item)
                if name in registry:
                    raise PluginError(
                        f"Conflicting plugins: {hook_name} name {name!r} is provided by both "
                        f"{owners[name]!r} and {impl.plugin_name!r}"
                    )
                registry[name] = item
                owners[name] = impl.plugin_name
        return dict(sorted(registry.items()))

    def agents(self) -> dict[str, type]:
        return self._collect("collective_agents", lambda cls: cls.name)

    def ddl_files(self) -> dict[str, Any]:
        """DDL resources keyed by agent name (the file stem)."""
        return self._collect("collective_ddls", lambda res: res.name.rsplit(".", 1)[0])

    def fact_sources(self) -> dict[str, type]:
        return self._collect("collective_fact_sources", lambda cls: cls.name)

    def security_providers(self) -> dict[str, type]:
        return self._collect("collective_security_providers", lambda cls: cls.name)

    def connectors(self) -> dict[str, type]:
        return self._collect("collective_connectors", lambda cls: cls.name)

    def authorizers(self) -> dict[str, type]:
        return self._collect("collective_authorizers", lambda cls: cls.name)

    def discovery_methods(self) -> dict[str, type]:
        return self._collect("collective_discovery_methods", lambda cls: cls.name)

    def data_plugins(self) -> dict[str, Any]:
        return self._collect("collective_data_plugins", lambda p: p.name)

    def audit_sinks(self) -> dict[str, type]:
        return self._collect("collective_audit_sinks", lambda cls: cls.name)

    def aggregates(self) -> dict[str, Any]:
        return self._collect("collective_aggregates", lambda a: a.name)

    def formats(self) -> dict[str, Any]:
        return self._collect("collective_formats", lambda f: f.name)

    def add_cli_commands(self, cli: Any) -> None:
        self._collect("collective_cli_commands", lambda _: "", cli=cli)

    #: registration hooks -> (what ``mco plugin list`` calls them, how an item is named);
    #: agents are shown by their DDLs, so listing never imports agent code
    LISTED_HOOKS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
        ("collective_ddls", "agents", lambda res: res.name.rsplit(".", 1)[0]),
        ("collective_data_plugins", "data plugins", lambda p: p.name),
        ("collective_fact_sources", "fact sources", lambda c: c.name),
        ("collective_authorizers", "authorizers", lambda c: c.name),
        ("collective_security_providers", "security providers", lambda c: c.name),
        ("collective_connectors", "connectors", lambda c: c.name),
        ("collective_discovery_methods", "discovery methods", lambda c: c.name),
        ("collective_audit_sinks", "audit sinks", lambda c: c.name),
        ("collective_formats", "formats", lambda f: f.name),
        ("collective_aggregates", "aggregates", lambda a: a.name),
    )

    def registrations(self) -> dict[str, dict[str, list[str]]]:
        """What each plugin registered: ``{plugin: {"agents": [...], "commands": [...], ...}}``.

        Each implementation is called on its own; one that raises is recorded in its
        plugin's status (``failed: ...``) and the others still count.
        """
        import click

        found: dict[str, dict[str, list[str]]] = {}
        for hook_name, label, key in self.LISTED_HOOKS:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                try:
                    names = sorted(key(item) for item in impl.function() or [])
                except Exception as exc:
                    self._hook_failed(impl.plugin_name, hook_name, exc)
                    continue
                if names:
                    found.setdefault(impl.plugin_name, {})[label] = names
        for impl in self.pm.hook.collective_cli_commands.get_hookimpls():
            group = click.Group()
            try:
                impl.function(cli=group)
            except Exception as exc:
                self._hook_failed(impl.plugin_name, "collective_cli_commands", exc)
                continue
            if group.commands:
                found.setdefault(impl.plugin_name, {})["commands"] = sorted(group.commands)
        return found

    def _hook_failed(self, plugin_name: str, hook_name: str, exc: Exception) -> None:
        status = self.statuses.get(plugin_name) or PluginStatus(plugin_name, "?")
        status.status = f"failed: {hook_name}: {type(exc).__name__}: {exc}"
        self.statuses[plugin_name] = status
        self._report(status, exc)


def get_plugin_manager(load_entrypoints: bool = True, plugins: Iterable[Any] = ()) -> PluginManager:
    """Build a plugin manager (a factory, not a global: tests build their own)."""
    return PluginManager(load_entrypoints=load_entrypoints, plugins=plugins)


def resolve(name: str, registry: dict[str, Any], kind: str) -> Any:
    """Pick ``name`` from ``registry`` or raise a "did you mean" error."""
    try:
        return registry[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        known = ", ".join(registry) or "none"
        raise PluginError(f"Unknown {kind} {name!r} (known: {known}).{hint}") from None
