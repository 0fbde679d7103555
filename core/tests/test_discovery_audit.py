"""Discovery pings are audited, at most ``audit.discovery_rate`` lines a second, on a
real daemon and broker (docs/security.md S17); and the token bucket behind it."""

from __future__ import annotations

import json
import time

import pytest

from collective.audit import RateLimit

pytestmark = pytest.mark.timeout(120)


def test_rate_limit_allows_bursts_then_counts_what_it_leaves_out():
    now = [0.0]
    limit = RateLimit(2.0, burst=3, clock=lambda: now[0])
    assert [limit.take() for _ in range(5)] == [(True, 0)] * 3 + [(False, 1), (False, 2)]
    now[0] += 0.5  # one token back
    assert limit.take() == (True, 2)  # this line says two were left out before it
    assert limit.take() == (False, 1)
    assert RateLimit(0).take() == (False, 1)  # rate 0: no discovery lines at all


def test_discovery_pings_are_audited_and_rate_limited(canary_daemons, tmp_path):
    start_node, client = canary_daemons
    node = start_node(audit={"file": str(tmp_path / "audit.jsonl"), "discovery_rate": 0.5})
    with client() as c:
        answered = [len(c.ping(expected=["n1"], timeout=5).replies) for _ in range(25)]
    assert answered == [1] * 25  # auditing never costs an answer
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    pings = [r for r in lines if r["agent"] == "discovery"]
    # a burst of 5 (10 x 0.5), then about one every two seconds: not one line per ping
    assert 5 <= len(pings) < 25
    assert all(r["caller"] == "cert=admin" and r["action"] == "ping" and r["decision"] == "allow"
               and r["node"] == "n1" for r in pings)
    unaudited = node.stats()["discovery_unaudited"]
    assert unaudited == 25 - len(pings)
    time.sleep(2.1)  # a token comes back: the next ping is audited again
    with client() as c:
        assert len(c.ping(expected=["n1"], timeout=5).replies) == 1
    last = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
            if json.loads(line)["agent"] == "discovery"][-1]
    assert last["unaudited_before"] == unaudited
