"""The canary agent: proof of whether an action ran."""

from __future__ import annotations

import os
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
