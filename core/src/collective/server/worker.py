"""The processes that run actions: a *zygote* and the *workers* it forks.

``collectived`` starts one zygote (``python -m collective.server.worker``, a fresh
interpreter, so nothing of the daemon's threads or sockets is inherited). The zygote
imports the agent classes once and then forks a worker whenever the daemon asks
(:mod:`collective.server.workers` is the daemon's side). A fork costs milliseconds and
shares the zygote's memory copy-on-write; an interpreter start would cost a third of a
CPU-second and ~30 MiB per worker.

A worker runs one action at a time, in its own process group, with the agents built
from the daemon's config and DDLs. ``self.node`` is a :class:`WorkerNode`: identity,
config, start time, collectives and version are copied; ``facts()``, ``classes()``,
``stats()`` and ``data_plugins()`` ask the daemon (over the worker's socket) when an
agent calls them. Log records go to the daemon's log through a datagram socket.

Lifetimes, so that no child of an action outlives the daemon:

- a worker dies with the zygote (``PR_SET_PDEATHSIG``, SIGKILL);
- the zygote notices the daemon's death (its control socket reaches EOF; also a
  SIGTERM parent-death signal when the daemon started it from its main thread) and
  then SIGTERMs, and after 1 s SIGKILLs, every worker's process group and every
  descendant of every worker before it exits;
- the daemon kills a worker's tree itself when its action passes its timeout (see
  :mod:`collective.server.workers`).

Wire format on the sockets: 4-byte big-endian length, then JSON (the first message to
the zygote, from the daemon, is a pickle: config objects and agent class names).
"""

from __future__ import annotations

import array
import json
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

from . import procs

log = logging.getLogger(__name__)

#: fds of the zygote's sockets, in the environment of its interpreter
CONTROL_FD_ENV = "COLLECTIVE_ZYGOTE_FD"
LOG_FD_ENV = "COLLECTIVE_ZYGOTE_LOG_FD"
#: most bytes of one message (a reply is smaller than a request's 512 KiB limit allows)
MAX_MESSAGE = 64 * 1024 * 1024
#: most bytes of one forwarded log record
MAX_LOG_RECORD = 16 * 1024


class ChannelClosed(Exception):
    """The other end closed the socket (or it broke)."""


# -- framing ------------------------------------------------------------------------------------
def send_bytes(sock: socket.socket, payload: bytes, fds: list[int] | None = None) -> None:
    data = struct.pack(">I", len(payload)) + payload
    if fds:
        sock.sendmsg([data[:4]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        sock.sendall(data[4:])
    else:
        sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        if fds is not None and not chunks:
            msg, ancdata, _flags, _addr = sock.recvmsg(n - got, socket.CMSG_SPACE(4 * 4))
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    ints = array.array("i")
                    ints.frombytes(data[: len(data) - len(data) % ints.itemsize])
                    fds.extend(ints)
        else:
            msg = sock.recv(min(n - got, 1 << 20))
        if not msg:
            raise ChannelClosed("connection closed")
        chunks.append(msg)
        got += len(msg)
    return b"".join(chunks)


def recv_bytes(sock: socket.socket, fds: list[int] | None = None) -> bytes:
    try:
        (length,) = struct.unpack(">I", _recv_exact(sock, 4, fds))
        if length > MAX_MESSAGE:
            raise ChannelClosed(f"message of {length} bytes is over the limit")
        return _recv_exact(sock, length)
    except OSError as exc:
        raise ChannelClosed(str(exc)) from None


def send_json(sock: socket.socket, obj: Any, fds: list[int] | None = None) -> None:
    send_bytes(sock, json.dumps(obj, separators=(",", ":")).encode(), fds)


def recv_json(sock: socket.socket, fds: list[int] | None = None) -> Any:
    return json.loads(recv_bytes(sock, fds))


# -- logging into the daemon's log ----------------------------------------------------------------
class _DatagramHandler(logging.Handler):
    """Sends each record as one datagram; drops it when the daemon is not reading."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            payload = json.dumps({"level": record.levelno, "name": record.name,
                                  "msg": text[:MAX_LOG_RECORD], "pid": os.getpid()}).encode()
            self.sock.send(payload, socket.MSG_DONTWAIT)
        except (OSError, ValueError, TypeError):
            pass


def _log_to(sock: socket.socket, level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_DatagramHandler(sock))
    root.setLevel(level)
    logging.getLogger("stomp").setLevel(logging.WARNING)


# -- what agents see as self.node ----------------------------------------------------------------
class WorkerNode:
    """The :class:`~collective.server.dispatch.NodeContext` of agents in a worker."""

    def __init__(self, snapshot: dict[str, Any], config: Any, ddls: dict[str, Any],
                 ask: Any) -> None:
        self.identity: str = snapshot["identity"]
        self.config = config
        self.start_time: float = snapshot["start_time"]
        self.collectives: list[str] = list(snapshot["collectives"])
        self.main_collective: str = snapshot["main_collective"]
        self.version: str = snapshot["version"]
        self._ddls = ddls
        self._ask = ask

    def facts(self) -> dict[str, Any]:
        return dict(self._ask("facts"))

    def classes(self) -> list[str]:
        return list(self._ask("classes"))

    def stats(self) -> dict[str, Any]:
        return dict(self._ask("stats"))

    def data_plugins(self) -> list[str]:
        return list(self._ask("data_plugins"))

    def agent_ddls(self) -> dict[str, Any]:
        return dict(self._ddls)


# -- the zygote ------------------------------------------------------------------------------------
class _Zygote:
    def __init__(self, control: socket.socket, log_sock: socket.socket) -> None:
        self.control = control
        self.log_sock = log_sock
        self.workers: set[int] = set()
        self.wake: tuple[socket.socket, ...] = ()
        self.agents: dict[str, type] = {}
        self.init: dict[str, Any] = {}
        self.stopping = False

    def load(self) -> None:
        self.init = pickle.loads(recv_bytes(self.control))  # noqa: S301 - from our own daemon
        sys.path[:] = list(self.init["sys_path"])
        _log_to(self.log_sock, int(self.init.get("log_level", logging.INFO)))
        failed: dict[str, str] = {}
        for spec in self.init["agents"]:
            try:
                self.agents[spec["name"]] = _import_class(spec)
            except BaseException as exc:  # noqa: BLE001 - reported to the daemon, by agent
                failed[spec["name"]] = f"{type(exc).__name__}: {exc}"[:300]
        send_json(self.control, {"op": "ready", "pid": os.getpid(),
                                 "loaded": sorted(self.agents), "failed": failed})

    def serve(self) -> None:
        # SIGCHLD wakes the loop up, so a dead worker is reported at once
        wake_r, wake_w = socket.socketpair()
        self.wake = (wake_r, wake_w)
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        while True:
            self.reap()
            try:
                ready, _, _ = select.select([self.control, wake_r], [], [], 1.0)
            except InterruptedError:
                continue
            if self.stopping:
                break
            if wake_r in ready:
                try:
                    wake_r.recv(4096)
                except BlockingIOError:
                    pass
            if self.control not in ready:
                continue
            fds: list[int] = []
            try:
                msg = recv_json(self.control, fds)
            except ChannelClosed:
                break  # the daemon is gone
            op = msg.get("op")
            if op == "fork":
                pid = self.fork(fds[0] if fds else -1)
                for fd in fds:
                    os.close(fd)
                send_json(self.control, {"op": "forked", "pid": pid, "slot": msg.get("slot")})
            elif op == "shutdown":
                break
        self.cleanup(float(self.init.get("kill_grace", 1.0)))

    def fork(self, fd: int) -> int:
        parent = os.getpid()
        pid = os.fork()
        if pid:
            self.workers.add(pid)
            return pid
        # -- the worker -------------------------------------------------------------------
        code = 0
        try:
            procs.set_parent_death_signal(signal.SIGKILL, expected_parent=parent)
            os.setpgid(0, 0)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                        signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            self.control.close()
            for wake in self.wake:
                wake.close()
            sock = socket.socket(fileno=fd)
            _Worker(sock, self).serve()
        except BaseException:  # noqa: BLE001 - a worker reports by dying
            code = 70
        os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self.workers.discard(pid)
                try:
                    send_json(self.control, {"op": "exited", "pid": pid,
                                             "status": _describe(status)})
                except (OSError, ChannelClosed):
                    pass

    def cleanup(self, grace: float) -> None:
        """Kill every worker's process group and descendants, then exit."""
        workers = sorted(self.workers)
        trees = {pid: procs.descendants(pid) for pid in workers}
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
            for pid in workers:
                # a worker leads its process group; descendants that left it are signalled
                # one by one (looked up again, for children forked meanwhile)
                trees[pid] = sorted(set(trees[pid]) | set(procs.descendants(pid)))
                procs.signal_all([*trees[pid], pid], pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.reap()
                if not any(procs.alive(p) for tree in trees.values() for p in tree) \
                        and not self.workers:
                    return
                time.sleep(0.02)
        self.reap()


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"status {status}"


def _import_class(spec: dict[str, Any]) -> type:
    import importlib
    import importlib.util

    module_name, qualname = spec["module"], spec["qualname"]
    if "<locals>" in qualname:
        raise ImportError(f"{module_name}.{qualname} is defined inside a function")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        path = spec.get("file")
        if not path:
            raise
        # a module the daemon loaded from a file but not by its name (pytest's importlib
        # mode, a script): load the same file under the same name
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        loader_spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{module_name}.{qualname} is not a class")
    return obj


# -- a worker -------------------------------------------------------------------------------------
class _Worker:
    def __init__(self, sock: socket.socket, zygote: _Zygote) -> None:
        from ..ddl import AgentDDL

        self.sock = sock
        self.lock = threading.Lock()  # node questions come from the action's thread only
        init = zygote.init
        self.config = init["config"]
        self.classes = zygote.agents
        self.ddls = {spec["name"]: AgentDDL(spec["ddl"], spec["source"], {})
                     for spec in init["agents"] if spec["name"] in zygote.agents}
        self.node = WorkerNode(init["node"], self.config, self.ddls, self.ask)
        self.agents: dict[str, Any] = {}
        self.actions: dict[str, dict[str, Any]] = {}

    def agent(self, name: str) -> tuple[Any, dict[str, Any]]:
        """The agent instance (made on first use, as the daemon made its own) and its
        action functions; ``(None, {})`` when it is not available here."""
        if name not in self.agents:
            cls = self.classes.get(name)
            if cls is None:
                return None, {}
            try:
                instance = cls(self.config, self.node)
            except Exception:  # noqa: BLE001 - that agent's jobs fail, the others run
                log.exception("agent %s could not be constructed in worker %d", name, os.getpid())
                return None, {}
            instance.ddl = self.ddls[name]
            self.agents[name] = instance
            self.actions[name] = {a: cls.action_function(a) for a in cls.actions()}
        return self.agents[name], self.actions[name]

    def ask(self, what: str) -> Any:
        with self.lock:
            send_json(self.sock, {"op": "node", "call": what})
            answer = recv_json(self.sock)
        return answer.get("value")

    def serve(self) -> None:
        from .dispatch import invoke

        while True:
            try:
                msg = recv_json(self.sock)
            except ChannelClosed:
                return
            op = msg.get("op")
            if op == "run":
                job = msg["job"]
                agent, actions = self.agent(job["agent"])
                func = actions.get(job["action"])
                if agent is None or func is None:
                    result = {"statuscode": 5, "data": None,
                              "statusmsg": f"{job['agent']}#{job['action']} is not available "
                                           "in the worker process"}
                else:
                    code, message, data = invoke(agent, func, job)
                    result = {"statuscode": code, "statusmsg": message, "data": data}
                result["op"] = "result"
                result["children"] = procs.has_children(os.getpid())
                try:
                    payload = json.dumps(result, separators=(",", ":"), allow_nan=False).encode()
                except (TypeError, ValueError):
                    payload = json.dumps({
                        "op": "result", "statuscode": 5, "data": None,
                        "children": result["children"],
                        "statusmsg": f"Unknown error in {job['agent']}#{job['action']}: the "
                                     "reply data cannot be encoded as JSON"}).encode()
                with self.lock:
                    send_bytes(self.sock, payload)
            elif op == "retire":
                # children of an earlier action live on (a detached run and its watchdog
                # thread): take no more work, exit when they are gone
                self.sock.close()
                while procs.has_children(os.getpid()):
                    time.sleep(0.5)
                return
            else:
                return


def main() -> None:
    control = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    log_sock = socket.socket(fileno=int(os.environ.pop(LOG_FD_ENV)))
    parent = int(os.environ.pop("COLLECTIVE_ZYGOTE_PARENT", "0") or 0)
    if parent:
        procs.set_parent_death_signal(signal.SIGTERM, expected_parent=parent)
    zygote = _Zygote(control, log_sock)

    def on_term(*_: Any) -> None:
        zygote.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the daemon
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    zygote.load()
    zygote.serve()


if __name__ == "__main__":  # pragma: no cover - the daemon starts it
    main()
