"""End to end: the process agent on a real 2-node fleet, driven by the real `mco`.

Both nodes run on this machine, so both see the marker processes this test starts.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from collective.fleet import fleet_down, fleet_up
from collective.testing import require

SLEEPER = "import time; time.sleep(300)"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require(importlib.util.find_spec("collective_agent_process") is not None,
            "collective-agent-process is not installed (make install)")
    directory = tmp_path_factory.mktemp("fleet")
    started = fleet_up(directory, nodes=2, extra_server_config={
        "plugins": {"process": {"regex_timeout": 1}}})
    yield started
    fleet_down(directory)


@pytest.fixture
def marker():
    return f"collective-proc-e2e-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", SLEEPER, *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while argv and argv[-1] not in " ".join(psutil.Process(proc.pid).cmdline()):
            assert time.monotonic() < deadline, "the marker process never exec'd"
            time.sleep(0.02)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def mco(fleet, *args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def node_blocks(out):
    """{identity: [pid, ...]} from the per-node tables of `mco pgrep`."""
    blocks: dict[str, list[int]] = {}
    current = None
    for line in out.splitlines():
        if re.fullmatch(r"node-\d{3}", line):
            current = blocks.setdefault(line, [])
        elif current is not None and re.match(r"\s+\d+ ", line):
            current.append(int(line.split()[0]))
        elif not line.strip():
            current = None
    return blocks


def test_pgrep_shows_the_processes_under_both_nodes_and_the_summary(fleet, spawn, marker):
    one, two = spawn(marker), spawn(marker + "-b")
    code, out, err = mco(fleet, "pgrep", marker, "--dt", "1")
    assert code == 0, err
    assert "     PID USER        VSZ              COMMAND" in out
    blocks = node_blocks(out)
    assert set(blocks) == {"node-001", "node-002"}
    for node in ("node-001", "node-002"):
        # the `mco pgrep MARKER` process itself matches too, as pgrep(1) would without -f care
        assert {one.pid, two.pid} <= set(blocks[node])
    matched = sum(len(pids) for pids in blocks.values())
    assert "Summary of The Process List:" in out
    assert re.search(r"^\s+Matched hosts: 2$", out, re.M)
    assert re.search(rf"^\s+Matched processes: {matched}$", out, re.M)
    assert re.search(r"^\s+Resident Size: [\d.]+ (B|KiB|MiB|GiB)$", out, re.M)
    assert re.search(r"^\s+Virtual Size: [\d.]+ (B|KiB|MiB|GiB)$", out, re.M)
    assert "Finished processing 2 / 2 hosts" in out


def test_pgrep_json_and_regex(fleet, spawn, marker):
    one = spawn(marker + "-one")
    spawn(marker + "-two")
    code, out, err = mco(fleet, "pgrep", "--regex", f"{marker}-o[n]e$", "-I", "node-002", "--json")
    assert code == 0, err
    [reply] = json.loads(out)
    assert reply["sender"] == "node-002"
    assert [p["pid"] for p in reply["data"]["pslist"]] == [one.pid]


def test_rpc_kill_terminates_one_process(fleet, spawn, marker):
    victim, bystander = spawn(marker), spawn(marker + "-stays")
    code, out, err = mco(fleet, "rpc", "process", "kill", f"pid={victim.pid}", "signal=TERM",
                         "-I", "node-001")
    assert code == 0, out + err
    assert "Finished processing 1 / 1 hosts" in out
    assert victim.wait(timeout=10) == -signal.SIGTERM
    assert not psutil.pid_exists(victim.pid)
    assert bystander.poll() is None


def test_rpc_kill_refuses_the_daemon_itself(fleet):
    daemon = fleet.pids["node-001"]
    code, out, _ = mco(fleet, "rpc", "process", "kill", f"pid={daemon}", "signal=KILL", "-I", "node-001")
    assert code == 2
    assert "Request Aborted" in out and "daemon itself" in out
    assert psutil.pid_exists(daemon)
    code, _, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001")
    assert code == 0


def test_injection_is_refused_before_sending(fleet, tmp_path):
    pwn = tmp_path / "pwn"
    for pattern in (f"x; touch {pwn}", f"$(touch {pwn})", f"`touch {pwn}`", "--help"):
        proc = subprocess.run([sys.executable, "-m", "collective", "pgrep", "-c", str(fleet.client_config),
                               "-I", "node-001", "--", pattern], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (pattern, proc.stdout, proc.stderr)
        assert "process_pattern" in proc.stderr and "Traceback" not in proc.stderr
    assert not pwn.exists()


@pytest.mark.timeout(120)
def test_slow_regex_is_stopped_and_the_daemon_keeps_answering(fleet, spawn, marker):
    spawn(marker + "-" + "a" * 40 + "!")
    slow = subprocess.Popen([sys.executable, "-m", "collective", "rpc", "process", "list",
                             "pattern=(a|aa)+$", "regex=true", "-I", "node-001", "--json",
                             "-c", str(fleet.client_config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001")
        assert code == 0 and "Finished processing 1 / 1 hosts" in out
        out, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait(timeout=10)
    [reply] = json.loads(out)
    assert reply["statuscode"] == 4 and "took longer than" in reply["statusmsg"]


def test_process_data_plugin_in_a_compound_filter(fleet, spawn, marker):
    # the `mco find` process matches too (its argv holds the pattern): count it
    spawn(marker)
    code, out, err = mco(fleet, "find", "-S", f"process('{marker}').exists=true", "--dt", "1")
    assert code == 0, err
    assert out.split() == ["node-001", "node-002"]
    code, out, _ = mco(fleet, "find", "-S", f"process('{marker}').count>=2", "--dt", "1")
    assert out.split() == ["node-001", "node-002"]
    code, out, _ = mco(fleet, "find", "-S", f"process('{marker[::-1]}').count>=2", "--dt", "1")
    assert out.split() == []
