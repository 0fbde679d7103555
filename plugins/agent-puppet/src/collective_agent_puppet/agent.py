"""The ``puppet`` agent (MCollective/Choria ``puppet`` agent 1.14).

- ``status``: the agent's state from puppet's own lock, pid and summary files;
- ``runonce``: start ``puppet agent --onetime --no-daemonize`` detached (or signal an
  idle daemon with SIGUSR1) and reply at once; refused with status 1 while the agent
  is disabled or already applying a catalog;
- ``enable`` / ``disable``: ``puppet agent --enable`` / ``--disable=MESSAGE``;
- ``last_run_summary``: ``last_run_summary.yaml`` (and log lines of the last report);
- ``resource``: ``puppet resource TYPE NAME key=value ...`` for types the node's config
  allows (none by default).

Settings are ``plugins.puppet`` (:class:`~collective_agent_puppet.state.Settings`,
described in the README). Every command runs as an argument list, never through a
shell, with stdin from /dev/null and in its own session; commands the action waits for
are killed after ``command_timeout`` (below the DDL timeout), and a started run is
bounded by ``run_timeout`` (puppet's ``--runtimeout``, and a watchdog that kills its
process group).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from typing import Any

from collective.agent import Aborted, Agent, InvalidData, Reply, Request, action

from . import state
from .common import parse_server
from .state import PuppetError, Settings

#: seconds a run may outlive its ``--runtimeout`` (and splay) before the watchdog kills it
RUN_GRACE = 60
#: most properties one ``resource`` request may set
MAX_PROPERTIES = 32
#: held while enable, disable and runonce check the state and change it, so two requests
#: on worker threads cannot both see "idle" and both start a run
_CHANGE_LOCK = threading.Lock()


class Puppet(Agent):
    """Run, enable, disable and inspect the Puppet agent of this node."""

    name = "puppet"

    # -- helpers (never remotely callable: not marked @action) ------------------------------
    def settings(self) -> Settings:
        try:
            return Settings.from_config(self.config.plugin("puppet"), float(self.timeout))
        except PuppetError as exc:
            raise Aborted(str(exc)) from None

    def paths(self, settings: Settings) -> dict[str, str]:
        try:
            return state.locate(settings, settings.command_timeout)
        except PuppetError as exc:
            raise Aborted(str(exc)) from None

    def command(self, settings: Settings) -> list[str]:
        try:
            return state.resolve_command(settings)
        except PuppetError as exc:
            raise Aborted(str(exc)) from None

    def run(self, settings: Settings, *args: str) -> tuple[int, str, str]:
        try:
            return state.run_command([*self.command(settings), *args], settings.command_timeout)
        except PuppetError as exc:
            raise Aborted(str(exc)) from None

    @staticmethod
    def _status(paths: dict[str, str]) -> dict[str, Any]:
        try:
            return state.status(paths)
        except PuppetError as exc:
            raise Aborted(str(exc)) from None

    # -- actions ------------------------------------------------------------------------------
    @action
    def status(self, request: Request, reply: Reply) -> None:
        settings = self.settings()
        reply.data.update(self._status(self.paths(settings)))

    @action
    def last_run_summary(self, request: Request, reply: Reply) -> None:
        settings = self.settings()
        paths = self.paths(settings)
        try:
            summary = state.load_summary(paths)
            reply.data.update(state.run_figures(summary))
            reply["logs"] = state.last_run_logs(paths, settings.max_logs) if request.get("logs") \
                else []
        except PuppetError as exc:
            raise Aborted(str(exc)) from None
        reply["type_distribution"] = state.type_distribution(paths)
        reply["summary"] = summary

    @action
    def enable(self, request: Request, reply: Reply) -> None:
        with _CHANGE_LOCK:
            self._enable(request, reply)

    def _enable(self, request: Request, reply: Reply) -> None:
        settings = self.settings()
        paths = self.paths(settings)
        if state.disable_message(paths) is None:
            reply["enabled"] = True
            reply["status"] = "Could not enable Puppet: Already enabled"
            raise Aborted(reply["status"])
        code, out, err = self.run(settings, "agent", *settings.conf_args(), "--enable",
                                  "--color=false")
        reply["enabled"] = state.disable_message(paths) is None
        if code != 0 or not reply["enabled"]:
            reply["status"] = f"Could not enable Puppet: {_last_line(err or out, code)}"
            raise Aborted(reply["status"])
        reply["status"] = "Successfully enabled the Puppet agent"
        self.log.info("puppet agent enabled for %s", request.caller)

    @action
    def disable(self, request: Request, reply: Reply) -> None:
        with _CHANGE_LOCK:
            self._disable(request, reply)

    def _disable(self, request: Request, reply: Reply) -> None:
        settings = self.settings()
        paths = self.paths(settings)
        message = request.get("message") or (
            f"Disabled via collective by {request.caller or 'unknown'} at "
            f"{time.strftime('%Y-%m-%d %H:%M')}")
        if state.disable_message(paths) is not None:
            reply["enabled"] = False
            reply["status"] = "Could not disable Puppet: Already disabled"
            raise Aborted(reply["status"])
        # one argv word, so the message can never be read as another option
        code, out, err = self.run(settings, "agent", *settings.conf_args(),
                                  f"--disable={message}", "--color=false")
        current = state.disable_message(paths)
        reply["enabled"] = current is None
        if code != 0 or current is None:
            reply["status"] = f"Could not disable Puppet: {_last_line(err or out, code)}"
            raise Aborted(reply["status"])
        reply["status"] = f"Successfully locked the Puppet agent: {current}"
        self.log.info("puppet agent disabled for %s: %s", request.caller, current)

    @action
    def runonce(self, request: Request, reply: Reply) -> None:
        with _CHANGE_LOCK:
            self._runonce(request, reply)

    def _runonce(self, request: Request, reply: Reply) -> None:
        settings = self.settings()
        # refusals that need no puppet command come first: nothing runs for them
        if request.get("server") and not settings.allow_server_override:
            reply["summary"] = "Passing 'server' option is not allowed in module configuration"
            raise Aborted(reply["summary"])
        paths = self.paths(settings)
        current = self._status(paths)
        if not current["enabled"]:
            message = current["disable_message"]
            reply["summary"] = (f"Puppet is disabled: '{message}'" if message
                                else "Puppet is disabled")
            raise Aborted(reply["summary"])
        if current["applying"]:
            reply["summary"] = "Puppet is currently applying a catalog, cannot run now"
            raise Aborted(reply["summary"])
        options = run_options(request, settings)
        daemon = state.daemon_pid(paths)
        if daemon is not None and settings.signal_daemon and not options.custom:
            try:
                os.kill(daemon, signal.SIGUSR1)
            except OSError as exc:
                reply["summary"] = f"Failed to signal the puppet agent at pid {daemon}: {exc}"
                raise Aborted(reply["summary"]) from None
            reply["summary"] = "Signalled the running Puppet Daemon"
            self.log.info("signalled the puppet daemon (pid %d) for %s", daemon, request.caller)
        else:
            argv = [*self.command(settings), "agent", *settings.conf_args(), "--onetime",
                    "--no-daemonize", "--color=false", "--verbose",
                    f"--runtimeout={settings.run_timeout}", *options.argv]
            pid = self._start(argv, settings, paths, options.splay_seconds)
            reply["summary"] = f"Started a Puppet run using the '{shlex.join(argv)}' command"
            self.log.info("started puppet run pid %d for %s: %s", pid, request.caller,
                          shlex.join(argv))
        reply["initiated_at"] = int(time.time())

    @action
    def resource(self, request: Request, reply: Reply) -> None:
        settings = self.settings()
        kind, title = request["type"].lower(), request["name"]
        properties: dict[str, str] = dict(request.get("properties") or {})
        if len(properties) > MAX_PROPERTIES:
            raise InvalidData(f"Cannot validate input properties: should have at most "
                              f"{MAX_PROPERTIES} properties")
        if kind not in settings.resource_types:
            raise Aborted(f"The {kind} type is not listed in plugins.puppet.resource_types")
        names = settings.resource_names.get(kind)
        if names is not None and title not in names:
            raise Aborted(f"The {title} name is not listed in "
                          f"plugins.puppet.resource_names.{kind}")
        ref = f"{'::'.join(p.capitalize() for p in kind.split('::'))}[{title}]"
        if not settings.resource_allow_managed:
            paths = self.paths(settings)
            if f"{kind}[{title}]" in state.managed_resources(paths):
                raise Aborted(f"Puppet is managing the resource '{ref}', refusing to create "
                              "conflicting states")
        argv = ["resource", *settings.conf_args(), "--color=false", "--", kind, title,
                *(f"{key}={value}" for key, value in sorted(properties.items()))]
        code, out, err = self.run(settings, *argv)
        notices, errors = _messages(out + "\n" + err)
        reply["changed"] = bool(notices)
        reply["result"] = "\n".join(notices) if notices else (out.strip()[:4000]
                                                              or "no output produced")
        failed = [line for line in errors if line.startswith("/")]
        if failed or code != 0:
            reply["result"] = "\n".join(notices + errors) or _last_line(err or out, code)
            why = failed[-1] if failed else _last_line("\n".join(errors) or err or out, code)
            raise Aborted(f"Failed to apply {ref}: {why}")
        self.log.info("puppet resource %s for %s: changed=%s", ref, request.caller,
                      reply["changed"])

    # -- starting a run ---------------------------------------------------------------------
    def _start(self, argv: list[str], settings: Settings, paths: dict[str, str],
               splay_seconds: int) -> int:
        """Start ``argv`` detached (own session, stdin /dev/null, output to the run log) and
        a watchdog thread that reaps it, or kills its process group after the run timeout."""
        log_path = settings.run_log or os.path.join(paths["logdir"], "collective-runonce.log")
        try:
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise Aborted(f"cannot open the run log {log_path}: {exc.strerror}") from None
        started = int(time.time())
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, cwd="/")
        except OSError as exc:
            raise Aborted(f"could not start {argv[0]}: {exc}") from None
        finally:
            os.close(fd)
        key = paths["agent_catalog_run_lockfile"]
        state.RUNS.add(key, proc, started)
        limit = settings.run_timeout + splay_seconds + RUN_GRACE
        watchdog = threading.Thread(target=_watch, args=(proc, key, limit), daemon=True,
                                    name=f"puppet-run-{proc.pid}")
        watchdog.start()
        return proc.pid


class RunOptions:
    """The ``puppet agent`` options of a ``runonce`` request."""

    def __init__(self) -> None:
        #: the options, in a fixed order
        self.argv: list[str] = []
        #: options only a new run can honour (a signalled daemon ignores them)
        self.custom = False
        #: the longest splay the run may sleep first
        self.splay_seconds = 0


def run_options(request: Any, settings: Settings) -> RunOptions:
    """``puppet agent`` options for the request's inputs, as MCollective builds them
    (force means no splay; otherwise the request's splay settings or the node's)."""
    options = RunOptions()
    get = request.get
    if get("force") is True:
        options.argv.append("--no-splay")
    else:
        splay = get("splay") if get("splay") is not None else settings.splay
        options.argv.append("--splay" if splay else "--no-splay")
        if splay:
            limit = get("splaylimit") if get("splaylimit") is not None else settings.splaylimit
            options.argv.append(f"--splaylimit={int(limit)}")
            options.splay_seconds = int(limit)
    if get("noop") is not None:
        options.argv.append("--noop" if get("noop") else "--no-noop")
        options.custom = True
    if get("tags"):
        options.argv.append(f"--tags={get('tags')}")
        options.custom = True
    if get("environment"):
        options.argv.append(f"--environment={get('environment')}")
        options.custom = True
    if get("server"):
        host, port = parse_server(get("server"))
        options.argv.append(f"--server={host}")
        if port is not None:
            options.argv.append(f"--serverport={port}")
        options.custom = True
    if get("use_cached_catalog") is not None:
        options.argv.append("--use_cached_catalog" if get("use_cached_catalog")
                            else "--no-use_cached_catalog")
        options.custom = True
    return options


def _watch(proc: subprocess.Popen[Any], key: str, limit: float) -> None:
    """Reap a started run; kill it, its process group and its descendants if it outlives
    ``limit`` seconds."""
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        state.log.warning("puppet run pid %d still running after %.0fs; killing it", proc.pid,
                          limit)
        state.kill_tree(proc, grace=10.0)
        if proc.poll() is None:
            state.log.error("puppet run pid %d did not exit after SIGKILL", proc.pid)
    finally:
        state.RUNS.discard(key, proc)


def _messages(text: str) -> tuple[list[str], list[str]]:
    """``Notice: /File[...]/...`` change lines and ``Error:`` lines of ``puppet resource``."""
    notices, errors = [], []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Notice: /"):
            notices.append(line[len("Notice: "):])
        elif line.startswith("Error: ") and not line.startswith("Error: Facter:") \
                and "/proc/1/environ" not in line:  # facter's noise is not the resource's
            errors.append(line[len("Error: "):])
    return notices, errors


def _last_line(text: str, code: int) -> str:
    """The last meaningful line of a command's output (facter's noise skipped)."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and "/proc/1/environ" not in line]
    return lines[-1][:300] if lines else f"exit status {code}"
