"""Audit lines anyone with broker access could multiply, on a real daemon and broker
(docs/security.md S17): discovery pings are audited at most ``audit.discovery_rate``
lines a second, refused messages that did not verify at most ``audit.unverified_rate``;
the counters keep every one. And the token bucket behind both."""

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


def test_unverified_messages_are_counted_but_audited_and_logged_at_a_bounded_rate(
        canary_daemons, tmp_path, caplog):
    import logging

    from collective.message import RequestMessage

    start_node, client = canary_daemons
    node = start_node(audit={"file": str(tmp_path / "audit.jsonl"), "unverified_rate": 1})
    with client() as c:
        body = RequestMessage.new(sender="admin-client", caller="cert=admin",
                                  collective="mcollective", agent="canary", action="run",
                                  data={"marker": "forged"}, filter={}, ttl=60,
                                  reply_to="mcollective.reply.admin.x").to_body()
        wire = json.loads(c.security.sign(body, "request"))
    wire["sig"] = wire["sig"][:-4] + ("AAAA" if wire["sig"][-4:] != "AAAA" else "BBBB")
    forged = json.dumps(wire).encode()
    with caplog.at_level(logging.INFO, logger="collective.server.daemon"):
        for _ in range(200):
            node._handle(forged)  # what the connector's lane does with each message
    refused = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
               if json.loads(line)["decision"] == "refused"]
    assert 10 <= len(refused) <= 12  # a burst of 10 (10 x 1/s), then one a second
    assert all(r["reason"] == "bad_signature" and r["caller"] is None for r in refused)
    stats = node.stats()
    assert stats["unvalidated"] >= 200
    assert stats["unverified_unaudited"] == 200 - len(refused)
    logged = [r for r in caplog.records if "refused message" in r.getMessage()]
    assert len(logged) == len(refused)
