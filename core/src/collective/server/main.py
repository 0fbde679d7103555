"""``collectived``: the node daemon's command line.

Signals: SIGTERM / SIGINT stop: no new work is taken, in-flight actions get
``server.stop_grace`` seconds (default 10) to finish and send their replies, then what
is left is ended (status 5 replies); a second SIGTERM ends them at once. SIGUSR1
reopens the daemon's log file and the audit log (after logrotate moved them); SIGHUP reloads
(:mod:`collective.server.reload`: in place when the installed code is unchanged,
else a checked re-exec that keeps the PID). ``--check`` loads the config and every
plugin without connecting and says what would be served.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import __version__


def _version_text() -> str:
    from ..plugins import get_plugin_manager

    pm = get_plugin_manager()
    lines = [f"collectived {__version__} at {Path(__file__).parent.parent}"]
    for status in sorted(pm.statuses.values(), key=lambda s: s.name):
        if not status.builtin:
            lines.append(f"  {status.name}-{status.version} ({status.distribution}): {status.status}")
    return "\n".join(lines)


def _setup_logging(level: str, path: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler()
    from ..safelog import SafeFormatter  # request text never forges a log line

    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("stomp").setLevel(logging.WARNING)


def _reopen_logs() -> None:
    """Reopen every log file of the root logger (SIGUSR1, after logrotate moved it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                old = handler.setStream(handler._open())
            except OSError as exc:
                logging.getLogger("collectived").error("cannot reopen %s: %s",
                                                       handler.baseFilename, exc)
                continue
            if old is not None:
                old.close()


def _check(config_path: str | None, as_json: bool) -> int:
    """``collectived --check``: build the daemon without connecting; 0 when it would start."""
    from ..config import ConfigError, load_config
    from ..plugins import PluginError
    from ..security.base import SecurityError
    from .daemon import Daemon

    _setup_logging("WARNING", None)  # to stderr, never into the running daemon's log file
    verdict: dict[str, Any] = {"ok": False, "error": None, "problems": [], "agents": {}}
    try:
        config = load_config(config_path, kind="server")
        daemon = Daemon(config)
    except (PluginError, SecurityError, ConfigError, ValueError, OSError) as exc:
        verdict["error"] = str(exc)
    else:
        verdict["ok"] = True
        verdict["problems"] = list(daemon.problems)
        verdict["agents"] = {name: str((agent.ddl.metadata if agent.ddl else {}).get("version"))
                             for name, agent in sorted(daemon.host.agents.items())}
        daemon.audit.close()
    if as_json:
        print(json.dumps(verdict))
    elif verdict["ok"]:
        agents = ", ".join(f"{n} {v}" for n, v in verdict["agents"].items())
        print(f"collectived: OK, would serve {len(verdict['agents'])} agent(s): {agents}")
        for problem in verdict["problems"]:
            print(f"  skipped: {problem}")
    else:
        print(f"collectived: {verdict['error']}", file=sys.stderr)
    return 0 if verdict["ok"] else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collectived", description="The collective node daemon.")
    parser.add_argument("-c", "--config", help="server config (default /etc/collective/server.yaml)")
    parser.add_argument("--pidfile", help="write the daemon's PID here")
    parser.add_argument("--log-level", help="override logging.level")
    parser.add_argument("--version", action="store_true", help="print the version and loaded plugins")
    parser.add_argument("--check", action="store_true",
                        help="load the config and every plugin, say what would be served, exit")
    parser.add_argument("--json", action="store_true", help="with --check: one JSON line")
    args = parser.parse_args(argv)
    if args.version:
        print(_version_text())
        return 0
    if args.check:
        return _check(args.config, args.json)
    # Only a process started from its own command line can re-exec itself on SIGHUP.
    return _serve(args, can_reexec=argv is None)


def _serve(args: argparse.Namespace, can_reexec: bool) -> int:
    stop = threading.Event()
    stop_now = threading.Event()  # a second SIGTERM: no more grace
    reload_requested = threading.Event()
    reopen_requested = threading.Event()

    def on_stop(*_: Any) -> None:
        (stop_now if stop.is_set() else stop).set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)

    from .reload import Handover, Reloader, accept_sighup, exec_argv, take_fingerprint

    # First thing: a SIGHUP while starting (or kept pending across a re-exec) is a
    # reload request, never the default "terminate".
    accept_sighup(lambda *_: reload_requested.set())
    handover = Handover.take()

    from ..config import ConfigError, find_config, load_config

    # Before the plugins load: an install racing with the start shows at the next SIGHUP.
    fingerprint = take_fingerprint(find_config("server", args.config))
    try:
        config = load_config(args.config, kind="server")
    except ConfigError as exc:
        print(f"collectived: {exc}", file=sys.stderr)
        return 2
    _setup_logging(args.log_level or config["logging"]["level"], config["logging"].get("file"))
    log = logging.getLogger("collectived")

    from ..plugins import PluginError
    from ..security.base import SecurityError
    from .daemon import Daemon

    try:
        daemon = Daemon(config)
    except (PluginError, SecurityError, ConfigError, ValueError, OSError) as exc:
        print(f"collectived: {exc}", file=sys.stderr)
        return 2
    pidfile = args.pidfile or config["server"].get("pidfile")
    if pidfile:
        Path(pidfile).write_text(f"{os.getpid()}\n")

    current = {"daemon": daemon}
    # the reopening happens in the main loop, never inside a handler that may have
    # interrupted a write holding the same lock
    signal.signal(signal.SIGUSR1, lambda *_: reopen_requested.set())

    def launch(node: Daemon, taken: Handover | None) -> None:
        if taken is not None:
            node.guard.restore(taken.seen)
            _restore_outbox(node, taken)
            if taken.rehup:
                reload_requested.set()

        def run() -> None:
            try:
                node.start()
            except Exception as exc:  # noqa: BLE001 - stopped while connecting, or a broker error
                if not node._stopping.is_set():
                    log.error("start failed: %s", exc)
                return
            if taken is not None and taken.sighup_at:
                log.info("reloaded (%s): serving %.2fs after SIGHUP (drain %.2fs)",
                         "; ".join(taken.changes) or "no change", time.time() - taken.sighup_at,
                         taken.drain_seconds)

        # The worker processes start here, on the main thread: it lives as long as the
        # daemon, so the zygote can take a parent-death signal from it.
        node.start_workers()
        # Connect on a thread: a broker that is down at start must not make SIGTERM wait.
        threading.Thread(target=run, name="connect", daemon=True).start()

    def rebuild(taken: Handover) -> Daemon:
        node = Daemon(config, pm=current["daemon"].pm)
        current["daemon"] = node
        launch(node, taken)
        return node

    launch(daemon, handover)
    reloader = Reloader(config.path, fingerprint, exec_argv() if can_reexec else None,
                        rebuild=rebuild)
    while not stop.wait(0.2):
        if reopen_requested.is_set():
            reopen_requested.clear()
            _reopen_logs()
            current["daemon"].audit.reopen()
            log.info("reopened the log and audit files (SIGUSR1)")
        if reload_requested.is_set():
            reload_requested.clear()
            try:
                current["daemon"] = reloader.handle(current["daemon"], stop, reload_requested)
            except Exception:  # a bad reload must not take the node down
                log.exception("reload failed; keeping the previous state")
    log.info("shutting down")
    current["daemon"].shutdown(abort=stop_now)
    if pidfile:
        Path(pidfile).unlink(missing_ok=True)
    return 0


def _restore_outbox(daemon: Any, handover: Any) -> None:
    from ..connectors.destinations import parse_logical

    items = []
    for deadline, dest, wire in handover.outbox:
        try:
            items.append((deadline, parse_logical(dest), wire))
        except ValueError:
            continue
    daemon.restore_outbox(items)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
