"""``collectived``: the node daemon's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

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
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("stomp").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collectived", description="The collective node daemon.")
    parser.add_argument("-c", "--config", help="server config (default /etc/collective/server.yaml)")
    parser.add_argument("--pidfile", help="write the daemon's PID here")
    parser.add_argument("--log-level", help="override logging.level")
    parser.add_argument("--version", action="store_true", help="print the version and loaded plugins")
    args = parser.parse_args(argv)
    if args.version:
        print(_version_text())
        return 0

    from ..config import ConfigError, load_config

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

    stop = threading.Event()
    reload_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    signal.signal(signal.SIGUSR1, lambda *_: daemon.audit.reopen())

    # Connect on a thread: a broker that is down at start must not make SIGTERM wait.
    threading.Thread(target=daemon.start, name="connect", daemon=True).start()
    while not stop.wait(0.2):
        if reload_requested.is_set():
            reload_requested.clear()
            try:
                daemon.reload()
            except Exception:  # a bad reload must not take the node down
                log.exception("reload failed; keeping the previous state")
    log.info("shutting down")
    daemon.stop()
    if pidfile:
        Path(pidfile).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
