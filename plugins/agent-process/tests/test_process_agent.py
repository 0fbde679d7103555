"""The process agent on an in-process node (real DDL validation and dispatch) against
real processes on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

import collective_agent_process.agent as agent_module
import collective_agent_process.plugin as process_plugin
from collective.testing import require

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def node(collective_node):
    def make(**plugin_config):
        return collective_node(plugins=[process_plugin],
                               config={"plugins": {"process": plugin_config}} if plugin_config else None)
    return make


def pids(reply):
    return sorted(p["pid"] for p in reply.data["pslist"])


def wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


# -- list ------------------------------------------------------------------------------


def test_list_finds_processes_by_literal_substring(node, spawn, marker):
    one, two = spawn(marker), spawn(marker + "-second")
    spawn("unrelated-" + marker[::-1])
    reply = node().call("process", "list", pattern=marker)
    assert reply.statuscode == 0, reply.statusmsg
    assert pids(reply) == sorted([one.pid, two.pid])
    record = next(p for p in reply.data["pslist"] if p["pid"] == one.pid)
    assert set(record) == {"pid", "ppid", "username", "cmdline", "name", "state", "rss", "vsize",
                           "cpu_percent", "create_time"}
    assert record["ppid"] == os.getpid()
    assert record["username"] == psutil.Process().username()
    assert record["cmdline"].endswith(marker) and "time.sleep(300)" in record["cmdline"]
    assert record["name"].startswith("python")
    assert record["state"] in ("sleeping", "running")
    assert record["rss"] > 0 and record["vsize"] >= record["rss"]
    assert record["cpu_percent"] >= 0
    assert abs(record["create_time"] - psutil.Process(one.pid).create_time()) < 1


def test_literal_pattern_treats_regex_metacharacters_literally(node, spawn, marker):
    dotted = spawn(marker + "-a.b[c](d)+")
    plain = spawn(marker + "-aXb[c](d)+")
    n = node()
    assert pids(n.call("process", "list", pattern=marker + "-a.b[c](d)+")) == [dotted.pid]
    assert pids(n.call("process", "list", pattern=marker + "-a.b")) == [dotted.pid]
    # the same text as a regex: "." matches X, and [c] is a class
    reply = n.call("process", "list", pattern=marker + "-a.b", regex=True)
    assert pids(reply) == sorted([dotted.pid, plain.pid])


def test_list_by_regex(node, spawn, marker):
    one, two = spawn(marker + "-one"), spawn(marker + "-two")
    spawn(marker + "-three")
    reply = node().call("process", "list", pattern=marker + "-(one|two)$", regex=True)
    assert reply.statuscode == 0, reply.statusmsg
    assert pids(reply) == sorted([one.pid, two.pid])


def test_empty_pattern_lists_everything_and_max_processes_caps_it(node, spawn, marker):
    mine = spawn(marker)
    everything = node().call("process", "list")
    assert everything.statuscode == 0
    assert mine.pid in pids(everything) and os.getpid() in pids(everything)
    capped = node(max_processes=2).call("process", "list")
    assert len(capped.data["pslist"]) == 2


def test_list_by_user(node, spawn, marker):
    require(IS_ROOT, "starting a process as another user needs root")
    mine = spawn(marker)
    theirs = spawn(marker, user="nobody")
    n = node()
    assert pids(n.call("process", "list", pattern=marker, user="nobody")) == [theirs.pid]
    assert pids(n.call("process", "list", pattern=marker, user="65534")) == [theirs.pid]
    assert pids(n.call("process", "list", pattern=marker, user="root")) == [mine.pid]
    assert pids(n.call("process", "list", pattern=marker, user="no_such_user_x")) == []


def test_just_zombies_finds_a_real_zombie(node, spawn, marker):
    # the parent forks a child that exits at once and is not reaped until SIGTERM
    code = (
        "import os, signal, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "def stop(*_):\n"
        "    os.waitpid(pid, 0)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print(pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = spawn(marker, code=code, stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    assert wait_gone(child), "the child never became a zombie"
    n = node()
    zombies = n.call("process", "list", just_zombies=True)
    assert zombies.statuscode == 0
    record = next(p for p in zombies.data["pslist"] if p["pid"] == child)
    assert record["state"] == "zombie" and record["ppid"] == parent.pid
    assert record["cmdline"].startswith("[") and record["cmdline"].endswith("]")
    assert all(p["state"] == "zombie" for p in zombies.data["pslist"])
    # the parent matches the marker but is not a zombie
    assert pids(n.call("process", "list", pattern=marker, just_zombies=True)) == []
    assert pids(n.call("process", "list", pattern=marker)) == [parent.pid]


# -- ReDoS (docs/security.md S9) ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_nested_quantifier_regex_is_refused(node, spawn, marker, monkeypatch):
    spawn(marker + "-" + "a" * 30 + "!")
    calls = []
    monkeypatch.setattr(agent_module, "run_matcher", lambda *a: calls.append(a) or [])
    reply = node().call("process", "list", pattern="(a+)+$", regex=True)
    assert reply.statuscode == 4
    assert "nested quantifiers" in reply.statusmsg
    assert calls == []


def test_catastrophic_pattern_is_harmless_as_a_literal(node, spawn, marker):
    victim = spawn(marker + "-" + "a" * 30 + "!")
    n = node()
    assert pids(n.call("process", "list", pattern="(a+)+$")) == []
    assert pids(n.call("process", "list", pattern="a" * 30 + "!")) == [victim.pid]


@pytest.mark.timeout(60)
def test_slow_regex_that_passes_the_static_check_is_stopped(node, spawn, marker):
    spawn(marker + "-" + "a" * 40 + "!")
    reply = node(regex_timeout=1).call("process", "list", pattern="(a|aa)+$", regex=True)
    assert reply.statuscode == 4
    assert "took longer than 1 s" in reply.statusmsg


def test_overlong_regex_is_refused(node):
    reply = node().call("process", "list", pattern="a" * 257, regex=True)
    assert reply.statuscode == 4


def test_invalid_regex_is_refused(node):
    reply = node().call("process", "list", pattern="(unclosed", regex=True)
    assert reply.statuscode == 4
    assert "invalid regular expression" in reply.statusmsg


# -- kill --------------------------------------------------------------------------------


def test_kill_with_term(node, spawn, marker):
    victim = spawn(marker)
    reply = node().call("process", "kill", pid=victim.pid, signal="TERM")
    assert reply.statuscode == 0, reply.statusmsg
    assert reply.data["killed"] is True and reply.data["signal"] == "SIGTERM"
    assert reply.data["process"]["pid"] == victim.pid
    assert marker in reply.data["process"]["cmdline"]
    assert victim.wait(timeout=10) == -signal.SIGTERM
    assert not psutil.pid_exists(victim.pid)


def test_kill_with_kill_by_number_and_default_signal(node, spawn, marker):
    victim, other = spawn(marker), spawn(marker + "-2")
    n = node()
    assert n.call("process", "kill", pid=victim.pid, signal="9").statuscode == 0
    assert victim.wait(timeout=10) == -signal.SIGKILL
    reply = n.call("process", "kill", pid=other.pid)
    assert reply.statuscode == 0 and reply.data["signal"] == "SIGTERM"
    assert other.wait(timeout=10) == -signal.SIGTERM


def test_stop_and_cont(node, spawn, marker):
    victim = spawn(marker)
    n = node()
    assert n.call("process", "kill", pid=victim.pid, signal="SIGSTOP").statuscode == 0
    deadline = time.monotonic() + 10
    while psutil.Process(victim.pid).status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
        time.sleep(0.02)
    assert psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED
    assert n.call("process", "kill", pid=victim.pid, signal="CONT").statuscode == 0
    deadline = time.monotonic() + 10
    while psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED and time.monotonic() < deadline:
        time.sleep(0.02)
    assert psutil.Process(victim.pid).status() != psutil.STATUS_STOPPED


def test_kill_refuses_pid_1(node):
    reply = node().call("process", "kill", pid=1, signal="KILL")
    assert reply.statuscode == 4
    assert psutil.pid_exists(1)


def test_kill_refuses_the_daemon_itself_and_its_ancestors(node):
    n = node()
    me = n.call("process", "kill", pid=os.getpid(), signal="TERM")
    assert me.statuscode == 1 and "daemon itself" in me.statusmsg
    parent = n.call("process", "kill", pid=os.getppid(), signal="TERM")
    assert parent.statuscode == 1 and "ancestor" in parent.statusmsg


def test_kill_refuses_a_thread_of_the_daemon(node):
    ready, done = threading.Event(), threading.Event()
    holder = {}

    def run():
        holder["tid"] = threading.get_native_id()
        ready.set()
        done.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert ready.wait(10)
        reply = node().call("process", "kill", pid=holder["tid"], signal="TERM")
        assert reply.statuscode == 1 and "daemon itself" in reply.statusmsg
    finally:
        done.set()
        thread.join(10)


def test_kill_refuses_a_thread_id_of_another_process(node, spawn, marker):
    code = ("import threading, time\n"
            "t = threading.Thread(target=lambda: (print(threading.get_native_id(), flush=True), "
            "time.sleep(300)), daemon=True)\n"
            "t.start(); time.sleep(300)\n")
    proc = spawn(marker, code=code, stdout=subprocess.PIPE)
    tid = int(proc.stdout.readline())
    reply = node().call("process", "kill", pid=tid, signal="KILL")
    assert reply.statuscode == 1 and f"thread of process {proc.pid}" in reply.statusmsg
    assert proc.poll() is None


def test_kill_refuses_other_users_unless_configured(node, spawn, marker):
    require(IS_ROOT, "starting a process as another user needs root")
    theirs = spawn(marker, user="nobody")
    refused = node().call("process", "kill", pid=theirs.pid, signal="KILL")
    assert refused.statuscode == 1 and "belongs to user nobody" in refused.statusmsg
    assert theirs.poll() is None
    allowed = node(kill_users=["nobody"]).call("process", "kill", pid=theirs.pid, signal="KILL")
    assert allowed.statuscode == 0 and allowed.data["killed"] is True
    assert theirs.wait(timeout=10) == -signal.SIGKILL


def test_kill_of_a_missing_process_is_aborted(node, spawn, marker):
    gone = spawn(marker)
    gone.kill()
    gone.wait(timeout=10)
    reply = node().call("process", "kill", pid=gone.pid, signal="TERM")
    assert reply.statuscode == 1 and f"No such process: {gone.pid}" in reply.statusmsg
    assert reply.data["killed"] is False


@pytest.mark.parametrize(("error", "message"), [
    (psutil.NoSuchProcess(1234), "exited before the signal"),
    (psutil.AccessDenied(1234), "Permission denied sending SIGTERM"),
])
def test_kill_races_become_status_1(node, spawn, marker, monkeypatch, error, message):
    victim = spawn(marker)

    def boom(self, sig):
        raise error

    monkeypatch.setattr(psutil.Process, "send_signal", boom)
    reply = node().call("process", "kill", pid=victim.pid)
    assert reply.statuscode == 1 and message in reply.statusmsg
    assert victim.poll() is None


def test_missing_psutil_is_a_clear_status_1(node, monkeypatch):
    n = node()
    monkeypatch.setitem(sys.modules, "psutil", None)
    for action, data in (("list", {}), ("kill", {"pid": 4242})):
        reply = n.call("process", action, **data)
        assert reply.statuscode == 1
        assert "psutil not found on this node" in reply.statusmsg


# -- injection (docs/security.md S8) -----------------------------------------------------------------


def injections(pwn):
    return [
        f"x; touch {pwn}", f"x\ntouch {pwn}", f"$(touch {pwn})", f"`touch {pwn}`",
        f"x & touch {pwn}", f"x | touch {pwn} > {pwn}", f"-oDpkg::Pre-Invoke::=touch {pwn}",
        "--help", "x" * 10240, "caf\u00e9", "x\x00y", "${IFS}", "'quoted'", "x\ty",
    ]


@pytest.fixture
def spies(monkeypatch):
    """Record any process scan, regex matcher run or signal."""
    calls = []
    real_iter = psutil.process_iter

    def spy_iter(*a, **k):
        calls.append("process_iter")
        return real_iter(*a, **k)

    monkeypatch.setattr(psutil, "process_iter", spy_iter)
    monkeypatch.setattr(agent_module, "run_matcher", lambda *a: calls.append("matcher") or [])
    monkeypatch.setattr(psutil.Process, "send_signal", lambda self, sig: calls.append("signal"))
    monkeypatch.setattr(os, "kill", lambda *a: calls.append("os.kill"))
    return calls


@pytest.mark.parametrize("regex", [False, True])
def test_injection_in_pattern_is_refused(node, tmp_path, spies, regex):
    pwn = tmp_path / "pwn"
    n = node()
    for value in injections(pwn):
        if value == f"x | touch {pwn} > {pwn}":
            value = f"x > {pwn}"  # "|" is regex alternation and allowed; ">" is not
        reply = n.call("process", "list", pattern=value, regex=regex)
        assert reply.statuscode == 4, (value, reply.statusmsg)
        assert "process_pattern" in reply.statusmsg or "longer than" in reply.statusmsg
    assert not pwn.exists()
    assert spies == []


def test_injection_in_user_is_refused(node, tmp_path, spies):
    pwn = tmp_path / "pwn"
    n = node()
    for value in [*injections(pwn), "../../etc/passwd", "root bin", ""]:
        reply = n.call("process", "list", user=value)
        assert reply.statuscode == 4, (value, reply.statusmsg)
    assert not pwn.exists()
    assert spies == []


def test_injection_in_kill_is_refused(node, tmp_path, spies):
    pwn = tmp_path / "pwn"
    n = node()
    for value in [*injections(pwn), "SEGV", "0", "64", "term "]:
        reply = n.call("process", "kill", pid=4242, signal=value)
        assert reply.statuscode == 4, (value, reply.statusmsg)
    for value in [f"1; touch {pwn}", f"$(touch {pwn})", "4242\n", -1, 0, 1, 4194305, 2.5, True,
                  [4242]]:
        reply = n.call("process", "kill", pid=value, signal="TERM")
        assert reply.statuscode == 4, (value, reply.statusmsg)
    assert not pwn.exists()
    assert spies == []


def test_no_tool_from_path_is_ever_run(node, spawn, marker, tmp_path, monkeypatch):
    """Stubs of every tool a process agent might shell out to, first on PATH, log their argv;
    the agent lists (literal and regex) and kills without running any of them."""
    log = tmp_path / "argv.log"
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for tool in ("ps", "pgrep", "pkill", "kill", "sh", "bash", "python", "python3", "grep"):
        stub = stubs / tool
        stub.write_text(f"#!/bin/sh\necho \"{tool} $*\" >> {log}\n")
        stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ.get('PATH', '')}")
    victim = spawn(marker)
    n = node()
    assert pids(n.call("process", "list", pattern=marker)) == [victim.pid]
    assert pids(n.call("process", "list", pattern=f"^.*{marker}$", regex=True)) == [victim.pid]
    assert n.call("process", "kill", pid=victim.pid).statuscode == 0
    assert victim.wait(timeout=10) == -signal.SIGTERM
    assert not log.exists(), log.read_text()
