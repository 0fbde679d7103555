"""End to end: the audit log of real daemons (docs/security.md S17): one JSON line per decision in a
0600 file, rotation on SIGUSR1, the syslog sink over UDP, and fail-closed refusing
side-effecting requests while pings still answer."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from collective.audit import data_sha256
from collective.client import Client
from collective.config import load_config
from collective.fleet import fleet_down, fleet_up, wait_for_nodes

ISO_MS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(scope="module")
def syslog_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, syslog_listener):
    directory = tmp_path_factory.mktemp("auditfleet")
    port = syslog_listener.getsockname()[1]
    started = fleet_up(directory, nodes=2, extra_server_config={
        "audit": {"sinks": ["jsonl", "syslog"], "syslog_address": f"127.0.0.1:{port}",
                  "syslog_facility": "local5"},
        "plugins": {"canary": {"log": str(directory / "canary.log")}},
    })
    yield started
    fleet_down(directory)


def mco(fleet, *args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def audit_path(fleet, identity):
    return fleet.directory / "nodes" / identity / "audit.jsonl"


def audit_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, deadline=10.0, pause=0.1):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(pause)


def find_line(path, digest):
    """The audit line in ``path`` for the request whose data hashes to ``digest``."""
    def found():
        return [r for r in audit_lines(path) if r["data_sha256"] == digest]

    lines = wait_for(found)
    assert len(lines) == 1, f"expected one audit line for {digest} in {path}: {lines}"
    return lines[0]


def syslog_line(listener, digest, deadline=10.0):
    """The syslog datagram for the request whose data hashes to ``digest``."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        listener.settimeout(max(0.01, end - time.monotonic()))
        try:
            datagram = listener.recv(65536)
        except TimeoutError:
            break
        match = re.fullmatch(rb"<(\d+)>collective-audit: (\{.*\})", datagram)
        assert match, datagram
        if json.loads(match[2])["data_sha256"] == digest:
            return int(match[1]), match[2].decode()
    raise AssertionError(f"no syslog line for {digest}")


def marker():
    return f"audit_{uuid.uuid4().hex[:12]}"


def test_allowed_request_is_one_line_in_a_0600_file_and_in_syslog(fleet, syslog_listener):
    fact = marker()
    code, out, err = mco(fleet, "rpc", "rpcutil", "get_fact", f"fact={fact}", "-I", "node-001",
                         "--json")
    assert code == 0, err
    path = audit_path(fleet, "node-001")
    record = find_line(path, data_sha256({"fact": fact}))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert re.fullmatch(ISO_MS, record.pop("time"))
    assert re.fullmatch(r"[0-9a-f-]{16,}", record.pop("request_id"))
    assert re.fullmatch(r"[0-9a-f]{64}", record.pop("prev_sha256"))  # the chain (mco audit verify)
    assert record == {
        "caller": "cert=admin", "agent": "rpcutil", "action": "get_fact", "node": "node-001",
        "decision": "allow", "reason": "authorized", "statuscode": None,
        "data_sha256": data_sha256({"fact": fact}), "collective": "mcollective",
        "sender": "admin-client",
    }
    assert fact not in path.read_text()  # only the digest of the data is written
    other = audit_lines(audit_path(fleet, "node-002"))  # addressed to node-001 only
    assert record["data_sha256"] not in {r["data_sha256"] for r in other}

    pri, line = syslog_line(syslog_listener, record["data_sha256"])
    assert pri == 21 * 8 + 6  # local5.info
    [file_line] = [raw for raw in path.read_text().splitlines()
                   if json.loads(raw)["data_sha256"] == record["data_sha256"]]
    # the same JSON in both sinks; the file's line also carries the hash chain
    assert json.loads(line) == {k: v for k, v in json.loads(file_line).items() if k != "prev_sha256"}


def test_refused_request_is_audited_with_its_status(fleet, syslog_listener):
    data = {"fact": marker(), "undeclared": True}
    with Client(load_config(fleet.client_config)) as client:  # bypasses client-side validation
        result = client.request("rpcutil", "get_fact", data, targets=["node-002"], timeout=10)
    [reply] = result.replies
    assert reply.statuscode == 4
    record = find_line(audit_path(fleet, "node-002"), data_sha256(data))
    assert (record["decision"], record["reason"], record["statuscode"]) == ("refused", "invalid_data", 4)
    assert (record["agent"], record["action"], record["node"]) == ("rpcutil", "get_fact", "node-002")
    assert record["caller"] == "cert=admin" and record["request_id"]
    pri, _ = syslog_line(syslog_listener, record["data_sha256"])
    assert pri == 21 * 8 + 4  # local5.warning


def test_sigusr1_reopens_the_audit_file_after_rotation(fleet):
    path = audit_path(fleet, "node-001")
    rotated = path.with_name("audit.jsonl.1")
    before = marker()
    assert mco(fleet, "rpc", "rpcutil", "get_fact", f"fact={before}", "-I", "node-001")[0] == 0
    find_line(path, data_sha256({"fact": before}))
    os.rename(path, rotated)
    os.kill(fleet.pids["node-001"], signal.SIGUSR1)
    assert wait_for(path.exists), "SIGUSR1 did not reopen the audit file"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    after = marker()
    code, _, err = mco(fleet, "rpc", "rpcutil", "get_fact", f"fact={after}", "-I", "node-001")
    assert code == 0, err
    find_line(path, data_sha256({"fact": after}))
    assert [r["data_sha256"] for r in audit_lines(path)] == [data_sha256({"fact": after})]
    assert data_sha256({"fact": before}) in {r["data_sha256"] for r in audit_lines(rotated)}
    assert data_sha256({"fact": after}) not in {r["data_sha256"] for r in audit_lines(rotated)}


# -- fail-closed ---------------------------------------------------------------------

def _alive(pid):
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def closed_fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("failclosed")
    (directory / "a-file").write_text("")  # the audit file's directory is a file: never opens
    started = fleet_up(directory, nodes=1, extra_server_config={
        "audit": {"file": str(directory / "a-file" / "audit.jsonl"), "fail_closed": True},
        "plugins": {"canary": {"log": str(directory / "canary.log")}},
    })
    restarted = []
    yield started, restarted
    fleet_down(directory)
    for proc in restarted:
        proc.wait(timeout=15)


def restart_node(fleet, identity, restarted, **audit):
    """Stop ``identity``, change its ``audit`` section, start it again (same key, dir, identity)."""
    pid = fleet.pids[identity]
    os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not _alive(pid), deadline=15), f"{identity} did not stop"
    node_dir = fleet.directory / "nodes" / identity
    config = yaml.safe_load((node_dir / "server.yaml").read_text())
    config["audit"].update(audit)
    (node_dir / "server.yaml").write_text(yaml.safe_dump(config))
    with open(node_dir / "stdout.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "collective.server.main", "-c",
                                 str(node_dir / "server.yaml")], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=node_dir)
    restarted.append(proc)
    fleet.pids[identity] = proc.pid
    fleet.save()  # so fleet_down stops the new process
    wait_for_nodes(fleet, 60)


def canary_run(fleet):
    _, out, err = mco(fleet, "rpc", "canary", "run", "marker=failclosed", "-I", "node-001", "--json")
    assert out, err
    [reply] = json.loads(out)
    return reply


def test_fail_closed_refuses_side_effects_but_still_answers_pings(closed_fleet):
    fleet, restarted = closed_fleet
    canary_log = fleet.directory / "canary.log"
    reply = canary_run(fleet)
    assert reply["statuscode"] == 1 and "audit unavailable" in reply["statusmsg"]
    assert not canary_log.exists() or canary_log.read_text() == ""

    code, out, err = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["statuscode"] == 0
    code, out, _ = mco(fleet, "ping")
    assert code == 0 and "node-001" in out
    log_text = (fleet.directory / "nodes" / "node-001" / "collectived.log").read_text()
    assert "cannot open audit file" in log_text and "audit sink jsonl failed to write" in log_text

    # the same node with fail_closed false carries on without its audit file
    restart_node(fleet, "node-001", restarted, fail_closed=False)
    reply = canary_run(fleet)
    assert reply["statuscode"] == 0 and reply["data"]["ran"] is True
    assert canary_log.read_text().startswith("run failclosed node-001 ")


def test_fail_closed_with_a_dead_syslog_refuses_too(tmp_path_factory, tmp_path):
    directory = tmp_path_factory.mktemp("syslogclosed")
    started = fleet_up(directory, nodes=1, extra_server_config={
        "audit": {"sinks": ["jsonl", "syslog"], "syslog_address": str(tmp_path / "no-syslog"),
                  "fail_closed": True},
        "plugins": {"canary": {"log": str(directory / "canary.log")}},
    })
    try:
        reply = canary_run(started)
        assert reply["statuscode"] == 1 and "audit unavailable" in reply["statusmsg"]
        assert not (directory / "canary.log").exists()
        # the jsonl sink still wrote its line: one failing sink is enough to refuse
        lines = audit_lines(audit_path(started, "node-001"))
        # the attempt, then the refusal, in the sink that still works
        assert [(r["agent"], r["decision"], r["reason"]) for r in lines
                if r["agent"] != "discovery"] == [
            ("canary", "allow", "authorized"), ("canary", "refused", "audit_unavailable")]
    finally:
        fleet_down(directory)
