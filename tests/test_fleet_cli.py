"""End to end: a real fleet (embedded broker + 3 collectived processes) driven by the real `mco`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collective.fleet import BrokerSpec, fleet_down, fleet_up


@pytest.fixture(scope="module", params=["embedded", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
                                        pytest.param("activemq", marks=pytest.mark.activemq)])
def fleet(request, tmp_path_factory):
    """Three real collectived processes on the embedded broker, on RabbitMQ's STOMP plugin
    or on ActiveMQ."""
    spec = None
    if request.param == "rabbitmq":
        rmq = request.getfixturevalue("collective_rabbitmq")
        spec = BrokerSpec(flavour="rabbitmq", port=rmq.stomp_port, user=rmq.user,
                          password=rmq.password, vhost=rmq.vhost)
    elif request.param == "activemq":
        amq = request.getfixturevalue("collective_activemq")
        spec = BrokerSpec(flavour="activemq", port=amq.stomp_port, user=amq.user,
                          password=amq.password)
    directory = tmp_path_factory.mktemp("fleet")
    canary_log = directory / "canary.log"
    started = fleet_up(directory, nodes=3, broker=spec, extra_server_config={
        "plugins": {"canary": {"log": str(canary_log)}}})
    yield started
    fleet_down(directory)


def mco(fleet, *args, timeout=60, config=True):
    """Run the real `mco` against the fleet; return (exit status, stdout, stderr)."""
    extra = ["-c", str(fleet.client_config)] if config else []
    proc = subprocess.run([sys.executable, "-m", "collective", *args, *extra],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("command", [["ping"], ["plugin", "doc", "rpcutil"],
                                     ["rpc", "rpcutil", "ping"], ["facts", "role"]])
def test_config_may_come_before_the_command(fleet, command):
    config = str(fleet.client_config)
    code, out, err = mco(fleet, "-c", config, *command, "--dt", "1", config=False) \
        if command[0] != "plugin" else mco(fleet, "-c", config, *command, config=False)
    assert code == 0, out + err
    # and after it wins over before it
    code, out, err = mco(fleet, "-c", "/nonexistent/client.yaml", *command, "-c", config,
                         config=False)
    assert code == 0, out + err


def test_ping_lists_every_node_with_its_time(fleet):
    code, out, _ = mco(fleet, "ping")
    assert code == 0
    lines = [line.split() for line in out.splitlines() if line.startswith("node-")]
    assert sorted(parts[0] for parts in lines) == ["node-001", "node-002", "node-003"]
    assert all(parts[1].startswith("time=") and parts[2] == "ms" for parts in lines)
    assert "---- ping statistics ----" in out
    assert "3 replies max:" in out


def test_ping_graph_draws_the_reply_times(fleet):
    code, out, err = mco(fleet, "ping", "--graph")
    assert code == 0, err
    graph = out.rstrip("\n").splitlines()[-1]
    assert graph and set(graph) <= set("▁▂▃▄▅▆▇"), out
    assert out.splitlines()[-3].startswith("3 replies max:")


def test_ping_with_identities_ends_as_soon_as_they_answer(fleet):
    started = time.monotonic()
    code, out, _ = mco(fleet, "ping", "-I", "node-001", "-I", "node-003", "--dt", "10")
    assert code == 0
    assert time.monotonic() - started < 5, "direct ping waited for the 10 s discovery timeout"
    assert "2 replies" in out


@pytest.mark.parametrize(("filters", "expected"), [
    (["-F", "role=web"], ["node-001"]),
    (["-F", "os.family=debian"], ["node-001", "node-003"]),
    (["-F", "index>=2"], ["node-002", "node-003"]),
    (["-F", "role!=web"], ["node-002", "node-003"]),
    (["-F", "role=/^(db|cache)$/"], ["node-002", "node-003"]),
    (["-C", "role::db"], ["node-002"]),
    (["-C", "/^role::c/"], ["node-003"]),
    (["-I", "node-001", "-I", "node-002"], ["node-001", "node-002"]),
    (["-I", "/node-00[23]/"], ["node-002", "node-003"]),
    (["-A", "canary"], ["node-001", "node-002", "node-003"]),
    (["-A", "nosuchagent"], []),
    (["-A", "mcollective"], ["node-001", "node-002", "node-003"]),  # the pseudo-agent
    (["-W", "base role=cache"], ["node-003"]),
    (["-F", "location=uk", "-F", "role=db"], ["node-002"]),
])
def test_find_filters(fleet, filters, expected):
    code, out, _ = mco(fleet, "find", *filters, "--dt", "1")
    assert out.split() == expected
    assert code == (0 if expected else 1)


def test_bad_fact_filter_is_one_clear_line(fleet):
    code, out, err = mco(fleet, "find", "-F", "uk")
    assert code == 1
    assert "Could not parse fact" in err
    assert "Traceback" not in err


def test_rpc_prints_nodes_summary_and_finished_line(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "get_fact", "fact=role", "--dt", "1")
    assert code == 0
    for node in ("node-001", "node-002", "node-003"):
        assert node in out
    assert "Summary of Value:" in out
    assert "web = 1" in out
    assert "Finished processing 3 / 3 hosts in" in out


@pytest.mark.parametrize("spelling", [
    ["--agent", "rpcutil", "--action", "get_fact", "--arg", "fact=role"],
    ["--agent=rpcutil", "--action=get_fact", "--argument=fact=role"],
    ["rpcutil", "--action", "get_fact", "fact=role"],
    ["--agent", "rpcutil", "get_fact", "--arg", "fact=role"],
])
def test_rpc_takes_mcollectives_agent_action_arg_spellings(fleet, spelling):
    code, out, err = mco(fleet, "rpc", *spelling, "-I", "node-001")
    assert code == 0, out + err
    assert "Summary of Value:" in out and "web = 1" in out


def test_rpc_without_an_action_is_a_usage_error(fleet):
    code, _, err = mco(fleet, "rpc", "--agent", "rpcutil", "fact=role")
    assert code == 2 and "give an agent and an action" in err


def test_rpc_direct_addressing_needs_no_discovery(fleet):
    started = time.monotonic()
    code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-002", "--dt", "10")
    assert code == 0
    assert "Finished processing 1 / 1 hosts" in out
    assert time.monotonic() - started < 5


def test_rpc_no_response_from_missing_node(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001", "-I", "nosuchnode", "-t", "1")
    assert "Finished processing 1 / 2 hosts" in out
    assert "No response from:" in out and "nosuchnode" in out
    assert code == 2


def test_rpc_json_output(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "collective_info", "--json", "--dt", "1")
    assert code == 0
    replies = json.loads(out)
    assert sorted(r["sender"] for r in replies) == ["node-001", "node-002", "node-003"]
    assert all(r["statuscode"] == 0 and r["data"]["main_collective"] == "mcollective" for r in replies)


def test_rpc_invalid_input_is_refused_before_sending(fleet):
    code, _, err = mco(fleet, "rpc", "rpcutil", "get_fact", "fact=a;b", "-I", "node-001")
    assert code == 1
    assert "fact" in err and "Traceback" not in err
    code, _, err = mco(fleet, "rpc", "rpcutil", "get_fact", "nosuch=1", "-I", "node-001")
    assert code == 1 and "not declared in the DDL" in err


def test_rpc_failing_action_sets_exit_status(fleet):
    code, out, _ = mco(fleet, "rpc", "canary", "fail", "-I", "node-001")
    assert code == 2
    assert "Unknown Request Status" in out


def test_get_config_item_never_returns_secrets(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "get_config_item", "item=security.private_key",
                       "-I", "node-001")
    assert code == 2
    assert "Request Aborted" in out
    assert ".key" not in out


def test_inventory(fleet):
    code, out, _ = mco(fleet, "inventory", "node-002")
    assert code == 0
    assert "Inventory for node-002:" in out
    assert "canary" in out and "rpcutil" in out
    assert "role => db" in out
    assert "os.family => redhat" in out
    assert "role::db" in out


def test_inventory_lists_collectives_and_draws_their_graph(fleet, tmp_path):
    code, out, err = mco(fleet, "inventory", "--list-collectives", "--dt", "1")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert ["Collective", "Nodes"] in rows and ["mcollective", "3"] in rows
    assert ["Total", "nodes:", "3"] in rows
    dot = tmp_path / "collectives.dot"
    code, out, err = mco(fleet, "inventory", "--collective-graph", str(dot), "--dt", "1")
    assert code == 0, err
    assert dot.read_text().splitlines() == ["graph {", *(f'   "mcollective" -- "node-00{i}";'
                                                        for i in (1, 2, 3)), "}"]


def test_inventory_script_reports_every_matching_node(fleet, tmp_path):
    script = tmp_path / "report.py"
    script.write_text('inventory(format="%s:\\t%s\\t%d agents",\n'
                      '          fields=lambda node: [node.identity, node.facts["role"],'
                      ' len(node.agents)])\n')
    code, out, err = mco(fleet, "inventory", "--script", str(script), "-F", "role=/^(db|web)$/",
                         "--dt", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["node-001:", "web"], ["node-002:", "db"]]
    assert all(line.endswith(" agents") for line in lines)
    script.write_text("print('no report here')\n")
    code, _, err = mco(fleet, "inventory", "--script", str(script))
    assert code == 1 and "no inventory(format=..., fields=...) report" in err


def test_facts_report(fleet):
    code, out, _ = mco(fleet, "facts", "role", "--dt", "1")
    assert code == 0
    assert "Report for fact: role" in out
    assert out.count("found 1 times") == 3
    assert "without fact" not in out


def test_facts_lists_the_nodes_lacking_the_fact_apart(fleet):
    code, out, err = mco(fleet, "facts", "nosuchfact", "--dt", "1")
    assert code == 0, err
    assert "found" not in out  # no empty value "found 3 times"
    lines = out.splitlines()
    at = lines.index("Nodes without fact nosuchfact: 3")
    assert [line.strip() for line in lines[at + 2:at + 5]] == ["node-001", "node-002", "node-003"]
    code, out, err = mco(fleet, "facts", "nosuchfact", "--dt", "1", "--json")
    assert code == 0 and json.loads(out) == {}
    assert "Nodes without fact nosuchfact: node-001, node-002, node-003" in err


def test_plugin_list_and_doc(fleet):
    code, out, _ = mco(fleet, "plugin", "list", config=False)
    assert code == 0 and "test-canary" in out and "ok" in out
    code, out, _ = mco(fleet, "plugin", "doc", "rpcutil", config=False)
    assert code == 0
    assert "get_fact action:" in out and "Display As: Value" in out


def test_node_logs_and_audit_exist(fleet):
    node_dir = Path(fleet.directory) / "nodes" / "node-001"
    audit = node_dir / "audit.jsonl"
    assert audit.exists()
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(line["agent"] == "rpcutil" and line["decision"] == "allow" for line in lines)
