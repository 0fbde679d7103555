"""The node's view of its puppet agent: settings, file locations, and what the files say.

Used by the agent and by the data plugins; nothing here changes anything. The state
comes from the files puppet itself keeps:

- ``agent_catalog_run_lockfile`` holds the pid of the run applying a catalog;
- ``agent_disabled_lockfile`` exists while the agent is disabled, with
  ``{"disabled_message": "..."}``;
- ``pidfile`` (``$rundir/agent.pid``) holds the pid of a running agent daemon;
- ``lastrunfile`` (``last_run_summary.yaml``): resources, events, times of the last run;
- ``lastrunreport`` (``last_run_report.yaml``): the full report, with its log lines;
- ``resourcefile`` (``resources.txt``): the resources of the last catalog, ``type[title]``.

Their locations come from ``plugins.puppet.paths`` or, for what is not given there, from
``puppet config print ... --section agent --render-as json`` (about a second), cached
per puppet command, confdir and ``puppet.conf`` modification time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import seconds_to_human

log = logging.getLogger(__name__)

#: the puppet settings the agent reads, by the names ``puppet config print`` knows
SETTINGS = ("lastrunfile", "lastrunreport", "agent_catalog_run_lockfile",
            "agent_disabled_lockfile", "pidfile", "resourcefile", "logdir")
#: where Puppet's all-in-one packages put the command (used when ``puppet`` is not on PATH)
AIO_PUPPET = "/opt/puppetlabs/bin/puppet"
#: files larger than this are not parsed (a summary is a few KiB; reports can be large)
MAX_SUMMARY_BYTES = 1 << 20
MAX_REPORT_BYTES = 32 << 20


class PuppetError(Exception):
    """A problem the caller should see as one line (the agent turns it into status 1)."""


def _bool(value: Any, default: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off"):
        return False
    return default


def _number(value: Any, default: float, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return min(max(number, low), high)


@dataclass(frozen=True)
class Settings:
    """``plugins.puppet`` of the node's config, with defaults (see the README)."""

    #: the puppet command: a name on PATH or a path, or an argv prefix
    command: tuple[str, ...] = ("puppet",)
    confdir: str | None = None
    config: str | None = None
    #: explicit file locations, by puppet setting name
    paths: Mapping[str, str] = field(default_factory=dict)
    allow_server_override: bool = False
    signal_daemon: bool = True
    splay: bool = True
    splaylimit: int = 30
    #: seconds a command such as ``puppet agent --disable`` may take
    command_timeout: float = 15.0
    #: seconds a started run may take (``--runtimeout``; then it is killed)
    run_timeout: int = 3600
    run_log: str | None = None
    resource_types: tuple[str, ...] = ()
    resource_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    resource_allow_managed: bool = False
    max_logs: int = 200

    @classmethod
    def from_config(cls, section: Mapping[str, Any], action_timeout: float = 30.0) -> Settings:
        command = section.get("command", "puppet")
        if isinstance(command, str):
            argv: tuple[str, ...] = (command,)
        elif isinstance(command, Sequence) and command and all(isinstance(c, str) for c in command):
            argv = tuple(command)
        else:
            raise PuppetError("plugins.puppet.command must be a string or a list of strings")
        paths = section.get("paths") or {}
        if not isinstance(paths, Mapping):
            raise PuppetError("plugins.puppet.paths must be a mapping of puppet setting to path")
        unknown = sorted(set(paths) - set(SETTINGS))
        if unknown:
            raise PuppetError(f"plugins.puppet.paths: unknown setting(s) {', '.join(unknown)} "
                              f"(known: {', '.join(SETTINGS)})")
        types = section.get("resource_types") or ()
        if isinstance(types, str):
            types = [] if types.strip() in ("", "none") else [t.strip() for t in types.split(",")]
        names = section.get("resource_names") or {}
        if not isinstance(names, Mapping):
            raise PuppetError("plugins.puppet.resource_names must map a type to a list of names")
        # commands must end before the action's deadline (threads cannot be killed)
        ceiling = max(action_timeout - 5.0, 1.0)
        return cls(
            command=argv,
            confdir=_text(section.get("confdir")),
            config=_text(section.get("config")),
            paths={str(k): str(v) for k, v in paths.items()},
            allow_server_override=_bool(section.get("allow_server_override"), False),
            signal_daemon=_bool(section.get("signal_daemon"), True),
            splay=_bool(section.get("splay"), True),
            splaylimit=int(_number(section.get("splaylimit"), 30, 0, 86400)),
            command_timeout=_number(section.get("command_timeout"), min(15.0, ceiling), 1.0, ceiling),
            run_timeout=int(_number(section.get("run_timeout"), 3600, 10, 7 * 86400)),
            run_log=_text(section.get("run_log")),
            resource_types=tuple(str(t).lower() for t in types if str(t).strip()),
            resource_names={str(k).lower(): tuple(str(n) for n in (v or ()))
                            for k, v in names.items()},
            resource_allow_managed=_bool(section.get("resource_allow_managed"), False),
            max_logs=int(_number(section.get("max_logs"), 200, 0, 10000)),
        )

    def conf_args(self) -> list[str]:
        """``--confdir DIR`` / ``--config FILE`` for every puppet command."""
        args: list[str] = []
        if self.confdir:
            args += ["--confdir", self.confdir]
        if self.config:
            args += ["--config", self.config]
        return args

    def puppet_conf(self) -> Path | None:
        if self.config:
            return Path(self.config)
        if self.confdir:
            return Path(self.confdir) / "puppet.conf"
        return None


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, (str, Path)) and str(value) else None


def resolve_command(settings: Settings) -> list[str]:
    """The puppet argv prefix with its first word made absolute.

    :raises PuppetError: when the command cannot be found
    """
    first, rest = settings.command[0], list(settings.command[1:])
    if os.sep in first:
        if not os.access(first, os.X_OK):
            raise PuppetError(f"{first} is not an executable (plugins.puppet.command)")
        return [first, *rest]
    found = shutil.which(first)
    if found is None and first == "puppet" and os.access(AIO_PUPPET, os.X_OK):
        found = AIO_PUPPET
    if found is None:
        raise PuppetError(f"{first} not found on this node (set plugins.puppet.command)")
    return [found, *rest]


# -- running commands -----------------------------------------------------------------------

def run_command(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """Run ``argv`` (never a shell) in its own session with stdin from /dev/null and the
    output in temporary files; after ``timeout`` seconds it is killed with its process group
    and descendants (at most 4 s more).

    :returns: ``(exit status, stdout, stderr)``
    :raises PuppetError: when it cannot start or passes the timeout
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise PuppetError(f"could not run {argv[0]}: {exc}") from None
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc, grace=2.0)
            raise PuppetError(f"{' '.join(argv[1:3])} did not finish within {timeout:.0f}s "
                              "and was killed") from None
        out.seek(0)
        err.seek(0)
        return (code, out.read(1 << 20).decode("utf-8", "replace"),
                err.read(1 << 20).decode("utf-8", "replace"))


def kill_tree(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Stop a hung run: SIGTERM, then SIGKILL, its process group and every descendant
    (puppet starts ``exec`` commands in sessions of their own, out of its group)."""
    from collective.server.procs import kill_tree as kill_process_tree

    kill_process_tree(proc.pid, grace=grace, pgid=proc.pid)
    proc.poll()  # reap it


# -- where the files are ------------------------------------------------------------------

_cache: dict[tuple[Any, ...], dict[str, str]] = {}
_cache_lock = threading.Lock()


def locate(settings: Settings, timeout: float) -> dict[str, str]:
    """Every setting of :data:`SETTINGS` -> its path.

    :raises PuppetError: when puppet cannot tell them
    """
    missing = [name for name in SETTINGS if name not in settings.paths]
    if not missing:
        return dict(settings.paths)
    conf = settings.puppet_conf()
    try:
        mtime = conf.stat().st_mtime_ns if conf is not None else None
    except OSError:
        mtime = None
    key = (settings.command, settings.confdir, settings.config, mtime)
    with _cache_lock:
        found = _cache.get(key)
    if found is None:
        argv = [*resolve_command(settings), "config", "print", *SETTINGS, "--section", "agent",
                "--render-as", "json", *settings.conf_args()]
        code, out, err = run_command(argv, timeout)
        try:
            doc = json.loads(out[out.index("{"):]) if "{" in out else None
        except ValueError:
            doc = None
        if code != 0 or not isinstance(doc, dict) or not all(isinstance(doc.get(s), str)
                                                              for s in SETTINGS):
            why = (err or out).strip().splitlines()[-1:] or [f"exit status {code}"]
            raise PuppetError(f"puppet config print failed: {why[0][:200]}")
        found = {s: doc[s] for s in SETTINGS}
        with _cache_lock:
            _cache[key] = found
    return {**found, **settings.paths}


# -- runs this daemon started -------------------------------------------------------------

class Runs:
    """The ``puppet agent --onetime`` processes started by this daemon, by run lock path.

    Puppet takes its run lock about a second after it starts (after splay, too); a run
    of ours that is alive and has not yet recorded a run (``lastrun`` before its start)
    counts as applying, so a second ``runonce`` in that window is refused too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[subprocess.Popen[Any], int]] = {}

    def add(self, key: str, proc: subprocess.Popen[Any], started: int) -> None:
        with self._lock:
            self._runs[key] = (proc, started)

    def discard(self, key: str, proc: subprocess.Popen[Any]) -> None:
        with self._lock:
            if key in self._runs and self._runs[key][0] is proc:
                del self._runs[key]

    def alive(self, key: str, lastrun: int) -> int | None:
        """The pid of our run for ``key`` if it has neither exited nor recorded its run."""
        with self._lock:
            proc, started = self._runs.get(key, (None, 0))
        if proc is not None and proc.poll() is None and lastrun < started:
            return proc.pid
        return None


RUNS = Runs()


# -- reading the files ---------------------------------------------------------------------

def read_pid(path: str) -> int | None:
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 1 << 31 else None


def pid_alive(pid: int) -> bool:
    """A live process that is (as far as /proc tells) a puppet process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust kill(0)
    return b"puppet" in cmdline


def applying_pid(paths: Mapping[str, str], last: int) -> int | None:
    """The pid applying a catalog: the run lock's, or a run this daemon started that has
    not recorded a run since (``last`` is the summary's ``last_run``)."""
    pid = read_pid(paths["agent_catalog_run_lockfile"])
    if pid is not None and pid_alive(pid):
        return pid
    return RUNS.alive(paths["agent_catalog_run_lockfile"], last)


def daemon_pid(paths: Mapping[str, str]) -> int | None:
    pid = read_pid(paths["pidfile"])
    return pid if pid is not None and pid_alive(pid) else None


def disable_message(paths: Mapping[str, str]) -> str | None:
    """None when enabled; else the lock's ``disabled_message`` ("" when it has none)."""
    lock = Path(paths["agent_disabled_lockfile"])
    try:
        text = lock.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError:
        return ""
    message = doc.get("disabled_message") if isinstance(doc, dict) else None
    return message if isinstance(message, str) else ""


def _load_yaml(path: str, limit: int, ruby: bool = False) -> Any:
    import yaml

    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PuppetError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise PuppetError(f"{path} is larger than {limit >> 20} MiB; not parsed")
    loader = _ruby_loader() if ruby else getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(data, Loader=loader)  # noqa: S506 - safe loaders only
    except yaml.YAMLError as exc:
        raise PuppetError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None


def _ruby_loader() -> Any:
    """A safe YAML loader that reads Ruby objects (``!ruby/object:...``) as mappings."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class RubyLoader(base):  # type: ignore[misc,valid-type]
        pass

    def construct(loader: Any, suffix: str, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    RubyLoader.add_multi_constructor("!ruby/", construct)
    return RubyLoader


def _plain(value: Any, depth: int = 0) -> Any:
    """JSON-safe copy: mappings with string keys, lists, str/int/float/bool/None."""
    if depth > 8:
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def load_summary(paths: Mapping[str, str]) -> dict[str, Any]:
    """``last_run_summary.yaml`` with its sections always present (empty before any run)."""
    data = _load_yaml(paths["lastrunfile"], MAX_SUMMARY_BYTES)
    summary: dict[str, Any] = {"changes": {}, "time": {}, "resources": {}, "version": {},
                               "events": {}}
    if isinstance(data, Mapping):
        for key, value in _plain(data).items():
            summary[key] = value
    for key in ("changes", "time", "resources", "version", "events"):
        if not isinstance(summary.get(key), dict):
            summary[key] = {}
    summary["resources"] = {"failed": 0, "changed": 0, "corrective_change": 0, "total": 0,
                            "restarted": 0, "out_of_sync": 0, **summary["resources"]}
    return summary


def _int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def _num(value: Any) -> float | int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0


def lastrun(summary: Mapping[str, Any]) -> int:
    return _int(summary["time"].get("last_run", 0))


def run_figures(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The last-run numbers MCollective's ``last_run_summary`` and ``resource()`` give."""
    resources, times = summary["resources"], summary["time"]
    last = lastrun(summary)
    version = summary["version"].get("config", "unknown")
    return {
        "out_of_sync_resources": _int(resources.get("out_of_sync", 0)),
        "failed_resources": _int(resources.get("failed", 0)),
        "corrected_resources": _int(resources.get("corrective_change", 0)),
        "changed_resources": _int(resources.get("changed", 0)),
        "total_resources": _int(resources.get("total", 0)),
        "total_time": _num(times.get("total", 0)),
        "config_retrieval_time": _num(times.get("config_retrieval", 0)),
        "lastrun": last,
        "since_lastrun": int(time.time()) - last,
        "config_version": version if isinstance(version, (str, int)) else str(version),
    }


def managed_resources(paths: Mapping[str, str]) -> list[str]:
    """``type[title]`` of every resource in the last catalog (``resources.txt``)."""
    try:
        with open(paths["resourcefile"], errors="replace") as handle:
            return [line.rstrip("\n") for line in handle if line.strip()]
    except OSError:
        return []


def type_distribution(paths: Mapping[str, str]) -> dict[str, int]:
    """How many resources of each type the last catalog had (``File``, ``Apache::Vhost``)."""
    counts: dict[str, int] = {}
    for line in managed_resources(paths):
        kind = "::".join(part.capitalize() for part in line.split("[", 1)[0].split("::"))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def last_run_logs(paths: Mapping[str, str], limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` log lines of ``last_run_report.yaml``."""
    import datetime

    if limit <= 0:
        return []
    report = _load_yaml(paths["lastrunreport"], MAX_REPORT_BYTES, ruby=True)
    logs = report.get("logs") if isinstance(report, Mapping) else None
    out: list[dict[str, Any]] = []
    for item in (logs if isinstance(logs, list) else [])[-limit:]:
        if not isinstance(item, Mapping):
            continue
        try:
            when = int(datetime.datetime.fromisoformat(str(item.get("time"))).timestamp())
        except ValueError:
            when = 0
        out.append({"time_utc": when, "time": when, "level": str(item.get("level", "")),
                    "source": str(item.get("source", "")),
                    "msg": str(item.get("message", "")).rstrip()[:2000]})
    return out


def status(paths: Mapping[str, str]) -> dict[str, Any]:
    """MCollective's status hash: applying, enabled, daemon_present, idling, lastrun,
    since_lastrun, disable_message, status and message."""
    summary = load_summary(paths)
    last = lastrun(summary)
    applying = applying_pid(paths, last) is not None
    message = disable_message(paths)
    daemon = daemon_pid(paths) is not None
    result: dict[str, Any] = {
        "applying": applying,
        "enabled": message is None,
        "daemon_present": daemon,
        "lastrun": last,
        "idling": daemon and not applying,
        "disable_message": message or "",
        "since_lastrun": int(time.time()) - last,
    }
    if not result["enabled"]:
        result["status"] = "disabled"
    elif applying:
        result["status"] = "applying a catalog"
    elif result["idling"]:
        result["status"] = "idling"
    else:
        result["status"] = "stopped"
    if last:
        ago = f"last completed run {seconds_to_human(result['since_lastrun'])} ago"
    else:
        ago = "no completed run yet"
    result["message"] = f"Currently {result['status']}; {ago}"
    return result
