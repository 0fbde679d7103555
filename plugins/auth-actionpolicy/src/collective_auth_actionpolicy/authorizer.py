"""``authorization.provider: actionpolicy``: the authorizer the daemon calls for every request.

Which file decides (MCollective ``lookup_policy_file``):

1. ``<policy_dir>/<agent>.policy`` when it exists;
2. else ``<policy_dir>/<default_name>.policy`` when ``enable_default`` is on and
   it exists (``enable_default`` takes precedence over ``allow_unconfigured``);
3. else ``allow_unconfigured`` (default false: deny, "Could not load any valid
   policy files").

Files are re-read when they change: every ``authorize`` stats the files it
needs (inode, size, mtime, ctime) and re-parses a changed one; ``reload()``
(SIGHUP) forces a re-read of all. A file that fails to parse, cannot be read or
is writable by others (docs/security.md S16) is an error: the last good version of that
file stays in force and the error is logged once with ``file:line:col``; when
the file never had a good version, every request it governs is denied (fail
closed) with the error as the reason. The agent name is checked against
``^[a-z0-9_]{1,64}$`` before any path is built, and the path must resolve
inside ``policy_dir`` (docs/security.md S10).

Config (``plugins.actionpolicy``): ``policy_dir`` (default ``policies`` next to
the server config file; relative paths are relative to that file's
directory), ``allow_unconfigured`` and ``enable_default`` (booleans; the
strings ``1 y yes true on`` / ``0 n no false off`` are accepted too, anything
else is a configuration error), ``default_name`` (default ``default``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collective.authz import AuthzContext, Decision
from collective.config import ConfigError
from collective.names import AGENT_RE
from collective.security.keys import trust_problem

from .parser import MAX_FILE_BYTES, Groups, Policy, PolicyError, parse_groups, parse_policy
from .policy import Request, Verdict, evaluate_policy

log = logging.getLogger(__name__)

__all__ = ["ActionPolicyAuthorizer", "Settings", "parse_bool"]

DEFAULT_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
GROUPS_FILE = "groups"
_TRUE = frozenset({"1", "y", "yes", "true", "on"})
_FALSE = frozenset({"0", "n", "no", "false", "off", ""})


def parse_bool(value: Any, key: str) -> bool:
    """A real boolean, or MCollective's ``1``/``y``/``yes`` spellings (not "anything with a y")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ConfigError(f"plugins.actionpolicy.{key}: expected true or false (or 1/0, yes/no, "
                      f"y/n), not {value!r}")


@dataclass(frozen=True)
class Settings:
    policy_dir: Path
    allow_unconfigured: bool = False
    enable_default: bool = False
    default_name: str = "default"
    #: the groups file; None: ``<policy_dir>/groups`` (``mco policy explain --groups``)
    groups_file: Path | None = None

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        section: Mapping[str, Any] = config.plugin("actionpolicy") if config is not None else {}
        known = {"policy_dir", "allow_unconfigured", "enable_default", "default_name"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"plugins.actionpolicy.{unknown[0]}: unknown key (known: "
                              f"{', '.join(sorted(known))})")
        base = Path(getattr(config, "dir", None) or Path.cwd())
        raw_dir = section.get("policy_dir", "policies")
        if not isinstance(raw_dir, str) or not raw_dir:
            raise ConfigError(f"plugins.actionpolicy.policy_dir: expected a path, not {raw_dir!r}")
        default_name = section.get("default_name", "default")
        if not isinstance(default_name, str) or not DEFAULT_NAME_RE.fullmatch(default_name):
            raise ConfigError(f"plugins.actionpolicy.default_name: {default_name!r} does not match "
                              f"{DEFAULT_NAME_RE.pattern}")
        return cls(policy_dir=(base / Path(raw_dir).expanduser()).resolve(),
                   allow_unconfigured=parse_bool(section.get("allow_unconfigured", False),
                                                 "allow_unconfigured"),
                   enable_default=parse_bool(section.get("enable_default", False),
                                             "enable_default"),
                   default_name=default_name)


@dataclass
class _Entry:
    signature: tuple[int, ...] | None = None
    good: Any = None
    error: PolicyError | None = None
    stale: bool = False


class _Missing(Exception):
    pass


class FileCache:
    """Parsed files, re-parsed when their stat signature changes; the last good
    version of each is kept when a new one fails."""

    def __init__(self) -> None:
        self._entries: dict[Path, _Entry] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                entry.stale = True

    def get(self, path: Path, parse: Callable[[bytes, str], Any], what: str) -> _Entry | None:
        """The entry for ``path``, or None when the file does not exist."""
        with self._lock:
            entry = self._entries.get(path)
            try:
                return self._refresh(path, parse, what, entry)
            except _Missing:
                self._entries.pop(path, None)
                return None

    def _refresh(self, path: Path, parse: Callable[[bytes, str], Any], what: str,
                 entry: _Entry | None) -> _Entry:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
                         | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise _Missing() from None
        except OSError as exc:
            return self._failed(path, entry, None, PolicyError(f"cannot open: {exc.strerror}",
                                                               str(path)), what)
        try:
            st = os.fstat(fd)
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                         st.st_mode)
            if entry is not None and entry.signature == signature and not entry.stale:
                return entry
            if not stat.S_ISREG(st.st_mode):
                return self._failed(path, entry, signature,
                                    PolicyError("not a regular file", str(path)), what)
            unsafe = trust_problem(path, st, what)
            if unsafe:
                return self._failed(path, entry, signature,
                                    PolicyError(f"refused: {unsafe}", str(path)), what)
            chunks, total = [], 0
            while True:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_FILE_BYTES:
                    return self._failed(path, entry, signature, PolicyError(
                        f"the file is larger than {MAX_FILE_BYTES} bytes", str(path)), what)
                chunks.append(chunk)
        except OSError as exc:
            return self._failed(path, entry, None, PolicyError(f"cannot read: {exc.strerror}",
                                                               str(path)), what)
        finally:
            os.close(fd)
        try:
            value = parse(b"".join(chunks), str(path))
        except PolicyError as exc:
            return self._failed(path, entry, signature, exc, what)
        if entry is not None and entry.error is not None:
            log.info("%s %s parses again", what, path)
        new = _Entry(signature, value, None)
        self._entries[path] = new
        return new

    def _failed(self, path: Path, entry: _Entry | None, signature: tuple[int, ...] | None,
                error: PolicyError, what: str) -> _Entry:
        if entry is None:
            entry = _Entry()
        if entry.signature != signature or entry.stale or entry.error is None or signature is None:
            more = f" (and {len(error.errors) - 1} more)" if len(error.errors) > 1 else ""
            keeping = ("keeping its last good version" if entry.good is not None
                       else "it never loaded, so the requests it governs are denied")
            log.error("%s %s is invalid: %s%s; %s", what, path, error, more, keeping)
        entry.signature, entry.error, entry.stale = signature, error, False
        self._entries[path] = entry
        return entry


class ActionPolicyAuthorizer:
    """MCollective's actionpolicy: per-agent policy files of tab-separated rules."""

    name = "actionpolicy"

    def __init__(self, config: Any = None, settings: Settings | None = None) -> None:
        self.settings = settings if settings is not None else Settings.from_config(config)
        self._cache = FileCache()
        self._dir_problem: str | None = None
        if not self.settings.policy_dir.is_dir():
            log.warning("actionpolicy: policy directory %s does not exist; requests are %s",
                        self.settings.policy_dir,
                        "allowed (allow_unconfigured)" if self.settings.allow_unconfigured
                        else "denied until it holds policy files")

    # -- the hook's interface ----------------------------------------------------------
    def authorize(self, ctx: AuthzContext) -> Decision:
        verdict = self.decide(ctx.agent, Request.from_context(ctx))
        return Decision(verdict.allowed, verdict.reason, verdict.rule)

    def reload(self) -> None:
        """Re-read every policy and the groups file on the next request (SIGHUP)."""
        self._cache.invalidate()

    # -- the work ----------------------------------------------------------------------
    def policy_path(self, agent: str) -> Path | None:
        """``<policy_dir>/<agent>.policy``, or None for a name that may not become a path."""
        if not isinstance(agent, str) or not AGENT_RE.fullmatch(agent):
            return None
        base = self.settings.policy_dir
        path = base / f"{agent}.policy"
        if not path.resolve().is_relative_to(base.resolve()):
            return None
        return path

    def unsafe_policy_dir(self) -> str | None:
        """Why the policy directory must not be trusted (writable by group or others,
        owned by another user), or None; logged once per change."""
        base = self.settings.policy_dir
        try:
            problem = trust_problem(base, os.stat(base), "policy directory")
        except FileNotFoundError:
            return None
        except OSError as exc:
            problem = f"policy directory {base} cannot be read: {exc.strerror}"
        if problem != self._dir_problem:
            self._dir_problem = problem
            if problem:
                log.error("actionpolicy: %s; every request is denied", problem)
        return problem

    def groups(self) -> Groups | None:
        """The groups file: empty when missing, None when it exists but never parsed."""
        path = self.settings.groups_file or self.settings.policy_dir / GROUPS_FILE
        entry = self._cache.get(path, parse_groups, "groups file")
        if entry is None:
            return Groups(str(path))
        return entry.good

    def decide(self, agent: str, request: Request, trace: bool = False) -> Verdict:
        """The verdict for ``request`` to ``agent`` (``trace`` records every rule tried)."""
        path = self.policy_path(agent)
        if path is None:
            return Verdict(False, f"agent name {agent!r} is not valid for a policy lookup")
        unsafe = self.unsafe_policy_dir()
        if unsafe:
            return Verdict(False, f"policy directory refused: {unsafe}")
        entry = self._cache.get(path, parse_policy, "policy file")
        if entry is None and self.settings.enable_default:
            default = self.settings.policy_dir / f"{self.settings.default_name}.policy"
            entry = self._cache.get(default, parse_policy, "policy file")
        if entry is None:
            allow = self.settings.allow_unconfigured
            return Verdict(allow, "Could not load any valid policy files. "
                                  f"{'Allowing' if allow else 'Denying'} based on "
                                  f"allow_unconfigured: {str(allow).lower()} (looked for {path}"
                                  f"{' and the default policy' if self.settings.enable_default else ''})")
        policy: Policy | None = entry.good
        if policy is None:
            assert entry.error is not None
            return Verdict(False, f"policy file is invalid and never loaded: {entry.error}",
                           entry.error.location)
        uses_groups = any(r.callers is not None and r.callers.kind == "groups"
                          for r in policy.rules)
        groups = self.groups() if uses_groups else Groups("")
        return evaluate_policy(policy, request, groups, self.settings.allow_unconfigured,
                               trace=trace)
