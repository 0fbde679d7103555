"""Orchestration and results on a real fleet: batches, sliding windows, limits,
fire-and-forget, --reply-to, chaining, --jsonl, --display, exit codes, completion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from collective.fleet import fleet_down, fleet_up

NODES = ["node-001", "node-002", "node-003", "node-004"]  # roles: web, db, cache, web


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("orchestration")
    started = fleet_up(directory, nodes=4, extra_server_config={
        "plugins": {"canary": {"log": str(directory / "canary.log")}}})
    started.canary = directory / "canary.log"
    yield started
    fleet_down(directory)


def mco(fleet, *args, stdin=None, timeout=90, env=None, config=True):
    extra = ["-c", str(fleet.client_config)] if config else []
    proc = subprocess.run([sys.executable, "-m", "collective", *args, *extra],
                          capture_output=True, text=True, timeout=timeout, input=stdin,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def canary(fleet, marker):
    """[(event, node, time)] for the canary lines carrying ``marker``."""
    if not fleet.canary.exists():
        return []
    rows = []
    for line in fleet.canary.read_text().splitlines():
        event, mark, node, _pid, stamp = line.split()
        if mark == marker:
            rows.append((event, node, float(stamp)))
    return rows


def wait_canary(fleet, marker, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(canary(fleet, marker)) < count:
        time.sleep(0.05)
    return canary(fleet, marker)


def max_concurrency(rows):
    events = sorted((t, 1 if e == "start" else -1) for e, _, t in rows)
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_fixed_batches_run_in_groups_with_a_pause(fleet):
    code, out, _ = mco(fleet, "rpc", "canary", "sleep", "seconds=0.6", "marker=fixed", "--batch", "2",
                       "--batch-sleep", "0.5", "--dt", "1")
    assert code == 0, out
    assert "Finished processing 4 / 4 hosts" in out
    rows = canary(fleet, "fixed")
    starts = sorted(t for e, _, t in rows if e == "start")
    ends = sorted(t for e, _, t in rows if e == "end")
    assert len(starts) == 4 and len(ends) == 4
    assert max_concurrency(rows) == 2
    assert starts[2] >= ends[1] + 0.4, "the second batch started before the pause after the first"


def test_percentage_batch(fleet):
    code, out, _ = mco(fleet, "rpc", "canary", "sleep", "seconds=0.3", "marker=pct", "--batch", "50%",
                       "--batch-sleep", "0", "--dt", "1")
    assert code == 0
    assert max_concurrency(canary(fleet, "pct")) == 2


def test_sliding_window_keeps_n_busy(fleet):
    code, out, _ = mco(fleet, "rpc", "canary", "sleep", "seconds=0.5", "marker=window", "--batch", "3",
                       "--batch-mode", "window", "-I", "node-001", "-I", "node-002", "-I", "node-003",
                       "-I", "node-004")
    assert code == 0, out
    rows = canary(fleet, "window")
    assert len(rows) == 8
    assert max_concurrency(rows) == 3
    first_end = min(t for e, _, t in rows if e == "end")
    last_start = max(t for e, _, t in rows if e == "start")
    assert last_start - first_end < 0.4, "the fourth node waited for a whole batch, not for a free slot"


@pytest.mark.parametrize(("args", "count"), [
    (["--limit-nodes", "2"], 2), (["-1"], 1), (["--limit-nodes", "50%"], 2), (["--limit-nodes", "10"], 4),
])
def test_limit_nodes(fleet, args, count):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", *args, "--dt", "1")
    assert code == 0
    assert f"Finished processing {count} / {count} hosts" in out


def test_limit_seed_is_repeatable(fleet):
    picks = []
    for _ in range(2):
        code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "--limit-nodes", "2", "--limit-seed", "7",
                           "--json", "--dt", "1")
        assert code == 0
        picks.append(sorted(r["sender"] for r in json.loads(out)))
    assert picks[0] == picks[1] and len(picks[0]) == 2


def test_bad_batch_value_is_a_clear_error(fleet):
    code, _, err = mco(fleet, "rpc", "rpcutil", "ping", "--batch", "0%", "--dt", "1")
    assert code == 1 and "--batch must be a positive number or a percentage" in err


def test_no_results_prints_the_request_id_and_the_action_runs(fleet):
    code, out, _ = mco(fleet, "rpc", "canary", "run", "marker=noresults", "-I", "node-002", "--no-results")
    assert code == 0
    assert re.fullmatch(r"Request sent with id: [0-9a-f]{32}\n", out)
    assert [(e, n) for e, n, _ in wait_canary(fleet, "noresults", 1)] == [("run", "node-002")]


def test_reply_to_sends_replies_to_a_collector(fleet):
    collector = subprocess.Popen(
        [sys.executable, "-m", "collective", "replies", "mcollective.reply.admin.job1", "--count", "2", "-t", "20",
         "-c", str(fleet.client_config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # let the collector subscribe first
        code, out, _ = mco(fleet, "rpc", "canary", "run", "marker=replyto", "-I", "node-001", "-I", "node-003",
                           "--reply-to", "mcollective.reply.admin.job1")
        assert code == 0 and "replies to mcollective.reply.admin.job1" in out
        stdout, stderr = collector.communicate(timeout=30)
    finally:
        collector.kill()
    replies = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(r["sender"] for r in replies) == ["node-001", "node-003"], stderr
    assert all(r["statuscode"] == 0 and r["data"] == {"ran": True} for r in replies)


def test_reply_to_must_be_a_reply_destination(fleet):
    code, _, err = mco(fleet, "rpc", "rpcutil", "ping", "-I", "node-001", "--reply-to", "mcollective.node.node-002")
    assert code == 1 and "not a reply destination" in err


def test_chaining_with_filter_replies_and_nodes_from_stdin(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "get_fact", "fact=role", "--json", "--dt", "1",
                       "--filter-replies", "statuscode=0 and data.value=web")
    assert code == 0
    assert sorted(r["sender"] for r in json.loads(out)) == ["node-001", "node-004"]
    code, second, _ = mco(fleet, "rpc", "canary", "run", "marker=chain", "--nodes", "-", stdin=out)
    assert code == 0, second
    assert "Finished processing 2 / 2 hosts" in second
    assert sorted(n for _, n, _ in wait_canary(fleet, "chain", 2)) == ["node-001", "node-004"]


def test_mcollective_discovery_spellings_dm_stdin_and_dm_flatfile_do_file(fleet, tmp_path):
    code, out, err = mco(fleet, "rpc", "canary", "run", "marker=dmstdin", "--dm", "stdin",
                         stdin="node-002\nnode-003\n")
    assert code == 0, out + err
    assert "Finished processing 2 / 2 hosts" in out
    listed = tmp_path / "hosts.txt"
    listed.write_text("node-001\n# a comment\nnode-003\n")
    code, out, err = mco(fleet, "find", "--dm", "flatfile", "--do", str(listed))
    assert code == 0, out + err
    assert out.split() == ["node-001", "node-003"]
    code, _, err = mco(fleet, "find", "--dm", "broadcast", "--do", "justaword")
    assert code == 1 and "expected key=value" in err


def test_nodes_from_a_file(fleet, tmp_path):
    listing = tmp_path / "nodes.txt"
    listing.write_text("# the db and cache nodes\nnode-002\n\nnode-003\n")
    code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "--nodes", str(listing))
    assert code == 0 and "Finished processing 2 / 2 hosts" in out


def test_jsonl_streams_one_line_per_reply(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "--jsonl", "--dt", "1")
    assert code == 0
    replies = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["sender"] for r in replies) == NODES


def test_display_none_and_all(fleet):
    _, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "--display", "none", "--dt", "1")
    assert "node-001" not in out and "Finished processing 4 / 4" in out
    _, out, _ = mco(fleet, "rpc", "canary", "run", "marker=display", "--display", "failed", "--dt", "1")
    assert "node-001" not in out
    code, out, _ = mco(fleet, "rpc", "canary", "fail", "--display", "all", "-I", "node-001")
    assert code == 2 and "node-001" in out and "Unknown Request Status" in out


def test_verbose_prints_the_stats_block(fleet):
    _, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "-v", "--dt", "1")
    for label in ("Nodes: 4 / 4", "Pass / Fail: 4 / 0", "Start Time:", "Discovery Time:", "Agent Time:",
                  "Total Time:"):
        assert label in out


def test_plugin_aggregate_through_the_hook(fleet):
    code, out, _ = mco(fleet, "rpc", "canary", "run", "marker=agg", "--dt", "1")
    assert code == 0
    assert "Summary of Ran:" in out and "4 node(s) ran the canary" in out


def test_exit_code_1_when_nothing_is_discovered(fleet):
    code, _, err = mco(fleet, "rpc", "rpcutil", "ping", "-F", "role=nosuch", "--dt", "1")
    assert code == 1 and "No request sent, we did not discover any nodes." in err


def test_exit_code_3_when_discovered_nodes_do_not_answer(fleet):
    code, out, _ = mco(fleet, "rpc", "canary", "sleep", "seconds=2", "marker=slow3", "-F", "role=db",
                       "-t", "0.5", "--dt", "1")
    assert code == 3
    assert "No response from:" in out and "node-002" in out


def test_exit_code_4_without_discovery_or_responses(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "ping", "-I", "nosuchnode", "-t", "1")
    assert code == 4 and "nosuchnode" in out


def test_completion_scripts_and_live_completion(fleet):
    for shell in ("bash", "zsh", "fish"):
        code, out, _ = mco(fleet, "completion", shell, config=False)
        assert code == 0 and "_MCO_COMPLETE" in out
    proc = subprocess.run([sys.executable, "-m", "collective"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "_MCO_COMPLETE": "bash_complete", "COMP_WORDS": "mco fl",
                               "COMP_CWORD": "1"})
    assert "fleet" in proc.stdout


def test_discovery_window_ends_broadcast_discovery_early(fleet):
    started = time.monotonic()
    code, out, _ = mco(fleet, "find", "--dt", "15", "--discovery-window", "0.5")
    assert code == 0 and out.split() == NODES
    assert time.monotonic() - started < 8


def test_progress_bar_only_on_a_terminal(fleet):
    import pty

    code, out, err = mco(fleet, "rpc", "rpcutil", "ping", "--dt", "1")
    assert code == 0 and "* [" not in out + err
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "collective", "rpc", "rpcutil", "ping", "--dt", "1",
                             "-c", str(fleet.client_config)], stdout=subprocess.PIPE, stderr=secondary,
                            text=True)
    os.close(secondary)
    stdout, _ = proc.communicate(timeout=60)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    drawn = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "* [" in drawn and "] 4 / 4" in drawn
    assert "* [" not in stdout


def test_per_node_config_and_a_broadcast_that_ends_at_the_first_wanted_reply(collective_fleet,
                                                                             tmp_path):
    from collective.client import Client
    from collective.config import load_config

    fleet = collective_fleet(nodes=2, server_config_for=lambda index, identity: {
        "plugins": {"canary": {"log": str(tmp_path / f"{identity}.log")}}})
    with Client(load_config(fleet.client_config)) as client:
        data = client.validate("canary", "run", {"marker": "until"})
        started = time.monotonic()
        result = client.request("canary", "run", data, timeout=30, until=lambda reply: reply.ok)
        elapsed = time.monotonic() - started
    assert len(result.replies) == 1 and result.replies[0].ok
    assert elapsed < 10, "collection went on after the reply that was asked for"
    deadline = time.monotonic() + 10
    logs = {node: tmp_path / f"{node}.log" for node in ("node-001", "node-002")}
    while not all(path.exists() for path in logs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for node, path in logs.items():  # each node wrote to its own file only
        assert [line.split()[2] for line in path.read_text().splitlines()] == [node]
