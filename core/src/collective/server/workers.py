"""Actions in worker processes: a bounded pool whose timed-out jobs are really ended.

Python threads cannot be killed, so an action that outlived its DDL timeout used to keep
its thread (and its children) until it returned. Here every action runs in a worker
*process* (:mod:`collective.server.worker`) owned by one *slot* thread of the daemon:

- at most ``max_workers`` actions run at once and at most ``max_queued`` wait; beyond
  that :meth:`ProcessPool.submit` raises :class:`~collective.server.pool.PoolFull` and
  the daemon answers "node busy". A job still queued when its request's TTL has passed
  is answered "node busy" without running;
- when an action passes its timeout the job's ``on_timeout`` replies at once (status 5),
  the worker's process group and every descendant get SIGTERM and, ``kill_grace``
  seconds later, SIGKILL (on a reaper thread), and the slot takes its next job with a
  fresh worker: the slot comes back in milliseconds, not when the action ends;
- a worker that dies during an action (a crash, ``os._exit``, the OOM killer) gives
  status 5 "its worker process died (killed by signal 11 (SIGSEGV))", and the daemon
  serves on with a new worker;
- a worker whose finished action left children running (a detached ``puppet agent``
  run watched by a thread of the agent) *retires*: it takes no more work, lives while
  those children do, and the slot gets a new worker, so a later timeout in that slot
  cannot kill them by mistake. Retired workers are ended with the daemon;
- workers are forked on demand (``min_workers`` at start) and an idle slot beyond
  ``min_workers`` ends its worker after ``idle_timeout`` seconds.

Agents the zygote could not import (a class defined inside a function) are reported by
:meth:`ProcessPool.start`; the daemon runs those on threads instead, as before.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import queue
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import procs
from .dispatch import AgentHost, CallInfo, Outcome
from .pool import PoolFull
from .worker import (
    CONTROL_FD_ENV,
    LOG_FD_ENV,
    MAX_LOG_RECORD,
    ChannelClosed,
    recv_json,
    send_bytes,
    send_json,
)

log = logging.getLogger(__name__)
worker_log = logging.getLogger("collective.worker")

#: How long the zygote may take to import the agents.
ZYGOTE_START_TIMEOUT = 120.0
#: How long a fork request may take.
FORK_TIMEOUT = 30.0


@dataclass
class PoolJob:
    """One action for the pool."""

    call: CallInfo
    host: AgentHost
    #: the DDL timeout, seconds
    timeout: float
    #: called with the outcome (the action's, or a refusal); exactly one of on_done and
    #: on_timeout is called, once
    on_done: Callable[[Outcome], None]
    on_timeout: Callable[[], None]
    #: unix time after which the request is stale (its TTL); 0: never
    expires_at: float = 0.0
    accepted_at: float = field(default_factory=time.monotonic)


class _Zygote:
    """The daemon's handle on the zygote process."""

    def __init__(self, init: dict[str, Any]) -> None:
        self.init = init
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_ours, log_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        env = {**os.environ, CONTROL_FD_ENV: str(theirs.fileno()),
               LOG_FD_ENV: str(log_theirs.fileno())}
        if threading.current_thread() is threading.main_thread():
            # the parent-death signal follows the forking *thread*: only the main one
            # lives as long as the daemon
            env["COLLECTIVE_ZYGOTE_PARENT"] = str(os.getpid())
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "collective.server.worker"],
            pass_fds=(theirs.fileno(), log_theirs.fileno()), env=env,
            stdin=subprocess.DEVNULL, close_fds=True)
        theirs.close()
        log_theirs.close()
        self.control = ours
        self.log_sock = log_ours
        self.pid = self.proc.pid
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._forked: dict[str, int] = {}
        self.exits: dict[int, str] = {}
        self.alive = True
        send_bytes(self.control, pickle.dumps(init))
        self.control.settimeout(ZYGOTE_START_TIMEOUT)
        try:
            ready = recv_json(self.control)
        except (ChannelClosed, TimeoutError, OSError) as exc:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"the worker zygote did not start: {exc}") from None
        finally:
            self.control.settimeout(None)
        self.loaded: list[str] = list(ready.get("loaded", []))
        self.failed: dict[str, str] = dict(ready.get("failed", {}))
        threading.Thread(target=self._read, name="zygote-control", daemon=True).start()
        threading.Thread(target=self._read_logs, name="zygote-log", daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                msg = recv_json(self.control)
                with self._cond:
                    if msg.get("op") == "forked":
                        self._forked[str(msg.get("slot"))] = int(msg["pid"])
                    elif msg.get("op") == "exited":
                        self.exits[int(msg["pid"])] = str(msg.get("status"))
                        if len(self.exits) > 1000:
                            for pid in list(self.exits)[:500]:
                                self.exits.pop(pid, None)
                    self._cond.notify_all()
        except (ChannelClosed, OSError, ValueError):
            pass
        with self._cond:
            self.alive = False
            self._cond.notify_all()

    def _read_logs(self) -> None:
        while True:
            try:
                data = self.log_sock.recv(MAX_LOG_RECORD + 4096)
            except OSError:
                return
            if not data:
                return
            try:
                record = json.loads(data)
                worker_log.log(int(record["level"]), "[worker %s] %s: %s", record.get("pid"),
                               record.get("name"), record.get("msg"))
            except (ValueError, KeyError, TypeError):
                continue

    def fork(self) -> tuple[int, socket.socket]:
        token = os.urandom(8).hex()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._send_lock:
                send_json(self.control, {"op": "fork", "slot": token}, fds=[theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise RuntimeError(f"the worker zygote is gone: {exc}") from None
        finally:
            theirs.close()
        deadline = time.monotonic() + FORK_TIMEOUT
        with self._cond:
            while token not in self._forked:
                if not self.alive or time.monotonic() > deadline:
                    ours.close()
                    raise RuntimeError("the worker zygote did not fork a worker")
                self._cond.wait(0.1)
            pid = self._forked.pop(token)
        if pid <= 0:
            ours.close()
            raise RuntimeError("the worker zygote could not fork")
        return pid, ours

    def exit_status(self, pid: int, wait: float) -> str | None:
        deadline = time.monotonic() + wait
        with self._cond:
            while pid not in self.exits and self.alive and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return self.exits.get(pid)

    def shutdown(self, timeout: float) -> None:
        try:
            with self._send_lock:
                send_json(self.control, {"op": "shutdown"})
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker zygote %d did not stop in %.0fs; killing it", self.pid, timeout)
            self.proc.kill()
            self.proc.wait()
        self.control.close()
        self.log_sock.close()


class _Worker:
    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock


class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: _Worker | None = None
        self.busy = False
        #: set by :meth:`ProcessPool.stop`: the reason a running job was cut short
        self.abort: str | None = None


class ProcessPool:
    """See the module docstring.

    :param init: what the zygote needs (built by the daemon: sys.path, config, agents)
    :param node_query: answers a worker's ``self.node`` questions (``"facts"``, ...)
    """

    mode = "processes"

    def __init__(self, init: dict[str, Any], node_query: Callable[[str], Any],
                 max_workers: int, max_queued: int, min_workers: int = 1,
                 kill_grace: float = 2.0, idle_timeout: float = 300.0) -> None:
        self.init = init
        self.node_query = node_query
        self.workers = max(1, int(max_workers))
        self.capacity = self.workers + max(0, int(max_queued))
        self.min_workers = max(0, min(int(min_workers), self.workers))
        self.kill_grace = float(kill_grace)
        self.idle_timeout = float(idle_timeout)
        self._slots_free = threading.BoundedSemaphore(self.capacity)
        self._queue: queue.SimpleQueue[PoolJob | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._idle = 0
        self._index = itertools.count(1)
        self._zygote: _Zygote | None = None
        self._zygote_lock = threading.Lock()
        self._stopping = False
        #: retired workers, alive while the children their action left are
        self._keepers: set[int] = set()
        self.in_flight = 0
        self.queued = 0
        #: counters for ``rpcutil daemon_stats``
        self.counters = {"forked": 0, "killed": 0, "crashed": 0, "retired": 0,
                         "expired_in_queue": 0}
        self.loaded: set[str] = set()
        self.failed: dict[str, str] = {}

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> dict[str, str]:
        """Start the zygote and ``min_workers`` workers.

        :returns: agent name -> why it cannot run in a worker (run it in-process)
        """
        zygote = self._get_zygote()
        for _ in range(self.min_workers):
            slot = self._new_slot()
            try:
                self._ensure_worker(slot)
            except RuntimeError as exc:
                log.warning("could not start a worker process: %s", exc)
        return dict(zygote.failed)

    def _get_zygote(self) -> _Zygote:
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive:
                if self._zygote is not None:
                    log.error("the worker zygote (pid %d) died; starting a new one",
                              self._zygote.pid)
                started = time.monotonic()
                self._zygote = _Zygote(self.init)
                self.loaded = set(self._zygote.loaded)
                self.failed = dict(self._zygote.failed)
                log.info("worker zygote pid %d ready in %.2fs with agents %s", self._zygote.pid,
                         time.monotonic() - started, ",".join(sorted(self.loaded)) or "-")
            return self._zygote

    def stop(self, reason: str = "the daemon is stopping", timeout: float = 10.0) -> None:
        """End everything: queued jobs are answered "node busy", running ones are killed and
        answered status 5 with ``reason``, retired workers are killed with their children."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            slots = list(self._slots)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, Outcome(1, f"node busy: {reason}", {}, "allow", "busy"))
        for slot in slots:
            worker = slot.worker
            if slot.busy and worker is not None:
                slot.abort = reason
                self._kill(worker)
        for _ in slots:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for slot in slots:
            while slot.busy and time.monotonic() < deadline:
                time.sleep(0.02)
        zygote = self._zygote
        if zygote is not None:
            zygote.shutdown(timeout=max(2.0, deadline - time.monotonic()))

    # -- jobs -------------------------------------------------------------------------------------
    def submit(self, job: PoolJob) -> None:
        """Accept ``job``.

        :raises PoolFull: when ``workers + max_queued`` jobs are accepted already
        :raises RuntimeError: when the pool is stopping
        """
        if self._stopping:
            raise RuntimeError("the pool is stopping")
        if not self._slots_free.acquire(blocking=False):
            raise PoolFull()
        with self._lock:
            self.queued += 1
            spawn = self._idle == 0 and len(self._slots) < self.workers
        self._queue.put(job)
        if spawn:
            self._new_slot()

    def _new_slot(self) -> _Slot:
        slot = _Slot(next(self._index))
        with self._lock:
            self._slots.append(slot)
            self._idle += 1
        threading.Thread(target=self._serve, args=(slot,), name=f"action-{slot.index}",
                         daemon=True).start()
        return slot

    def _serve(self, slot: _Slot) -> None:
        try:
            while True:
                try:
                    job = self._queue.get(timeout=self.idle_timeout)
                except queue.Empty:
                    with self._lock:
                        shrink = len(self._slots) > self.min_workers
                        if shrink:
                            self._slots.remove(slot)
                            self._idle -= 1
                    if shrink:
                        self._retire_quietly(slot)
                        return
                    continue
                if job is None:
                    return
                with self._lock:
                    self._idle -= 1
                    self.queued -= 1
                    self.in_flight += 1
                slot.busy = True
                outcome: Outcome | None = None
                try:
                    outcome = self._run(slot, job)
                except BaseException as exc:  # noqa: BLE001 - the slot must survive
                    log.exception("worker slot %d failed", slot.index)
                    outcome = Outcome(5, f"Unknown error in {job.call.agent}#{job.call.action}: "
                                         f"{type(exc).__name__}", {}, "allow", "error")
                finally:
                    slot.busy = False
                    slot.abort = None
                    with self._lock:
                        self.in_flight -= 1
                        self._idle += 1
                    self._slots_free.release()
                # the slot counts as free while the reply goes out, so a request right
                # after this one does not start another worker
                if outcome is not None:
                    self._finish(job, outcome)
        finally:
            worker = slot.worker
            if worker is not None and self._stopping:
                self._kill(worker)

    def _finish(self, job: PoolJob, outcome: Outcome) -> None:
        try:
            job.on_done(outcome)
        except Exception:  # noqa: BLE001 - a failed reply must not take the slot down
            log.exception("replying for request %s failed", job.call.request_id)

    def _run(self, slot: _Slot, job: PoolJob) -> Outcome | None:
        """Run ``job`` in the slot's worker; the outcome to reply with (None when the job
        has replied already: its timeout)."""
        call = job.call
        label = f"{call.agent}#{call.action}"
        if job.expires_at and time.time() > job.expires_at:
            with self._lock:
                self.counters["expired_in_queue"] += 1
            waited = time.monotonic() - job.accepted_at
            return Outcome(1, f"node busy: the request waited {waited:.0f}s in the queue, past "
                              "its TTL", {}, "allow", "busy")
        payload = job.host.job(call)
        if isinstance(payload, Outcome):
            return payload
        try:
            worker = self._ensure_worker(slot)
            send_json(worker.sock, {"op": "run", "job": payload})
        except (RuntimeError, OSError) as exc:
            log.error("%s (request %s): no worker process: %s", label, call.request_id, exc)
            self._drop(slot)
            return Outcome(5, f"Unknown error in {label}: could not start a worker process: "
                              f"{exc}", {}, "allow", "error")
        deadline = time.monotonic() + job.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timed_out(slot, worker, job)
                return None
            try:
                ready, _, _ = select.select([worker.sock], [], [], remaining)
            except (OSError, ValueError):
                ready = [worker.sock]
            if not ready:
                continue
            try:
                msg = recv_json(worker.sock)
            except (ChannelClosed, ValueError):
                return self._died(slot, worker, job)
            if msg.get("op") == "node":
                try:
                    value = self.node_query(str(msg.get("call")))
                    send_json(worker.sock, {"value": value})
                except Exception as exc:  # noqa: BLE001 - the worker gets None, we log
                    log.warning("answering %s for worker %d failed: %s", msg.get("call"),
                                worker.pid, exc)
                    try:
                        send_json(worker.sock, {"value": None})
                    except OSError:
                        pass
                continue
            if msg.get("op") == "result":
                if msg.get("children"):
                    self._retire(slot, worker)
                return job.host.finish(call, msg)

    def _timed_out(self, slot: _Slot, worker: _Worker, job: PoolJob) -> None:
        log.warning("%s#%s (request %s) passed its %gs timeout: killing worker %d and its "
                    "children", job.call.agent, job.call.action, job.call.request_id,
                    job.timeout, worker.pid)
        try:
            job.on_timeout()
        except Exception:  # noqa: BLE001
            log.exception("replying for request %s failed", job.call.request_id)
        slot.worker = None
        with self._lock:
            self.counters["killed"] += 1
        self._kill(worker)

    def _died(self, slot: _Slot, worker: _Worker, job: PoolJob) -> Outcome:
        label = f"{job.call.agent}#{job.call.action}"
        slot.worker = None
        if slot.abort is not None:
            return Outcome(5, f"{label} was stopped: {slot.abort}", {}, "allow", "error")
        zygote = self._zygote
        status = zygote.exit_status(worker.pid, wait=1.0) if zygote is not None else None
        with self._lock:
            self.counters["crashed"] += 1
        log.error("%s (request %s): worker %d died (%s)", label, job.call.request_id,
                  worker.pid, status or "status unknown")
        self._kill(worker)  # whatever of its process group is left
        return Outcome(5, f"Unknown error in {label}: its worker process died "
                          f"({status or 'status unknown'})", {}, "allow", "error")

    # -- workers ---------------------------------------------------------------------------------
    def _ensure_worker(self, slot: _Slot) -> _Worker:
        if slot.worker is not None and procs.alive(slot.worker.pid):
            return slot.worker
        if slot.worker is not None:
            self._drop(slot)
        pid, sock = self._get_zygote().fork()
        slot.worker = _Worker(pid, sock)
        with self._lock:
            self.counters["forked"] += 1
        return slot.worker

    def _drop(self, slot: _Slot) -> None:
        worker, slot.worker = slot.worker, None
        if worker is not None:
            self._kill(worker)

    def _retire(self, slot: _Slot, worker: _Worker) -> None:
        """The worker's action left children: it keeps them and takes no more work."""
        slot.worker = None
        with self._lock:
            self.counters["retired"] += 1
            self._keepers = {p for p in self._keepers if procs.alive(p)} | {worker.pid}
        log.info("worker %d keeps the children its action left running; it takes no more "
                 "work and ends when they do (or with the daemon)", worker.pid)
        try:
            send_json(worker.sock, {"op": "retire"})
        except OSError:
            pass
        worker.sock.close()

    def _retire_quietly(self, slot: _Slot) -> None:
        worker, slot.worker = slot.worker, None
        if worker is not None:
            worker.sock.close()  # EOF: the worker exits

    def _kill(self, worker: _Worker) -> None:
        """End ``worker``, its process group and its descendants, on a reaper thread (the
        slot goes on at once)."""
        try:
            worker.sock.close()
        except OSError:
            pass
        threading.Thread(target=procs.kill_tree, args=(worker.pid,),
                         kwargs={"grace": self.kill_grace, "pgid": worker.pid},
                         name=f"reap-{worker.pid}", daemon=True).start()

    # -- reporting ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            slots = list(self._slots)
            out: dict[str, Any] = dict(self.counters)
            out.update(mode=self.mode, max=self.workers, queued=self.queued,
                       running=self.in_flight)
            keepers = [p for p in self._keepers if procs.alive(p)]
        out["processes"] = sorted(s.worker.pid for s in slots if s.worker is not None)
        out["retired_alive"] = len(keepers)
        zygote = self._zygote
        out["zygote_pid"] = zygote.pid if zygote is not None and zygote.alive else None
        return out
