"""SIGHUP: serve exactly what is installed now, without losing an accepted request.

Python cannot swap the code of a running process reliably: ``importlib.reload``
leaves every existing reference (agent classes, their instances, ``from x import y``
copies) pointing at the old code, a removed distribution's modules stay in
``sys.modules``, and an upgraded dependency stays loaded at its old version. So:

1. On SIGHUP the daemon takes a :class:`Fingerprint` of what it would load: the
   installed distributions and their versions, the ``collective`` entry points, the
   files of the packages behind them and of collective itself, and the config file.
2. **Unchanged** (an admin edited a policy, added a client key, changed facts): the
   in-process reload re-reads the trust store, facts and policies and reopens the
   audit log, as it always did (:meth:`~collective.server.daemon.Daemon.reload`).
3. **Changed**: a *preflight* runs ``collectived --check --json`` in a fresh
   interpreter (:func:`preflight`). A config that does not load, or a core that no
   longer imports, aborts the reload with one log line and the running daemon goes
   on serving. A broken *plugin* does not: it is reported by name and the rest serve.
4. Then the daemon stops taking new work (unsubscribes, each confirmed by the
   broker, so a directed request waits in the node's queue), lets every accepted
   request finish and send its reply, disconnects, and ``execve``\\ s the same
   interpreter with the same command line (:func:`exec_argv`): same PID, pidfile
   and parent; a fresh interpreter imports exactly the installed code. The replay
   cache and any reply still waiting for the broker are handed to the new image
   through an anonymous file (:class:`Handover`), so a reload neither opens a replay
   window nor drops a reply.

Broadcast requests published while the node is unsubscribed (the drain plus the new
image's start, about a second when idle) are not seen by it: topics are
at-most-once, as for any daemon restart.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The environment variable naming the handover file descriptor of a re-exec.
HANDOVER_ENV = "COLLECTIVE_HANDOVER_FD"
#: At most this many files are looked at per package (a fingerprint stays cheap).
MAX_FILES_PER_PACKAGE = 5000
#: How long the preflight may take before the reload is abandoned.
PREFLIGHT_TIMEOUT = 120.0

_CORE_DIST = "collective-core"
_CORE_PACKAGE = "collective"


# -- the fingerprint ---------------------------------------------------------------------
def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _package_dirs(module: str) -> list[str]:
    """The directories of ``module``'s top-level package, found without importing it."""
    top = module.split(":", 1)[0].split(".", 1)[0].strip()
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return sorted(str(p) for p in spec.submodule_search_locations)
    return [spec.origin] if spec.origin else []


def _tree_digest(paths: Iterable[str]) -> str:
    """A digest of the names, sizes and mtimes of the files under ``paths``."""
    digest = hashlib.sha256()
    for root in sorted(set(paths)):
        count = 0
        if os.path.isfile(root):
            walk: Iterable[tuple[str, list[str], list[str]]] = [
                (os.path.dirname(root), [], [os.path.basename(root)])]
        else:
            walk = os.walk(root)
        for dirpath, dirnames, filenames in walk:
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                count += 1
                if count >= MAX_FILES_PER_PACKAGE:
                    break
            if count >= MAX_FILES_PER_PACKAGE:
                break
    return digest.hexdigest()[:16]


def _record_digest(dist: md.Distribution) -> str:
    """A digest of the distribution's RECORD (the hash of every installed file)."""
    try:
        text = dist.read_text("RECORD") or ""
    except OSError:
        text = ""
    return hashlib.sha256(text.encode()).hexdigest()[:16] if text else ""


@dataclass(frozen=True)
class Fingerprint:
    """What a fresh ``collectived`` would load; equal fingerprints mean nothing to re-exec for."""

    #: normalised distribution name -> version, for every installed distribution
    distributions: Mapping[str, str] = field(default_factory=dict)
    #: entry point name -> ``(value, distribution, version)`` in the ``collective`` group
    entry_points: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)
    #: package (``collective`` and every entry point's top-level package) ->
    #: ``(distribution, digest of its files and of the distribution's RECORD)``; the
    #: files catch an edited editable install, the RECORD a rebuilt same-version wheel
    code: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: sha256 of the config file ("" without one)
    config: str = ""

    def changes(self, new: Fingerprint) -> list[str]:
        """Short human-readable differences from ``self`` to ``new``, one per thing."""
        out: list[str] = []
        told: set[str] = set()  # distributions already named by a plugin line
        for name in sorted(set(self.entry_points) | set(new.entry_points)):
            old_ep, new_ep = self.entry_points.get(name), new.entry_points.get(name)
            if old_ep == new_ep:
                continue
            if old_ep is None and new_ep is not None:
                out.append(f"new plugin {name} ({new_ep[1]} {new_ep[2]})")
            elif new_ep is None and old_ep is not None:
                out.append(f"removed plugin {name} ({old_ep[1]} {old_ep[2]})")
            elif old_ep is None or new_ep is None:
                continue
            elif old_ep[:2] == new_ep[:2]:
                out.append(f"plugin {name} ({new_ep[1]}) {old_ep[2]} -> {new_ep[2]}")
            else:
                out.append(f"plugin {name}: {old_ep[0]} ({old_ep[1]} {old_ep[2]}) -> "
                           f"{new_ep[0]} ({new_ep[1]} {new_ep[2]})")
            told.update(ep[1] for ep in (old_ep, new_ep) if ep is not None)
        for name in sorted(set(self.distributions) | set(new.distributions)):
            old_v, new_v = self.distributions.get(name), new.distributions.get(name)
            if old_v != new_v and name not in told:
                out.append(f"{name} {old_v or '(none)'} -> {new_v or '(removed)'}")
                told.add(name)
        for package in sorted(set(self.code) & set(new.code)):
            dist = new.code[package][0]
            if self.code[package] != new.code[package] and dist not in told:
                out.append(f"files of {package} changed")
        if self.config != new.config:
            out.append("config file changed")
        return out


def take_fingerprint(config_path: str | os.PathLike[str] | None) -> Fingerprint:
    """The :class:`Fingerprint` of this interpreter's ``sys.path`` and ``config_path``.

    Takes a few milliseconds per installed distribution; nothing is imported.
    """
    from ..plugins import GROUP

    importlib.invalidate_caches()  # see what pip wrote since the last look
    dists: dict[str, str] = {}
    found: dict[str, md.Distribution] = {}
    for dist in md.distributions():
        try:
            name = _norm(dist.metadata["Name"] or "")
        except Exception:  # noqa: BLE001 - a broken METADATA is skipped, as pip skips it
            continue
        if name and name not in dists:  # the first on sys.path wins, as for imports
            dists[name] = dist.version
            found[name] = dist
    eps: dict[str, tuple[str, str, str]] = {}
    packages: dict[str, str] = {_CORE_PACKAGE: _norm(_CORE_DIST)}
    for ep in md.entry_points(group=GROUP):
        dist = getattr(ep, "dist", None)
        dist_name = _norm(dist.metadata["Name"] or "") if dist is not None else "unknown"
        eps[ep.name] = (ep.value, dist_name, dist.version if dist is not None else "unknown")
        packages.setdefault(ep.value.split(":", 1)[0].split(".", 1)[0].strip(), dist_name)
    code: dict[str, tuple[str, str]] = {}
    for package, dist_name in sorted(packages.items()):
        record = _record_digest(found[dist_name]) if dist_name in found else ""
        code[package] = (dist_name, f"{_tree_digest(_package_dirs(package))}:{record}")
    config = ""
    if config_path:
        try:
            config = hashlib.sha256(Path(config_path).read_bytes()).hexdigest()
        except OSError as exc:
            config = f"unreadable: {exc.strerror or exc}"
    return Fingerprint(distributions=dists, entry_points=eps, code=code, config=config)


# -- the preflight -----------------------------------------------------------------------
@dataclass
class Preflight:
    """What ``collectived --check --json`` found in a fresh interpreter."""

    #: the new image would start (plugin problems do not make it False)
    ok: bool
    #: why it would not start (the reload is abandoned)
    error: str | None = None
    #: plugins and agents that would be skipped, each naming the plugin
    problems: list[str] = field(default_factory=list)
    #: agent name -> DDL version the new image would serve
    agents: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _interpreter_flags() -> list[str]:
    """``-X``/``-W``/``-E``... options of this interpreter, for the preflight."""
    try:
        return list(subprocess._args_from_interpreter_flags())  # type: ignore[attr-defined]
    except Exception:  # a private helper: without it the preflight runs with the defaults
        return []


def preflight(config_path: str | os.PathLike[str] | None, python: str | None = None,
              timeout: float = PREFLIGHT_TIMEOUT, env: Mapping[str, str] | None = None) -> Preflight:
    """Run ``PYTHON -m collective.server.main --check --json [-c CONFIG]`` and read its verdict.

    :param python: the interpreter (default: this one, ``sys.executable``)
    """
    python = python or sys.executable
    flags = _interpreter_flags() if python == sys.executable else []
    # never the working directory on sys.path (docs/security.md S18)
    argv = [python, *flags, *([] if "-P" in flags else ["-P"]),
            "-m", "collective.server.main", "--check", "--json"]
    if config_path:
        argv += ["-c", str(config_path)]
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired:
        return Preflight(False, f"the check did not finish within {timeout:g}s",
                         seconds=time.monotonic() - started)
    except OSError as exc:
        return Preflight(False, f"cannot run {python}: {exc.strerror or exc}",
                         seconds=time.monotonic() - started)
    seconds = time.monotonic() - started
    verdict: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                verdict = json.loads(line)
            except ValueError:
                verdict = None
            break
    if not isinstance(verdict, dict):
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        why = lines[-1].strip() if lines else f"exit status {proc.returncode}, no verdict"
        return Preflight(False, f"the new code does not start: {why}", seconds=seconds)
    problems = [str(p) for p in verdict.get("problems") or []]
    agents = {str(k): str(v) for k, v in (verdict.get("agents") or {}).items()}
    ok = bool(verdict.get("ok")) and proc.returncode == 0
    error = None if ok else str(verdict.get("error") or f"exit status {proc.returncode}")
    return Preflight(ok, error, problems, agents, seconds)


# -- re-exec -----------------------------------------------------------------------------
def exec_argv() -> list[str] | None:
    """The command line that started this process, to ``execv`` it again, or None when
    it cannot be known (an embedding application).

    ``sys.orig_argv`` keeps the interpreter's own options and ``-m MODULE``; its first
    item is replaced by ``sys.executable`` so a bare ``python`` found on ``$PATH`` at
    start cannot become another one. ``python -m collective.server.main -c F`` (``mco
    fleet``) and the ``collectived`` console script (``/venv/bin/python
    /venv/bin/collectived -c F``) both come back as they were started.
    """
    orig = list(getattr(sys, "orig_argv", None) or [])
    if not orig or not sys.executable:
        return None
    return [sys.executable, *orig[1:]]


@dataclass
class Handover:
    """State the new image takes over: the replay cache, unsent replies, timings."""

    #: ``(caller, request id, deadline ms)`` of requests already run
    seen: list[tuple[str, str, float]] = field(default_factory=list)
    #: ``(deadline, logical destination, signed reply)`` not yet accepted by the broker
    outbox: list[tuple[float, str, bytes]] = field(default_factory=list)
    #: unix time of the SIGHUP, and how long the drain took
    sighup_at: float = 0.0
    drain_seconds: float = 0.0
    #: what changed (for the new image's log line)
    changes: list[str] = field(default_factory=list)
    #: another SIGHUP came during the reload: the new image checks again
    rehup: bool = False

    def to_json(self) -> str:
        return json.dumps({
            "seen": self.seen,
            "outbox": [[d, dest, base64.b64encode(w).decode()] for d, dest, w in self.outbox],
            "sighup_at": self.sighup_at, "drain_seconds": self.drain_seconds,
            "changes": self.changes, "rehup": self.rehup,
        })

    @classmethod
    def from_json(cls, text: str) -> Handover:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a handover")
        return cls(
            seen=[(str(c), str(r), float(d)) for c, r, d in data.get("seen") or []],
            outbox=[(float(d), str(dest), base64.b64decode(w)) for d, dest, w in data.get("outbox") or []],
            sighup_at=float(data.get("sighup_at") or 0.0),
            drain_seconds=float(data.get("drain_seconds") or 0.0),
            changes=[str(c) for c in data.get("changes") or []],
            rehup=bool(data.get("rehup")),
        )

    def write(self) -> int:
        """Write to an anonymous file; returns its descriptor, inheritable across exec."""
        handle = tempfile.TemporaryFile(mode="w+b")  # never has a name (O_TMPFILE)
        fd = os.dup(handle.fileno())
        handle.close()
        os.write(fd, self.to_json().encode())
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        return fd

    @classmethod
    def take(cls, environ: dict[str, str] | None = None) -> Handover | None:
        """The handover of the image that exec'd this one (and forget it), or None."""
        environ = os.environ if environ is None else environ
        text = environ.pop(HANDOVER_ENV, None)
        if not text:
            return None
        try:
            fd = int(text)
        except ValueError:
            log.warning("ignoring %s=%r: not a file descriptor", HANDOVER_ENV, text)
            return None
        try:
            with os.fdopen(fd, "rb") as handle:
                return cls.from_json(handle.read().decode())
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring the handover of the previous image: %s", exc)
            return None


def reexec(argv: list[str], handover: Handover) -> None:
    """Replace this process image by ``argv`` (same PID); returns only if exec failed
    (the error is raised, SIGHUP is unblocked again and the handover is discarded).

    SIGHUP stays *blocked* across the exec: one that arrives while the new image starts
    is kept pending until it installs its handler (:func:`accept_sighup`), instead of
    killing it (the default action).
    """
    fd = handover.write()
    os.environ[HANDOVER_ENV] = str(fd)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - flushing is best effort
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        os.execv(argv[0], argv)
    except OSError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        os.environ.pop(HANDOVER_ENV, None)
        os.close(fd)
        raise


def accept_sighup(handler: Any) -> None:
    """Install the SIGHUP handler, then unblock SIGHUP (blocked by :func:`reexec`)."""
    signal.signal(signal.SIGHUP, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


# -- the SIGHUP handler's work ---------------------------------------------------------------
class Reloader:
    """Decides what a SIGHUP does and does it (see the module doc).

    :param config_path: the config file the daemon was started with (None: defaults)
    :param fingerprint: taken at start, *before* the plugins were loaded (a change
        racing with the start is then seen at the next SIGHUP, never missed)
    :param argv: the command line to re-exec; None disables re-exec (an embedding
        application), and changed code is then only reported
    :param rebuild: makes and starts a new daemon in this process when the exec
        itself failed (the old one is stopped by then)
    """

    def __init__(self, config_path: str | os.PathLike[str] | None, fingerprint: Fingerprint,
                 argv: list[str] | None, rebuild: Any = None,
                 preflight_timeout: float = PREFLIGHT_TIMEOUT) -> None:
        self.config_path = config_path
        self.fingerprint = fingerprint
        self.argv = argv
        self.rebuild = rebuild
        self.preflight_timeout = preflight_timeout

    def handle(self, daemon: Any, stop: Any = None, requested: Any = None) -> Any:
        """React to one SIGHUP; returns the daemon to go on with (normally ``daemon``).

        Does not return when the daemon re-executes itself.

        :param stop: an Event set by SIGTERM: a drain in progress ends and nothing is exec'd
        :param requested: the SIGHUP Event; set again at exec time, it is handed over so
            the new image checks once more
        """
        sighup_at = time.time()
        new = take_fingerprint(self.config_path)
        changes = self.fingerprint.changes(new)
        if not changes:
            daemon.reload()
            return daemon
        summary = "; ".join(changes[:10]) + (f"; and {len(changes) - 10} more" if len(changes) > 10 else "")
        if self.argv is None:
            log.warning("SIGHUP: the installed code changed (%s) but this process cannot re-exec "
                        "itself: reloading in place; restart it to run the new code", summary)
            daemon.reload()
            return daemon
        log.info("SIGHUP: %s; checking the new code in a fresh interpreter", summary)
        check = preflight(self.config_path, timeout=self.preflight_timeout)
        if not check.ok:
            log.error("reload aborted, still serving with the running code: %s "
                      "(fix it and send SIGHUP again)", check.error)
            return daemon
        for problem in check.problems:
            log.warning("after the reload: %s", problem)
        if stop is not None and stop.is_set():
            return daemon
        drain_started = time.monotonic()
        log.info("checked in %.2fs (agents: %s); pausing to re-exec, %d request(s) to finish",
                 check.seconds, ", ".join(f"{n} {v}" for n, v in sorted(check.agents.items())),
                 daemon.pending)
        daemon.pause()
        log.info("paused: unsubscribed, directed requests now wait in the broker; draining %d "
                 "request(s)", daemon.pending)
        daemon.drain(stop=stop)
        if stop is not None and stop.is_set():
            log.info("stopping during the drain: not re-executing")
            return daemon
        drain_seconds = time.monotonic() - drain_started
        handover = Handover(
            seen=daemon.guard.export(),
            outbox=[(deadline, dest.logical(), wire) for deadline, dest, wire in daemon.take_outbox()],
            sighup_at=sighup_at, drain_seconds=drain_seconds, changes=changes,
            rehup=bool(requested is not None and requested.is_set()))
        daemon.stop()
        log.info("drained in %.2fs; re-executing %s (pid %d)", drain_seconds,
                 " ".join(self.argv), os.getpid())
        try:
            reexec(self.argv, handover)
        except OSError as exc:
            log.error("re-exec failed (%s): starting the daemon again in this process with the "
                      "code it already has", exc.strerror or exc)
            if self.rebuild is None:
                raise
            return self.rebuild(handover)
        raise AssertionError("unreachable: execv returned")  # pragma: no cover
