"""The ``process`` agent (MCollective ``process`` agent 3.0.0 / the older 1.3 ``kill``).

``list`` matches ``pattern`` as a *literal substring* of each command line unless
``regex=true`` (docs/security.md S9: MCollective interpolated the pattern into a Ruby regex).
A regex is first checked by :func:`collective.filters.compile_regex` (length cap,
nested quantifiers such as ``(a+)+`` refused, status 4), then matched in a
separate Python process (``sys.executable -I -S``, the pattern and command lines on
stdin, never argv or a shell) that is killed after ``regex_timeout`` seconds: CPython's
``re`` holds the GIL while it backtracks, so a slow pattern matched in the daemon
would stall every other request, and no static check catches every slow pattern
(``(a|aa)+$`` gets through the core's heuristic).

``kill`` signals one process through psutil (which checks the pid was not reused).
It refuses pid 1, the daemon itself, its threads and its ancestors, ids of threads
that are not the process leader, and (unless ``plugins.process.kill_users`` allows
it) processes whose real uid differs from the daemon's effective uid.

Config (``plugins.process``): ``max_processes`` (1000) most records returned;
``regex_timeout`` (5 s, at most the DDL timeout minus 2) budget for regex matching;
``kill_users``: user names (or ``"*"``) whose processes ``kill`` may signal besides
the daemon's own user.
"""

from __future__ import annotations

import json
import os
import signal as signal_module
import subprocess
import sys
import time
from typing import Any

from collective.agent import Aborted, Agent, InvalidData, Reply, Request, action

#: Characters of a command line that are matched and returned (a Java class path can
#: be 100 KiB; matching is bounded by this times the number of processes).
MAX_CMDLINE_CHARS = 4096
#: Default cap on the records one ``list`` reply carries.
DEFAULT_MAX_PROCESSES = 1000
#: Default seconds a regex may spend matching all command lines.
DEFAULT_REGEX_TIMEOUT = 5.0

#: The signals ``kill`` may send, by the names the DDL accepts.
SIGNAL_NAMES = ("TERM", "KILL", "HUP", "INT", "USR1", "USR2", "QUIT", "CONT", "STOP")

_ATTRS = ["pid", "ppid", "username", "cmdline", "name", "status", "memory_info", "cpu_times",
          "create_time", "uids"]

# Runs in a child interpreter (-I: no environment, no user site, no cwd on sys.path;
# -S: no site module). Reads {"pattern", "texts"} on stdin, prints matching indices.
_MATCHER = (
    "import json, re, sys\n"
    "doc = json.load(sys.stdin)\n"
    "rx = re.compile(doc['pattern'])\n"
    "sys.stdout.write(json.dumps([i for i, t in enumerate(doc['texts']) if rx.search(t)]))\n"
)


def _psutil() -> Any:
    """psutil, imported on first use: a node without it answers with status 1, not a crash."""
    try:
        import psutil
    except ImportError as exc:
        raise Aborted(f"psutil not found on this node: {exc} "
                      "(install it: pip install psutil)") from None
    return psutil


def _signal_number(name: str) -> tuple[int, str]:
    """``TERM``, ``SIGTERM`` or ``15`` -> ``(15, "SIGTERM")``; only :data:`SIGNAL_NAMES`."""
    text = str(name).strip().upper()
    if text.isdigit():
        number = int(text)
        for short in SIGNAL_NAMES:
            if int(getattr(signal_module, "SIG" + short)) == number:
                return number, "SIG" + short
        raise InvalidData(f"Cannot validate input signal: {number} is not one of the allowed "
                          f"signals on this node ({' '.join(SIGNAL_NAMES)})")
    short = text[3:] if text.startswith("SIG") else text
    if short not in SIGNAL_NAMES:
        raise InvalidData(f"Cannot validate input signal: {name!r} is not one of "
                          f"{' '.join(SIGNAL_NAMES)}")
    return int(getattr(signal_module, "SIG" + short)), "SIG" + short


def command_text(info: dict[str, Any]) -> str:
    """The command line as one string (``[name]`` when empty, as ps shows kernel threads
    and zombies), cut to :data:`MAX_CMDLINE_CHARS`."""
    argv = info.get("cmdline") or []
    text = " ".join(str(a) for a in argv) if argv else f"[{info.get('name') or ''}]"
    return text[:MAX_CMDLINE_CHARS]


def _record(info: dict[str, Any], now: float) -> dict[str, Any]:
    """A JSON-safe process record from psutil's ``as_dict`` (unknown values are None)."""
    mem = info.get("memory_info")
    times = info.get("cpu_times")
    created = info.get("create_time")
    cpu = None
    if times is not None and isinstance(created, (int, float)) and now > created:
        # the lifetime average, as ps(1) computes %CPU
        cpu = round(100.0 * (times.user + times.system) / (now - created), 1)
    return {
        "pid": info.get("pid"),
        "ppid": info.get("ppid"),
        "username": info.get("username"),
        "cmdline": command_text(info),
        "name": info.get("name"),
        "state": info.get("status"),
        "rss": getattr(mem, "rss", None),
        "vsize": getattr(mem, "vms", None),
        "cpu_percent": cpu,
        "create_time": round(created, 2) if isinstance(created, (int, float)) else None,
    }


def _thread_group(pid: int) -> int | None:
    """The process (thread group) id of ``pid`` on Linux, None when unknown.

    ``/proc/<tid>`` exists for every thread although it is not listed, and a
    signal sent to a thread id goes to its whole process.
    """
    try:
        with open(f"/proc/{int(pid)}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Process(Agent):
    """List processes by command line and signal them."""

    name = "process"

    # -- config ----------------------------------------------------------------------
    def _setting(self, key: str, default: float, low: float, high: float) -> float:
        value = self.config.plugin("process").get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.log.warning("plugins.process.%s=%r is not a number; using %s", key, value, default)
            number = default
        return min(max(number, low), high)

    def max_processes(self) -> int:
        return int(self._setting("max_processes", DEFAULT_MAX_PROCESSES, 1, 100_000))

    def regex_timeout(self) -> float:
        return self._setting("regex_timeout", DEFAULT_REGEX_TIMEOUT, 0.1, max(self.timeout - 2, 1))

    def kill_users(self) -> set[str]:
        value = self.config.plugin("process").get("kill_users") or []
        if isinstance(value, str):
            value = value.split(",")
        return {str(v).strip() for v in value if str(v).strip()}

    # -- list --------------------------------------------------------------------------
    @action
    def list(self, request: Request, reply: Reply) -> None:
        psutil = _psutil()
        pattern: str = request.get("pattern") or ""
        use_regex = bool(request.get("regex"))
        user = request.get("user")
        zombies = bool(request.get("just_zombies"))
        if use_regex:
            from collective.filters import FilterError, compile_regex

            try:
                compile_regex(pattern)
            except FilterError as exc:
                raise InvalidData(f"Cannot validate input pattern: {exc}") from None
        now = time.time()
        candidates: list[dict[str, Any]] = []
        for proc in psutil.process_iter(attrs=_ATTRS, ad_value=None):
            info = proc.info
            if zombies and info.get("status") != psutil.STATUS_ZOMBIE:
                continue
            if user is not None and info.get("username") != user:
                uids = info.get("uids")
                if not (user.isdigit() and uids is not None and uids.real == int(user)):
                    continue
            if not use_regex and pattern not in command_text(info):
                continue
            candidates.append(info)
        if use_regex and pattern:
            candidates = self._regex_filter(pattern, candidates)
        candidates.sort(key=lambda i: i.get("pid") or 0)
        limit = self.max_processes()
        if len(candidates) > limit:
            self.log.warning("process#list matched %d processes; returning the first %d "
                             "(plugins.process.max_processes)", len(candidates), limit)
        reply["pslist"] = [_record(info, now) for info in candidates[:limit]]

    def _regex_filter(self, pattern: str, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Keep the candidates whose command line ``pattern`` matches, in a child
        interpreter killed after :meth:`regex_timeout` seconds (status 4 then)."""
        budget = self.regex_timeout()
        doc = json.dumps({"pattern": pattern, "texts": [command_text(i) for i in candidates]})
        try:
            indices = run_matcher(doc, budget)
        except subprocess.TimeoutExpired:
            raise InvalidData(f"Cannot validate input pattern: the regular expression /{pattern}/ "
                              f"took longer than {budget:g} s to match; use a simpler one, or a "
                              "literal pattern (regex=false)") from None
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            raise Aborted(f"Could not match the regular expression: {exc}") from None
        return [candidates[i] for i in indices if isinstance(i, int) and 0 <= i < len(candidates)]

    # -- kill --------------------------------------------------------------------------
    @action
    def kill(self, request: Request, reply: Reply) -> None:
        psutil = _psutil()
        pid = request["pid"]
        number, signame = _signal_number(request.get("signal", "TERM"))
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 2:
            raise InvalidData("Cannot validate input pid: should be at least 2")
        me = psutil.Process()
        if pid == me.pid or pid in {t.id for t in me.threads()}:
            raise Aborted(f"Refusing to signal pid {pid}: it is the collectived daemon itself")
        for parent in me.parents():  # the daemon, its worker launcher, what started it
            if parent.pid == pid:
                raise Aborted(f"Refusing to signal pid {pid}: it is "
                              f"{_describe_ancestor(parent)}")
        leader = _thread_group(pid)
        if leader is not None and leader != pid:
            raise Aborted(f"Refusing to signal pid {pid}: it is a thread of process {leader}; "
                          "give the process id")
        try:
            proc = psutil.Process(pid)
            info = proc.as_dict(attrs=_ATTRS, ad_value=None)
        except psutil.NoSuchProcess:
            raise Aborted(f"No such process: {pid}") from None
        self._check_owner(pid, info)
        reply["signal"] = signame
        reply["process"] = _record(info, time.time())
        try:
            proc.send_signal(number)  # psutil checks the pid was not reused meanwhile
        except psutil.NoSuchProcess:
            raise Aborted(f"No such process: {pid} (it exited before the signal)") from None
        except psutil.AccessDenied:
            raise Aborted(f"Permission denied sending {signame} to pid {pid}") from None
        self.log.info("process#kill sent %s to pid %d (%s)", signame, pid, reply["process"]["cmdline"])
        reply["killed"] = True

    def _check_owner(self, pid: int, info: dict[str, Any]) -> None:
        uids = info.get("uids")
        if uids is None:
            raise Aborted(f"Refusing to signal pid {pid}: its owner cannot be read")
        if uids.real == os.geteuid():
            return
        allowed = self.kill_users()
        owner = info.get("username") or str(uids.real)
        if "*" in allowed or owner in allowed or str(uids.real) in allowed:
            return
        raise Aborted(f"Refusing to signal pid {pid}: it belongs to user {owner}, not to the user "
                      "collectived runs as (allow it with plugins.process.kill_users)")


def run_matcher(doc: str, budget: float) -> list[Any]:
    """Run :data:`_MATCHER` on ``doc`` (JSON) in a child interpreter with a time limit.

    :raises subprocess.TimeoutExpired: when it took longer than ``budget`` (the child is killed)
    """
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _MATCHER], input=doc,
                          capture_output=True, text=True, timeout=budget, check=False,
                          env={"LC_ALL": "C.UTF-8"})
    if proc.returncode != 0:
        raise ValueError((proc.stderr.strip().splitlines() or ["matcher failed"])[-1])
    result = json.loads(proc.stdout)
    if not isinstance(result, list):
        raise ValueError("matcher returned no list")
    return result


def _describe_ancestor(proc: Any) -> str:
    """What an ancestor of the process running this action is, for a refusal: actions
    run in a worker process forked by collectived's worker launcher (its zygote)."""
    try:
        cmdline = " ".join(proc.cmdline())
    except Exception:  # gone, or not ours to read
        cmdline = ""
    if "collective.server.worker" in cmdline:
        return "collectived's worker launcher"
    if "collective.server.main" in cmdline or "collectived" in cmdline:
        return "the collectived daemon itself"
    return "an ancestor of the collectived daemon"
