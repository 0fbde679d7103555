"""SIGHUP after ``pip install`` / ``pip uninstall``, end to end.

A fresh venv holds collective-core installed from its wheel (not editable) and two
throw-away agent distributions this test writes and builds: ``reloadtest`` (0.1.0,
0.2.0, and a 0.3.0 whose plugin fails to import) and ``reloadsteady`` (1.0.0, always
installed). A two-node fleet runs from that venv: node-001 as ``python -m
collective.server.main`` (what ``mco fleet`` starts), node-002 as the venv's
``collectived`` console script. Each step pip-installs into the venv, sends SIGHUP and
checks what the daemons serve, that their PIDs stay and that an accepted request
still gets its reply. Timings are printed (``-s``), never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import venv
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from collective.client import Client
from collective.config import load_config
from collective.fleet import Fleet, fleet_down, fleet_up, wait_for_nodes
from collective.testing.wheels import build_wheel

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NODES = ("node-001", "node-002")
TIMINGS: dict[str, float] = {}

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "collective-agent-{name}"
version = "{version}"
description = "Throw-away agent of tests/test_reload_e2e.py"
requires-python = ">=3.11"
dependencies = ["collective-core>=0.1,<0.2"]

[project.entry-points.collective]
agent-{name} = "collective_agent_{name}.plugin"

[tool.hatch.build.targets.wheel]
packages = ["src/collective_agent_{name}"]
"""

PLUGIN = """\
from importlib.resources import files

from collective import hookimpl
{broken}

@hookimpl
def collective_ddls():
    return [files(__package__) / "{name}.json"]


@hookimpl
def collective_agents():
    from .agent import Agent{name}

    return [Agent{name}]
"""

AGENT = """\
import os
import time
from pathlib import Path

from collective.agent import Agent, action

VERSION = "{version}"


def daemon_pid():
    # the collectived this action runs under (actions run in its worker processes)
    pid = os.getpid()
    while pid > 1:
        cmdline = Path(f"/proc/{{pid}}/cmdline").read_bytes()
        if b"collective.server.main" in cmdline or b"collectived" in cmdline:
            return pid
        pid = int(Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return os.getpid()


class Agent{name}(Agent):
    name = "{name}"

    @action
    def version(self, request, reply):
        reply["version"] = VERSION
        reply["pid"] = daemon_pid()

    @action
    def slow(self, request, reply):
        where = Path(self.config.plugin("{name}")["dir"])
        where.mkdir(parents=True, exist_ok=True)
        (where / f"slow-{{request.id}}").write_text(VERSION)
        time.sleep(float(request["seconds"]))
        reply["version"] = VERSION
        reply["pid"] = daemon_pid()
"""


def ddl(name: str, version: str) -> dict[str, Any]:
    out = {"version": {"type": "string", "description": "The code's version", "display_as": "Version"},
           "pid": {"type": "integer", "description": "The daemon's PID", "display_as": "PID"}}
    return {
        "$schema": "urn:collective:ddl:agent:v1",
        "metadata": {"name": name, "description": "Throw-away reload test agent",
                     "author": "collective developers", "license": "Apache-2.0", "version": version,
                     "url": "https://example.invalid/collective", "timeout": 10},
        "actions": [
            {"action": "version", "description": "Which code answers", "display": "always",
             "input": {"type": "object", "properties": {}}, "output": out},
            {"action": "slow", "description": "Sleep, then say which code answered",
             "display": "always",
             "input": {"type": "object", "required": ["seconds"],
                       "properties": {"seconds": {"type": "number", "description": "How long",
                                                  "minimum": 0, "maximum": 5}}},
             "output": out},
        ],
    }


def write_project(where: Path, name: str, version: str, broken: bool = False) -> Path:
    """A complete agent distribution: pyproject, plugin.py, agent, DDL."""
    project = where / f"{name}-{version}"
    package = project / "src" / f"collective_agent_{name}"
    package.mkdir(parents=True)
    (project / "pyproject.toml").write_text(PYPROJECT.format(name=name, version=version))
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text(PLUGIN.format(
        name=name, broken="import collective_no_such_dependency_for_reload  # 0.3.0 is broken\n"
        if broken else ""))
    (package / "agent.py").write_text(AGENT.format(name=name, version=version))
    (package / f"{name}.json").write_text(json.dumps(ddl(name, version), indent=2))
    return project


@dataclass
class Rig:
    base: Path
    python: Path
    fleet: Fleet
    wheels: dict[str, Path]
    pids: dict[str, int] = field(default_factory=dict)
    installed: str | None = None
    #: open descriptors of node-001 at start
    fds: int = 0
    _client: Client | None = None

    def log(self, node: str) -> str:
        return (self.fleet.directory / "nodes" / node / "collectived.log").read_text()

    def pip(self, *args: str) -> float:
        started = time.monotonic()
        subprocess.run([str(self.python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
                       check=True, capture_output=True, text=True, timeout=300, env=clean_env())
        return time.monotonic() - started

    def install(self, version: str) -> float:
        seconds = self.pip("install", "--no-index", "--no-deps", str(self.wheels[version]))
        self.installed = version
        return seconds

    def client(self) -> Client:
        return Client(load_config(self.fleet.client_config))

    def call(self, node: str, agent: str, action: str, data: dict[str, Any] | None = None,
             timeout: float = 5.0, client: Client | None = None) -> Any:
        """The node's reply, or None (``client``: default one shared by the main thread)."""
        if client is None:
            if self._client is None:
                self._client = self.client()
            client = self._client
        replies = client.request(agent, action, data or {}, targets=[node], timeout=timeout).replies
        return replies[0] if replies else None

    def stats(self, node: str) -> dict[str, Any]:
        reply = self.call(node, "rpcutil", "daemon_stats")
        assert reply is not None and reply.ok, f"{node} does not answer daemon_stats"
        return reply.data

    def inventory(self, node: str) -> dict[str, str]:
        reply = self.call(node, "rpcutil", "agent_inventory")
        assert reply is not None and reply.ok, f"{node} does not answer agent_inventory"
        return {entry["agent"]: entry["version"] for entry in reply.data["agents"]}

    def sighup(self, nodes: tuple[str, ...] = NODES) -> None:
        for node in nodes:
            os.kill(self.pids[node], signal.SIGHUP)

    def wait_log(self, marker: str, before: dict[str, int], timeout: float = 60.0) -> float:
        """Seconds until ``marker`` occurs once more in each node's log than in ``before``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if all(self.log(node).count(marker) > count for node, count in before.items()):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"no new {marker!r} in the logs of {sorted(before)} within {timeout:g}s:\n"
                             + "\n".join(self.log(node)[-2000:] for node in before))

    def counts(self, marker: str, nodes: tuple[str, ...] = NODES) -> dict[str, int]:
        return {node: self.log(node).count(marker) for node in nodes}

    def reload(self, nodes: tuple[str, ...] = NODES) -> float:
        """SIGHUP and wait until each node has re-executed and serves again."""
        before = self.counts("reloaded (", nodes)
        self.sighup(nodes)
        return self.wait_log("reloaded (", before)


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH: the venv must see only what is installed in it."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    base = tmp_path_factory.mktemp("reload")
    started = time.monotonic()
    projects = {version: write_project(base / "src", "reloadtest", version, broken=version == "0.3.0")
                for version in ("0.1.0", "0.2.0", "0.3.0")}
    projects["steady"] = write_project(base / "src", "reloadsteady", "1.0.0")
    with ThreadPoolExecutor(max_workers=2) as pool:
        core_wheel = pool.submit(build_wheel, ROOT / "core", base / "wheels" / "core")
        built = {key: pool.submit(build_wheel, project, base / "wheels" / key)
                 for key, project in projects.items()}
        wheels = {key: future.result() for key, future in built.items()}
        core = core_wheel.result()
    TIMINGS["build 5 wheels"] = time.monotonic() - started
    started = time.monotonic()
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install", str(core)],
                   check=True, capture_output=True, text=True, timeout=600, env=clean_env())
    subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install",
                    "--no-index", "--no-deps", str(wheels["steady"])],
                   check=True, capture_output=True, text=True, timeout=300, env=clean_env())
    TIMINGS["venv with core (from its wheel) and reloadsteady"] = time.monotonic() - started
    where = subprocess.run([str(python), "-c", "import collective; print(collective.__file__)"],
                           check=True, capture_output=True, text=True, timeout=60,
                           env=clean_env()).stdout.strip()
    assert where.startswith(str(env_dir)), f"the venv's collective is not its own: {where}"

    fleet_dir = base / "fleet"
    with pytest.MonkeyPatch.context() as mp:  # the daemons inherit the environment
        mp.delenv("PYTHONPATH", raising=False)
        fleet = fleet_up(fleet_dir, nodes=2, python=python, server_config_for=lambda index, identity: {
            "plugins": {"reloadtest": {"dir": str(base / "work" / identity)}}})
    try:
        # node-002 again, as the console script an admin's service unit would run
        node2 = fleet.directory / "nodes" / "node-002"
        old = fleet.pids["node-002"]
        os.kill(old, signal.SIGTERM)
        os.waitpid(old, 0)
        with open(node2 / "stdout.log", "ab") as out:
            proc = subprocess.Popen([str(env_dir / "bin" / "collectived"), "-c", str(node2 / "server.yaml")],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=node2, env=clean_env())
        fleet.pids["node-002"] = proc.pid
        fleet.save()
        wait_for_nodes(fleet, 60)
        rig = Rig(base, python, fleet, wheels, pids=dict(fleet.pids),
                  fds=len(os.listdir(f"/proc/{fleet.pids['node-001']}/fd")))
        yield rig
    finally:
        if "rig" in locals() and rig._client is not None:
            rig._client.close()
        fleet_down(fleet_dir)
        print("\nreload timings (seconds):")
        for what, seconds in TIMINGS.items():
            print(f"  {what}: {seconds:.2f}")


def test_a_new_agent_is_served_after_pip_install_and_sighup(rig):
    assert rig.call("node-001", "reloadtest", "version").statuscode == 2  # not installed yet
    started = time.monotonic()
    TIMINGS["pip install 0.1.0 (local wheel, --no-deps)"] = rig.install("0.1.0")
    hup = time.monotonic()
    rig.sighup()
    answered: dict[str, float] = {}
    for node in NODES:
        def new_code_answers(node: str = node) -> Any:
            reply = rig.call(node, "reloadtest", "version", timeout=1.0)
            return reply if reply is not None and reply.ok else None

        reply = wait_for(new_code_answers, 60, f"{node} to serve reloadtest")
        answered[node] = time.monotonic() - hup
        assert reply.data["version"] == "0.1.0"
        assert reply.data["pid"] == rig.pids[node], "the PID changed"
    TIMINGS["SIGHUP -> new agent answers (node-001, python -m)"] = answered["node-001"]
    TIMINGS["SIGHUP -> new agent answers (node-002, console script)"] = answered["node-002"]
    TIMINGS["pip install + SIGHUP -> answering (slowest node)"] = time.monotonic() - started
    for node in NODES:
        assert rig.inventory(node) == {"reloadtest": "0.1.0", "reloadsteady": "1.0.0",
                                       "rpcutil": rig.inventory(node)["rpcutil"]}
        assert "new plugin agent-reloadtest" in rig.log(node)
        assert _alive(rig.pids[node])


def test_an_upgrade_serves_the_new_code_and_the_accepted_request_gets_its_reply(rig):
    if rig.installed != "0.1.0":
        rig.install("0.1.0")
        rig.reload()
    slow: dict[str, Any] = {}

    def slow_call(node: str) -> None:
        with rig.client() as client:
            slow[node] = rig.call(node, "reloadtest", "slow", {"seconds": 2}, timeout=20,
                                  client=client)

    threads = [threading.Thread(target=slow_call, args=(node,)) for node in NODES]
    for thread in threads:
        thread.start()
    for node in NODES:  # accepted and running on each node
        wait_for(lambda node=node: list((rig.base / "work" / node).glob("slow-*")), 10,
                 f"the slow action to start on {node}")
    rig.install("0.2.0")
    paused = rig.counts("paused: unsubscribed")
    reloaded = rig.counts("reloaded (")
    hup = time.monotonic()
    rig.sighup()

    # broadcast pings during the reload: which nodes see them (honest bookkeeping)
    pings = {"sent": 0, **{node: 0 for node in NODES}}
    done = threading.Event()

    def ping_loop() -> None:
        with rig.client() as client:
            while not done.is_set():
                answered = {r.sender for r in client.ping(timeout=0.3).replies}
                pings["sent"] += 1
                for node in NODES:
                    pings[node] += node in answered

    pinger = threading.Thread(target=ping_loop)
    pinger.start()
    try:
        # a directed request sent once node-001 has unsubscribed waits for the new image
        rig.wait_log("paused: unsubscribed", {"node-001": paused["node-001"]})
        sent = time.monotonic()
        window = rig.call("node-001", "reloadtest", "version", timeout=30)
        TIMINGS["directed request sent while draining: waited"] = time.monotonic() - sent
        assert window is not None and window.ok, "a directed request sent during the reload was lost"
        assert window.data["version"] == "0.2.0"
        rig.wait_log("reloaded (", reloaded)
        TIMINGS["SIGHUP -> upgraded code serves (with a 2 s action to drain)"] = time.monotonic() - hup
    finally:
        done.set()
        pinger.join(10)
        for thread in threads:
            thread.join(20)
    TIMINGS["broadcast pings sent during the upgrade reload (count)"] = pings["sent"]
    for node in NODES:
        TIMINGS[f"  ... of which {node} answered (count)"] = pings[node]
    for node in NODES:
        reply = slow[node]
        assert reply is not None, f"{node} lost the request it had accepted before SIGHUP"
        assert reply.ok and reply.data["version"] == "0.1.0", "the accepted request ran the old code"
        assert reply.data["pid"] == rig.pids[node]
        now = rig.call(node, "reloadtest", "version")
        assert now.ok and now.data["version"] == "0.2.0" and now.data["pid"] == rig.pids[node]
        assert rig.inventory(node)["reloadtest"] == "0.2.0"
        assert rig.stats(node)["pid"] == rig.pids[node]
    drains = [line for line in rig.log("node-001").splitlines() if "drained in" in line]
    TIMINGS["drain with the 2 s action accepted before SIGHUP"] = float(
        drains[-1].split("drained in ")[1].split("s")[0])


def test_a_plugin_that_fails_to_import_is_named_and_the_rest_serve(rig):
    rig.install("0.3.0")
    rig.reload()
    for node in NODES:
        text = rig.log(node)
        assert 'While loading plugin "agent-reloadtest" (collective-agent-reloadtest 0.3.0)' in text
        assert "after the reload: plugin agent-reloadtest" in text  # the preflight said so first
        problems = rig.stats(node)["plugin_problems"]
        assert any("agent-reloadtest" in p and "0.3.0" in p and "ModuleNotFoundError" in p
                   for p in problems), problems
        assert rig.call(node, "reloadtest", "version").statuscode == 2
        steady = rig.call(node, "reloadsteady", "version")
        assert steady.ok and steady.data["version"] == "1.0.0"
        assert "reloadtest" not in rig.inventory(node)
        assert rig.stats(node)["pid"] == rig.pids[node]
    version = subprocess.run([str(rig.python.parent / "collectived"), "--version"],
                             capture_output=True, text=True, timeout=60, env=clean_env())
    assert "agent-reloadtest-0.3.0 (collective-agent-reloadtest): failed: ModuleNotFoundError" \
        in version.stdout


def test_pip_uninstall_and_sighup_removes_the_agent(rig):
    if rig.installed is None:
        rig.install("0.2.0")
        rig.reload()
    rig.pip("uninstall", "-y", "collective-agent-reloadtest")
    rig.installed = None
    rig.reload()
    for node in NODES:
        assert sorted(rig.inventory(node)) == ["reloadsteady", "rpcutil"]
        gone = rig.call(node, "reloadtest", "version")
        assert gone.statuscode == 2 and "Unknown agent reloadtest" in gone.statusmsg
        assert "reloadtest" not in rig.stats(node)["agents"]
        assert "reloadsteady" in rig.inventory(node)
        assert rig.stats(node)["plugin_problems"] == []
        assert "removed plugin agent-reloadtest" in rig.log(node)
        assert rig.stats(node)["pid"] == rig.pids[node]


def test_a_broken_config_on_sighup_keeps_the_old_daemon_serving(rig):
    config = rig.fleet.directory / "nodes" / "node-001" / "server.yaml"
    good = config.read_text()
    aborted = rig.counts("reload aborted", ("node-001",))
    reloaded = rig.counts("reloaded (", ("node-001",))
    starttime = rig.stats("node-001")["starttime"]
    config.write_text(good + "bogus_section: 1\n")
    try:
        rig.sighup(("node-001",))
        rig.wait_log("reload aborted", aborted)
        line = [x for x in rig.log("node-001").splitlines() if "reload aborted" in x][-1]
        assert "bogus_section" in line and "still serving" in line
        assert _alive(rig.pids["node-001"])
        assert rig.call("node-001", "rpcutil", "ping").ok
        assert rig.call("node-001", "reloadsteady", "version").ok
        assert rig.stats("node-001")["starttime"] == starttime  # not re-executed
        assert rig.counts("reloaded (", ("node-001",)) == reloaded
    finally:
        config.write_text(good)
    # back to the config it runs with: nothing to re-exec for, the next SIGHUP reloads in place
    in_place = rig.counts("reloading agents, facts, policies and keys", ("node-001",))
    rig.sighup(("node-001",))
    rig.wait_log("reloading agents, facts, policies and keys", in_place)
    assert rig.counts("reloaded (", ("node-001",)) == reloaded
    assert rig.call("node-001", "reloadsteady", "version").ok
    assert rig.stats("node-001")["pid"] == rig.pids["node-001"]


def test_sighup_with_nothing_changed_reloads_in_place(rig):
    before = rig.counts("reloading agents, facts, policies and keys")
    reexecs = rig.counts("reloaded (")
    starttimes = {node: rig.stats(node)["starttime"] for node in NODES}
    rig.sighup()
    TIMINGS["SIGHUP with nothing changed (in place)"] = rig.wait_log(
        "reloading agents, facts, policies and keys", before)
    for node in NODES:
        assert rig.stats(node)["starttime"] == starttimes[node]
        assert rig.call(node, "reloadsteady", "version").ok
    assert rig.counts("reloaded (") == reexecs


def test_sighup_leaves_nothing_behind(rig):
    """The re-exec'd daemons still stop cleanly on SIGTERM (exit 0, pidfile removed)."""
    proc_pid = rig.pids["node-001"]
    pidfile = rig.fleet.directory / "nodes" / "node-001" / "collectived.pid"
    assert pidfile.read_text().strip() == str(proc_pid)
    fds = len(os.listdir(f"/proc/{proc_pid}/fd"))
    assert fds <= rig.fds + 2, f"descriptors pile up across re-execs: {rig.fds} at start, {fds} now"
    os.kill(proc_pid, signal.SIGTERM)
    _, status = os.waitpid(proc_pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not pidfile.exists()
