"""Safe by default, on real daemons: default deny without a policy (and a loud opt-out),
the fleet's policy for its own keys, a hash-chained audit log that `mco audit verify`
checks, log lines request text cannot forge, and no working directory on sys.path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collective.client import Client
from collective.config import load_config
from collective.fleet import fleet_down, fleet_up


def mco(fleet, *args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(fleet.client_config)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def node_file(fleet, name, node="node-001"):
    return Path(fleet.directory) / "nodes" / node / name


@pytest.fixture
def unconfigured(tmp_path):
    """A node whose config has no authorization provider (the old default)."""
    fleet = fleet_up(tmp_path / "fleet", nodes=1, extra_server_config={
        "authorization": {"provider": None}})
    yield fleet
    fleet_down(tmp_path / "fleet", quiet=True)


def test_without_a_policy_the_node_denies_everything_but_answers_discovery(unconfigured):
    fleet = unconfigured
    code, out, _ = mco(fleet, "rpc", "rpcutil", "inventory", "-I", "node-001")
    assert code == 2
    assert "You are not authorized to call this agent or action." in out
    code, out, _ = mco(fleet, "ping")
    assert code == 0 and out.startswith("node-001")
    records = [json.loads(line) for line in node_file(fleet, "audit.jsonl").read_text().splitlines()]
    denied = [r for r in records if r.get("agent") == "rpcutil"]
    assert denied and denied[-1]["decision"] == "deny"
    assert denied[-1]["reason"].startswith("no authorization configured: default deny")
    assert "every request is denied" in node_file(fleet, "collectived.log").read_text()


def test_allow_unconfigured_is_explicit_and_loud(tmp_path):
    fleet = fleet_up(tmp_path / "fleet", nodes=1, extra_server_config={
        "authorization": {"provider": None, "allow_unconfigured": True}})
    try:
        code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001")
        assert code == 0, out
        log = node_file(fleet, "collectived.log").read_text()
        assert "INSECURE: authorization.allow_unconfigured is true" in log
    finally:
        fleet_down(tmp_path / "fleet", quiet=True)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("safe")
    # a module in the node's working directory that would break the daemon if imported
    marker = directory / "imported-from-cwd"
    node_dir = directory / "nodes" / "node-001"
    node_dir.mkdir(parents=True)
    (node_dir / "yaml.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      "raise ImportError('the cwd was on sys.path')\n")
    started = fleet_up(directory, nodes=1, clients=["admin", "outsider"],
                       extra_server_config={"audit": {"file": "audit.jsonl"}})
    started.marker = marker
    yield started
    fleet_down(directory, quiet=True)


def test_the_working_directory_is_not_on_sys_path(fleet, tmp_path):
    assert not fleet.marker.exists()  # the fleet's daemon and broker started with -P
    code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001")
    assert code == 0, out
    collectived = Path(sys.executable).parent / "collectived"
    (tmp_path / "yaml.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w').close()\n")
    check = subprocess.run([str(collectived), "--check", "-c",
                            str(node_file(fleet, "server.yaml"))], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert not (tmp_path / "marker").exists()


def test_the_fleet_allows_its_own_keys_only(fleet):
    config = node_file(fleet, "server.yaml").read_text()
    assert "provider: callers" in config
    code, _, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001")
    assert code == 0


def test_the_audit_log_is_a_chain_that_mco_audit_verify_checks(fleet):
    for _ in range(3):
        assert mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001")[0] == 0
    audit = node_file(fleet, "audit.jsonl")
    deadline = time.monotonic() + 10
    while len(audit.read_text().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    verify = subprocess.run([sys.executable, "-m", "collective", "audit", "verify", str(audit)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "chain intact" in verify.stdout
    copy = audit.parent / "tampered.jsonl"
    lines = audit.read_text().splitlines()
    lines[1] = lines[1].replace('"allow"', '"deny"')
    copy.write_text("\n".join(lines) + "\n")
    broken = subprocess.run([sys.executable, "-m", "collective", "audit", "verify", str(copy)],
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1
    assert broken.stdout.startswith(f"{copy}:3: chain broken")


def test_request_text_cannot_forge_a_daemon_log_line(fleet):
    """A signed request whose filter is unusable (an identity regex with a newline and an
    escape sequence in it): the node logs why it ignores it, on one escaped line."""
    from collective.connectors.destinations import Destination
    from collective.connectors.stomp import StompConnector
    from collective.message import RequestMessage
    from collective.security.ed25519 import Ed25519Provider

    forged = "2030-01-01 00:00:00,000 INFO collective.server.daemon: ALL ALLOWED"
    config = load_config(fleet.client_config)
    # signed with the fleet's own key, but a filter the client library would refuse
    request = RequestMessage.new(
        sender="admin-client", caller="cert=admin", collective="mcollective", agent="rpcutil",
        action="ping", data={}, filter={"identity": [f"/(\n{forged}\x1b[2J/"]}, ttl=60,
        reply_to=Destination.reply("mcollective", "admin.forge").logical(), targets=None)
    wire = Ed25519Provider(config, role="client").sign(request.to_body(), "request")
    raw = StompConnector(config, client_id="raw-forger")
    raw.connect(timeout=10)
    try:
        raw.publish(Destination.broadcast("mcollective", "rpcutil"), wire)
    finally:
        raw.disconnect()
    with Client(config) as client:  # the node still serves
        assert [r.sender for r in client.ping(expected=["node-001"], timeout=5)] == ["node-001"]
    log = node_file(fleet, "collectived.log")
    deadline = time.monotonic() + 10
    while "unusable filter" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = log.read_text()
    assert f"\\n{forged}\\x1b[2J" in text  # the text was logged, escaped
    assert not any(line.startswith(forged) for line in text.splitlines())
    assert "\x1b" not in text
