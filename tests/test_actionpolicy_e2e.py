"""End to end: a real fleet (embedded broker + 3 collectived processes) authorizing with
collective-auth-actionpolicy, driven by the real `mco` as two clients, admin and bob
(docs/security.md S6, S7a, S17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from collective.fleet import fleet_down, fleet_up

T = "\t"
POLICY = (
    "policy default deny\n"
    f"allow{T}cert=admin{T}*{T}*{T}*\n"
    f"allow{T}cert=bob{T}ping{T}*{T}*\n"
    f"allow{T}cert=bob{T}get_fact{T}role=db{T}*\n"
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("apfleet")
    policies = tmp_path_factory.mktemp("policies")
    (policies / "rpcutil.policy").write_text(POLICY)
    started = fleet_up(directory, nodes=3, clients=["admin", "bob"], extra_server_config={
        "authorization": {"provider": "actionpolicy"},
        "plugins": {"actionpolicy": {"policy_dir": str(policies)}},
    })
    started.policies = policies
    yield started
    fleet_down(directory)


def mco(fleet, client, *args, timeout=60):
    config = fleet.client_config_for(client)
    proc = subprocess.run([sys.executable, "-m", "collective", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def audit(fleet, node="node-001"):
    path = fleet.directory / "nodes" / node / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_fleet_has_one_config_per_client(fleet):
    assert fleet.client_config_for("admin") == fleet.directory / "client.yaml"
    assert fleet.client_config_for("bob") == fleet.directory / "client-bob.yaml"
    assert (fleet.directory / "trust" / "clients" / "bob.pub").exists()


def test_admin_may_call_everything(fleet):
    code, out, err = mco(fleet, "admin", "rpc", "rpcutil", "inventory", "-I", "node-001")
    assert code == 0, out + err
    assert "not authorized" not in out
    assert "Finished processing 1 / 1 hosts" in out


def test_bob_is_denied_inventory_with_status_1_and_an_audit_line(fleet):
    code, out, _ = mco(fleet, "bob", "rpc", "rpcutil", "inventory", "-I", "node-001", "--json")
    replies = json.loads(out)
    assert [(r["sender"], r["statuscode"]) for r in replies] == [("node-001", 1)]
    assert replies[0]["statusmsg"] == "You are not authorized to call this agent or action."
    assert code == 2
    code, out, _ = mco(fleet, "bob", "rpc", "rpcutil", "inventory", "-I", "node-001")
    assert code == 2 and "You are not authorized" in out
    denied = [a for a in audit(fleet) if a["caller"] == "cert=bob" and a["action"] == "inventory"]
    assert denied and all(a["decision"] == "deny" and a["statuscode"] == 1 for a in denied)
    assert "rpcutil.policy:1: policy default deny" in denied[-1]["reason"]


def test_bob_may_ping(fleet):
    code, out, err = mco(fleet, "bob", "rpc", "rpcutil", "ping", "--dt", "1")
    assert code == 0, out + err
    assert "Finished processing 3 / 3 hosts" in out
    allowed = [a for a in audit(fleet) if a["caller"] == "cert=bob" and a["action"] == "ping"]
    assert allowed and allowed[-1]["decision"] == "allow"


def test_filter_evasion_does_not_matter_policy_uses_node_facts(fleet):
    """S7a: a filter that mentions role=db but selects every node (`-S "role=db or
    true"`-style; in our grammar `true` is a class, so the tautology is spelled out)
    reaches all three nodes, but only the db node's own facts satisfy `role=db`."""
    code, out, _ = mco(fleet, "bob", "rpc", "rpcutil", "get_fact", "fact=role",
                       "-S", "role=db or not role=db", "--dt", "1", "--json")
    replies = {r["sender"]: r for r in json.loads(out)}
    assert sorted(replies) == ["node-001", "node-002", "node-003"]   # the filter matched all
    assert replies["node-002"]["statuscode"] == 0                    # role=db
    assert replies["node-002"]["data"]["value"] == "db"
    for node in ("node-001", "node-003"):
        assert replies[node]["statuscode"] == 1
        assert replies[node]["statusmsg"].startswith("You are not authorized")
    assert code == 2


def test_policy_change_applies_without_restart(fleet):
    path = fleet.policies / "rpcutil.policy"
    path.write_text("policy default deny\n"
                    f"deny{T}cert=bob{T}*{T}*{T}*\n"
                    f"allow{T}cert=admin{T}*{T}*{T}*\n")
    st = path.stat()  # a new mtime even on coarse-mtime filesystems
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    deadline = time.monotonic() + 5
    while True:
        code, out, _ = mco(fleet, "bob", "rpc", "rpcutil", "ping", "-I", "node-001", "--json")
        replies = json.loads(out)
        if replies and replies[0]["statuscode"] == 1:
            break
        assert time.monotonic() < deadline, f"bob's ping still allowed after the change: {out}"
        time.sleep(0.2)
    assert replies[0]["statusmsg"] == "You are not authorized to call this agent or action."
    denied = [a for a in audit(fleet) if a["caller"] == "cert=bob" and a["action"] == "ping"]
    assert denied[-1]["decision"] == "deny"
    assert f"rpcutil.policy:2: deny{T}cert=bob" in denied[-1]["reason"]
    code, out, err = mco(fleet, "admin", "rpc", "rpcutil", "ping", "-I", "node-001")
    assert code == 0, out + err
