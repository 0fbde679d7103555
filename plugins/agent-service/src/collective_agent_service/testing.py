"""Test helpers: a throw-away LSB init script that runs a real background process.

``InitScript`` writes ``/etc/init.d/collective-test-<random>``: ``start`` runs
``sleep`` in the background under ``start-stop-daemon`` (Debian's dpkg package)
with a pid file, ``stop`` stops it by that pid file, ``status`` answers with the
LSB exit codes. :meth:`InitScript.remove` stops the process, removes the script,
its pid file and any ``/etc/rc?.d`` links. Needs root. Used by this distribution's
tests and the end-to-end test; it runs nothing at import.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

START_STOP_DAEMON = "/sbin/start-stop-daemon"
SLEEP = "/usr/bin/sleep"

_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: collective test service (sleep {seconds})
### END INIT INFO
# Written by collective_agent_service.testing; removed by the test that wrote it.
PIDFILE={pidfile}
DAEMON={sleep}
SSD={ssd}

do_start() {{
    $SSD --start --quiet --background --make-pidfile --pidfile "$PIDFILE" \\
        --exec "$DAEMON" --oknodo -- {seconds}
}}
do_stop() {{
    $SSD --stop --quiet --pidfile "$PIDFILE" --exec "$DAEMON" --retry TERM/5/KILL/5 --oknodo
    status=$?
    rm -f "$PIDFILE"
    return $status
}}
case "$1" in
    start) do_start ;;
    stop) do_stop ;;
    restart|force-reload) do_stop && do_start ;;
    status) $SSD --status --pidfile "$PIDFILE" --exec "$DAEMON" ;;
    *) echo "Usage: $0 {{start|stop|restart|status}}" >&2; exit 3 ;;
esac
"""


def available() -> str | None:
    """None when an init script can be installed and run here, else why not."""
    if os.geteuid() != 0:
        return "needs root to write /etc/init.d"
    for tool in (START_STOP_DAEMON, SLEEP):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing"
    if shutil.which("service") is None:
        return "the service command (init-system-helpers) is missing"
    return None


class InitScript:
    """``/etc/init.d/collective-test-<random>`` running ``sleep SECONDS``.

    :param seconds: how long the daemon sleeps; also a marker in its command line
    """

    INIT_DIR = Path("/etc/init.d")

    def __init__(self, seconds: int | None = None, prefix: str = "collective-test-") -> None:
        self.name = prefix + secrets.token_hex(4)
        self.seconds = seconds or 3000 + secrets.randbelow(600)
        self.path = self.INIT_DIR / self.name
        self.pidfile = Path("/run") / f"{self.name}.pid"

    def install(self) -> InitScript:
        self.path.write_text(_SCRIPT.format(name=self.name, pidfile=self.pidfile, sleep=SLEEP,
                                            ssd=START_STOP_DAEMON, seconds=self.seconds))
        self.path.chmod(0o755)
        return self

    def __enter__(self) -> InitScript:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def pid(self) -> int | None:
        """The pid in the pid file if that process is alive and is our ``sleep``."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self.is_ours(pid) else None

    def is_ours(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return cmdline[:2] == [SLEEP.encode(), str(self.seconds).encode()]

    def running(self) -> bool:
        return self.pid() is not None

    def wait(self, running: bool, timeout: float = 10.0) -> bool:
        """Wait until :meth:`running` is ``running``; return whether it got there."""
        deadline = time.monotonic() + timeout
        while self.running() != running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def start_directly(self) -> None:
        """Start it by running the script itself (not through the agent)."""
        subprocess.run([str(self.path), "start"], check=True, timeout=30,
                       stdin=subprocess.DEVNULL, capture_output=True)

    def links(self) -> list[Path]:
        return sorted(p for level in "S0123456" for p in Path(f"/etc/rc{level}.d").glob(f"[SK][0-9][0-9]{self.name}"))

    def remove(self) -> None:
        """Stop the process (by its pid file) and remove the script, pid file and rc links."""
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        for link in self.links():
            link.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)
