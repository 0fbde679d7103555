"""Stand-in agents for the rolling-upgrade example: a load balancer pool, a package
manager and a health check, each keeping its state in a JSON file on the node
(``plugins.standins.state``). Test-only; the real package and nrpe agents live in
their own distributions."""

from __future__ import annotations

import fcntl
import json
import threading
from pathlib import Path
from typing import Any

from collective.agent import Aborted, Agent, action

#: threads of one process; the file lock below serializes the daemon's worker processes
_lock = threading.Lock()


class _State:
    def __init__(self, agent: Agent) -> None:
        path = agent.config.plugin("standins").get("state")
        if not path:
            raise Aborted("plugins.standins.state is not configured")
        self.path = Path(path)

    def __enter__(self) -> dict[str, Any]:
        _lock.acquire()
        self.locked = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115
        fcntl.flock(self.locked, fcntl.LOCK_EX)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}
        return self.data

    def __exit__(self, *exc: object) -> None:
        try:
            self.path.write_text(json.dumps(self.data))
        finally:
            self.locked.close()
            _lock.release()


class Lb(Agent):
    """A load balancer's pool: which backends receive traffic."""

    name = "lb"

    @classmethod
    def activate(cls, config: Any) -> bool:
        return config.get("facts.static.role") == "lb"

    @action
    def disable(self, request, reply):
        with _State(self) as state:
            state.setdefault("out", [])
            if request["backend"] not in state["out"]:
                state["out"].append(request["backend"])
            state.setdefault("log", []).append(["disable", request["backend"]])
            reply["out_of_pool"] = sorted(state["out"])

    @action
    def enable(self, request, reply):
        with _State(self) as state:
            state["out"] = [b for b in state.get("out", []) if b != request["backend"]]
            state.setdefault("log", []).append(["enable", request["backend"]])
            reply["out_of_pool"] = sorted(state["out"])

    @action
    def members(self, request, reply):
        with _State(self) as state:
            reply["out_of_pool"] = sorted(state.get("out", []))


class Pkgsim(Agent):
    """Pretends to upgrade a package: bumps a version number in the state file."""

    name = "pkgsim"

    @action
    def update(self, request, reply):
        with _State(self) as state:
            versions = state.setdefault("versions", {})
            versions[request["package"]] = versions.get(request["package"], 1) + 1
            reply["version"] = str(versions[request["package"]])


class Checksim(Agent):
    """A health check that fails where the state file says ``"broken": true``."""

    name = "checksim"

    @action
    def runcommand(self, request, reply):
        with _State(self) as state:
            broken = bool(state.get("broken"))
        reply["exitcode"] = 2 if broken else 0
        reply["output"] = f"{request['command']}: {'CRITICAL' if broken else 'OK'}"
