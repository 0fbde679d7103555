"""Process-tree helpers for the worker processes (Linux first, harmless elsewhere).

- :func:`set_parent_death_signal`: ``prctl(PR_SET_PDEATHSIG)``, so a process dies with
  its parent even when the parent is killed with SIGKILL;
- :func:`descendants`: every live descendant of a pid, from ``/proc`` (an action's
  children that started a session of their own are still found);
- :func:`has_children`: whether a process has live children, cheaply
  (``/proc/PID/task/*/children``);
- :func:`kill_tree`: SIGTERM, a grace period, then SIGKILL to a process, its process
  group and every descendant (also for agents whose commands start sessions of their
  own, such as the puppet agent's runs).

Orphans are *not* adopted (no ``PR_SET_CHILD_SUBREAPER``): a daemon an action starts
the classic way (fork, setsid, fork: a sysvinit ``service foo start``) must survive the
action, its worker and collectived; only processes still attached to a worker's tree or
process group are an action's leftovers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def _prctl(option: int, arg: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return _libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_parent_death_signal(sig: int = signal.SIGKILL, expected_parent: int | None = None) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies.

    The parent is the *thread* that forked us: call this in a child whose parent forked
    it from a thread that lives as long as the parent process. With ``expected_parent``
    the process exits at once when the parent is already gone (the race between fork
    and prctl).

    :returns: True when the kernel took it (Linux)
    """
    ok = _prctl(_PR_SET_PDEATHSIG, int(sig))
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(0)
    return ok


def _ppids() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Pids of the live (not zombie) descendants of ``pid``, parents before children."""
    children = _ppids()
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(0), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def has_children(pid: int) -> bool:
    """True when ``pid`` has a live child (any of its threads forked it)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return bool(descendants(pid))
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as handle:
                for child in handle.read().split():
                    if alive(int(child)):
                        return True
        except OSError:
            continue
    return False


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def signal_all(pids: Iterable[int], pgid: int | None, sig: int) -> None:
    """Send ``sig`` to the process group ``pgid`` (when given) and to each of ``pids``;
    processes already gone are skipped."""
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def kill_tree(pid: int, grace: float = 2.0, pgid: int | None = None,
              include_root: bool = True) -> list[int]:
    """SIGTERM ``pid`` (unless ``include_root`` is False), its process group ``pgid`` and
    every descendant; SIGKILL whatever is left after ``grace`` seconds. The tree is looked
    up again before each signal, so children forked in between are caught too.

    :returns: the pids that were signalled
    """
    signalled: list[int] = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        # everything seen before stays a target: a child whose parent died meanwhile has
        # been reparented and is no descendant any more
        pids = descendants(pid) + ([pid] if include_root else [])
        signalled.extend(p for p in pids if p not in signalled)
        signal_all(signalled, pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not any(alive(p) for p in signalled) and not descendants(pid):
                return signalled
            time.sleep(0.02)
    return signalled
