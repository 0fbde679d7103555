"""End to end: what a trusted key that policy denies everything can still do to a node
before authorization, on a real fleet (embedded broker, 2 collectived processes).

``mallory`` is trusted (its key is in every node's trust store) but the nodes'
actionpolicy allows only ``admin``. Mallory's requests are signed with its real key
and sent raw, so they can carry filters the client library refuses. Each test shows
one attack no longer works, while ``admin`` measures ``rpcutil ping`` on the same
node: the receive path stays responsive (docs/security.md S20).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import pytest

from collective.client import Client
from collective.config import load_config
from collective.filters import Filter
from collective.fleet import fleet_down, fleet_up
from collective.message import RequestMessage

T = "\t"
NODES = ["node-001", "node-002"]
SECRET_SIZE = 4242
#: an ed25519 host key as facts report it: long, base64, no "!"
SSHKEY = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def facts_for(index: int, identity: str) -> dict:
    return {"sshkey": SSHKEY, "motd": "a" * 4000 + "!",
            "packages": [f"package-{n}-1.{n % 7}" for n in range(3000)]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prefilter-fleet")
    policies = tmp_path_factory.mktemp("policies")
    # one default policy for every agent, discovery included: admin only
    (policies / "default.policy").write_text(f"policy default deny\nallow{T}cert=admin{T}*{T}*{T}*\n")
    secret_dir = tmp_path_factory.mktemp("root-only")
    os.chmod(secret_dir, 0o700)
    secret = secret_dir / "secret"
    secret.write_bytes(b"s" * SECRET_SIZE)
    os.chmod(secret, 0o600)
    started = fleet_up(directory, nodes=len(NODES), clients=["admin", "mallory"],
                       facts_for=facts_for, extra_server_config={
                           "authorization": {"provider": "actionpolicy"},
                           "plugins": {"actionpolicy": {"policy_dir": str(policies),
                                                        "enable_default": True}},
                           # small, so that filling it takes seconds, not minutes
                           "security": {"replay_cache": 400},
                       })
    started.secret = secret
    yield started
    fleet_down(directory)


class Caller:
    """A client of the fleet as ``name``; :meth:`raw` sends bodies the library refuses."""

    def __init__(self, fleet, name: str) -> None:
        self.client = Client(load_config(fleet.client_config_for(name)))
        self.client.connect()

    def raw(self, agent: str, action: str, flt: dict, targets: list[str] | None = None,
            ttl: int | None = None):
        """Sign and publish one request with the caller's real key; returns the queue
        its replies arrive in."""
        client = self.client
        message = RequestMessage.new(
            sender=client.sender, caller=client.security.identity, collective=client.collective,
            agent=agent, action=action, data={}, filter=flt, ttl=ttl or client.ttl,
            reply_to=client.reply_dest.logical(), targets=targets)
        body = message.to_body()
        pending = client._track(message, body)
        client._publish(agent, client.security.sign(body, "request"), targets)
        return pending.replies

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def admin(fleet):
    caller = Caller(fleet, "admin")
    yield caller
    caller.close()


@pytest.fixture
def mallory(fleet):
    caller = Caller(fleet, "mallory")
    yield caller
    caller.close()


def stats(admin: Caller, node: str = "node-001") -> dict:
    result = admin.client.request("rpcutil", "daemon_stats", {}, targets=[node], timeout=10)
    assert [r.statuscode for r in result.replies] == [0], result.replies
    return result.replies[0].data


def wait_counter(admin: Caller, name: str, at_least: int, node: str = "node-001",
                 timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        now = stats(admin, node)
        if now.get(name, 0) >= at_least or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


class Pinger(threading.Thread):
    """``rpcutil ping`` to node-001 as admin until stopped, alternately broadcast (the
    node's reserved lane, which discovery pings share) and directed (its work lane)."""

    def __init__(self, fleet) -> None:
        super().__init__(daemon=True)
        self.caller = Caller(fleet, "admin")
        self.latencies: list[float] = []
        self.missed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            started = time.monotonic()
            if n % 2:
                result = self.caller.client.request("rpcutil", "ping", {}, expected=["node-001"],
                                                    timeout=3)
            else:
                result = self.caller.client.request("rpcutil", "ping", {}, targets=["node-001"],
                                                    timeout=3)
            if any(r.sender == "node-001" and r.statuscode == 0 for r in result.replies):
                self.latencies.append(time.monotonic() - started)
            else:
                self.missed += 1
            time.sleep(0.02)

    def finish(self) -> tuple[float, float]:
        self.stop.set()
        self.join(10)
        self.caller.close()
        assert self.latencies, "no ping was answered"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(f"\nrpcutil ping during the attack: n={len(ordered)} p50="
              f"{statistics.median(ordered) * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
              f"missed={self.missed}")
        return statistics.median(ordered), p99


def under_attack(fleet, attack, settle) -> tuple[float, float, int]:
    """Run ``attack()`` while pinging; ``settle()`` returns once the node has handled
    it. Returns (p50, p99, missed pings)."""
    pinger = Pinger(fleet)
    pinger.start()
    time.sleep(0.5)
    try:
        attack()
        settle()
        time.sleep(0.5)
    finally:
        p50, p99 = pinger.finish()
    return p50, p99, pinger.missed


def drain(replies, seconds: float = 1.5) -> list:
    deadline = time.monotonic() + seconds
    got = []
    while time.monotonic() < deadline:
        try:
            got.append(replies.get(timeout=0.1))
        except Exception:  # queue.Empty
            continue
    return got


# -- regular expressions ---------------------------------------------------------------------

#: each passes the old nested-quantifier heuristic and backtracks for ages in Python's re
BACKTRACKING = [r"([\w+/]|[\w+/]{2})+!", "(a|aa)+$x", "(a|a?)+b"]


@pytest.mark.timeout(300)
def test_catastrophic_regexes_do_not_freeze_the_receive_path(fleet, admin, mallory):
    before = stats(admin)
    filters = [{"fact": [{"fact": "sshkey", "operator": "=~", "value": BACKTRACKING[0]}]},
               {"fact": [{"fact": "motd", "operator": "=~", "value": BACKTRACKING[1]}]},
               {"compound": [f"motd=~/{BACKTRACKING[2]}/"]}]
    replies = []

    def attack() -> None:
        for _ in range(10):
            for flt in filters:
                replies.append(mallory.raw("discovery", "ping", flt))

    p50, p99, missed = under_attack(
        fleet, attack, lambda: wait_counter(admin, "filtered", before["filtered"] + 30))
    after = stats(admin)
    assert after["filtered"] - before["filtered"] >= 30  # all handled, none matched
    assert sum(len(drain(q, 0.05)) for q in replies) == 0
    assert missed == 0 and p99 < 1.0, f"ping p99 {p99:.3f} s, {missed} missed"


def test_the_client_refuses_a_regex_re2_cannot_run(fleet):
    proc = subprocess.run([sys.executable, "-m", "collective", "find", "-F", "sshkey=~(?=A)A",
                           "-c", str(fleet.client_config_for("admin")), "--dt", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "lookahead is not supported" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# -- the cost of -S expressions ----------------------------------------------------------------

def test_costly_expressions_are_refused_before_anything_is_sent(fleet):
    """1,000 terms in one -S, or several -S that are 4 KiB each (the old limit was per
    expression, so 80 of them went out): one clear error, exit 1, nothing sent."""
    thousand = " and ".join(f"packages=package-{n}-1.0" for n in range(1000))
    half = " or ".join(f"packages=package-{n}-1.0" for n in range(120))  # ~3 KiB, 120 terms
    for args, message in ((["-S", thousand], "at most 4096 are allowed"),
                          (["-S", half, "-S", half], "characters long together; at most 4096")):
        proc = subprocess.run([sys.executable, "-m", "collective", "find", *args,
                               "-c", str(fleet.client_config_for("admin")), "--dt", "1"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1
        assert message in proc.stderr  # for -S: MCollective's caret message, once
        assert proc.stderr.count("failed to run") == 1


@pytest.mark.timeout(300)
def test_huge_and_function_heavy_filters_cost_the_node_almost_nothing(fleet, admin, mallory):
    """Each message here cost the old node seconds: 80 expressions of 256 terms, every
    statement a list-fact comparison; or 255 different package() calls, each a
    dpkg-query run, on the receive thread."""
    before = stats(admin)
    terms = " or ".join(f"packages=nothing-{n}" for n in range(255))[:4096].rsplit(" or ", 1)[0]
    wide = {"compound": [terms] * 80}  # 320 KiB: under security.max_request_bytes
    calls = {"compound": [" or ".join(f"package('pkg{n}').installed=true" for n in range(255))[:4096]
                          .rsplit(" or ", 1)[0]]}
    within = {"compound": [" or ".join(f"package('pkg{n}').installed=true" for n in range(8))]}
    sent = []

    def attack() -> None:
        for _ in range(5):
            sent.append(mallory.raw("discovery", "ping", wide))
            sent.append(mallory.raw("discovery", "ping", calls))
            sent.append(mallory.raw("rpcutil", "ping", within, targets=["node-001"]))

    p50, p99, missed = under_attack(
        fleet, attack, lambda: wait_counter(admin, "denied", before["denied"] + 5))
    after = stats(admin)
    assert after["filter_refused"] - before["filter_refused"] >= 10  # over the caps
    assert after["denied"] - before["denied"] >= 5  # within: authorization first, denied
    assert after["filter_deferred"] == before["filter_deferred"]  # no data plugin ran
    assert sum(len(drain(q, 0.05)) for q in sent) == 0  # and not a word back
    assert missed == 0 and p99 < 1.0, f"ping p99 {p99:.3f} s, {missed} missed"


@pytest.mark.timeout(300)
def test_a_flood_of_the_costliest_filters_within_the_caps(fleet, admin, mallory):
    """An ``or`` of 16 regexes and 160 comparisons that never match, each tried on
    every element of a 3,000-element fact, new regexes in every message: about 0.2 s
    of work each, unbounded. Now each stops at its CPU budget and mallory's share of
    the receive thread runs out after a few."""
    before = stats(admin)

    def worst(seq: int) -> dict:
        regexes = [f"packages=~/(a|a?)+(a|a?)+q{n}_{seq}/" for n in range(16)]
        plain = [f"packages=nothing-{n}" for n in range(240)]
        text = " or ".join(regexes + plain)
        while len(text) > 4096:
            plain.pop()
            text = " or ".join(regexes + plain)
        return {"compound": [text]}

    assert Filter.from_dict(worst(0)).validate().regexes == 16  # within the caps
    sent = []

    def attack() -> None:
        for seq in range(150):
            sent.append(mallory.raw("discovery", "ping", worst(seq)))

    p50, p99, missed = under_attack(
        fleet, attack, lambda: wait_counter(admin, "filtered", before["filtered"] + 150))
    after = stats(admin)
    stopped = (after["filter_budget"] - before["filter_budget"]
               + after["filter_throttled"] - before["filter_throttled"])
    assert after["filtered"] - before["filtered"] >= 150 and stopped >= 140
    assert missed == 0 and p99 < 1.0, f"ping p99 {p99:.3f} s, {missed} missed"


# -- the replay cache --------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_one_caller_cannot_fill_the_replay_cache_for_everyone(fleet, admin, mallory):
    """replay_cache is 400 here: mallory's 600 fresh discovery pings, each remembered
    for ten minutes, used to leave every other caller refused ("replay cache full")."""
    before = stats(admin)
    for _ in range(600):
        mallory.raw("discovery", "ping", {"identity": ["nobody"]}, ttl=600)
    wait_counter(admin, "total", before["total"] + 600)
    for node in NODES:
        result = admin.client.request("rpcutil", "ping", {}, targets=[node], timeout=10)
        assert [(r.sender, r.statuscode) for r in result.replies] == [(node, 0)], \
            [r.statusmsg for r in result.replies]
    code = subprocess.run([sys.executable, "-m", "collective", "ping", "-c",
                           str(fleet.client_config_for("admin"))],
                          capture_output=True, text=True, timeout=60)
    assert all(node in code.stdout for node in NODES), code.stdout + code.stderr
    # mallory itself is not locked out either: its fresh requests still reach the filter
    replies = mallory.raw("discovery", "ping", {})
    assert sorted(r.sender for r in drain(replies)) == NODES


# -- data plugins: fstat of a root-only file -------------------------------------------------

def _fstat(fleet, size: int) -> dict:
    return {"compound": [f"fstat('{fleet.secret}').size={size}"]}


def test_fstat_still_works_for_an_allowed_caller(fleet, admin):
    yes = admin.client.ping(Filter(compound=[f"fstat('{fleet.secret}').size={SECRET_SIZE}"]),
                            timeout=2)
    no = admin.client.ping(Filter(compound=[f"fstat('{fleet.secret}').size={SECRET_SIZE - 1}"]),
                           timeout=2)
    assert sorted(r.sender for r in yes.replies) == NODES
    assert no.replies == []


def test_fstat_of_a_root_only_file_tells_a_denied_caller_nothing(fleet, admin, mallory):
    before = stats(admin)
    answers = {}
    for size in (SECRET_SIZE, SECRET_SIZE - 1):
        discovery = mallory.raw("discovery", "ping", _fstat(fleet, size))
        rpc = mallory.raw("rpcutil", "ping", _fstat(fleet, size), targets=["node-001"])
        answers[size] = (drain(discovery), drain(rpc))
    # the same silence whatever the size: not one bit leaks
    assert answers[SECRET_SIZE] == answers[SECRET_SIZE - 1] == ([], [])
    after = stats(admin)
    assert after["filter_deferred"] == before["filter_deferred"]  # fstat never ran
    assert after["denied"] - before["denied"] == 4
    audit = [json.loads(line) for line in
             (fleet.directory / "nodes" / "node-001" / "audit.jsonl").read_text().splitlines()]
    denied = [a for a in audit if a["caller"] == "cert=mallory" and a["decision"] == "deny"
              and "needs data plugins" in a["reason"]]
    assert len(denied) >= 4


def test_plain_filters_still_target_for_everyone(fleet, mallory):
    """Facts, classes, identities and agents are targeting information: as in
    MCollective a trusted caller's discovery ping is answered whatever its policy,
    and the inline data plugins (fact, agent, collective) count as such."""
    replies = mallory.raw("discovery", "ping",
                          {"identity": ["/^node-00/"], "compound": ["fact('sshkey').exists"]})
    assert sorted(r.sender for r in drain(replies)) == NODES
