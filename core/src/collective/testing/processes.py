"""Process and port helpers shared by the private-broker harnesses (RabbitMQ, ActiveMQ)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def kill_group(proc: subprocess.Popen[bytes], term_wait: float = 5.0) -> None:
    """SIGTERM then SIGKILL the process group *we* created for ``proc`` (start_new_session)."""
    pgid = proc.pid  # start_new_session=True: the child leads its own group
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure no member of its group lingers
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        log.warning("process %d did not exit", proc.pid)
