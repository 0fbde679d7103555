"""The canary agent: proof of whether an action ran, and misbehaviour on demand for the
fault tests (children left running, a dying worker)."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from collective.agent import Aborted, Agent, action


class Canary(Agent):
    name = "canary"

    def _log(self, line: str) -> None:
        path = self.config.plugin("canary").get("log")
        if not path:
            raise Aborted("plugins.canary.log is not configured")
        with open(Path(path), "a") as handle:
            handle.write(f"{line} {self.node.identity} {os.getpid()} {time.time():.3f}\n")

    @action
    def run(self, request, reply):
        self._log(f"run {request.get('marker', '-')}")
        reply["ran"] = True

    @action
    def sleep(self, request, reply):
        self._log(f"start {request.get('marker', '-')}")
        time.sleep(float(request["seconds"]))
        self._log(f"end {request.get('marker', '-')}")
        reply["ran"] = True

    @action
    def fail(self, request, reply):
        raise ValueError("canary failure on purpose")

    @action
    def spawn(self, request, reply):
        """Start ``sleep 100`` with argv[0] ``canary-child-MARKER`` (in a session of its own
        with ``detach``), log it, then sleep ``seconds``."""
        child = subprocess.Popen([f"canary-child-{request['marker']}", "100"],
                                 executable=shutil.which("sleep"), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=bool(request.get("detach")))
        self._log(f"spawned {request['marker']} child={child.pid}")
        reply["child"] = child.pid
        time.sleep(float(request.get("seconds", 0)))
        reply["ran"] = True

    @action
    def crash(self, request, reply):
        """Kill the process running the action: ``exit`` (os._exit), ``segv`` (a NULL
        read), ``sigsegv`` (SIGSEGV sent to itself), ``kill`` (SIGKILL to itself)."""
        self._log(f"crash {request.get('marker', '-')} {request['how']}")
        if request["how"] == "exit":
            os._exit(3)
        if request["how"] == "segv":
            ctypes.string_at(0)
        if request["how"] == "sigsegv":
            os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(5)  # the signal is delivered at once; never reached
        os.kill(os.getpid(), signal.SIGKILL)
