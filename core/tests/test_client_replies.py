"""Replies a client did not wait for, and replies it got twice, on a real embedded
broker with real daemons (docs/security.md R6, R7): a reply after the client's
timeout is dropped and counted, never shown with a later request; two daemons with
one identity (a cloned machine) answer once in the results and the second reply is
counted as a duplicate."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.timeout(120)


def test_a_reply_after_the_timeout_is_dropped_and_counted_not_shown_later(canary_daemons):
    start_node, client = canary_daemons
    start_node()
    with client() as c:
        slow = c.request("canary", "sleep", {"seconds": 2, "marker": "slow"}, targets=["n1"],
                         timeout=0.5)
        assert slow.replies == [] and slow.stats.no_response == ["n1"]
        deadline = time.monotonic() + 10
        while c.late_replies < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.late_replies == 1
        quick = c.request("canary", "run", {"marker": "quick"}, targets=["n1"], timeout=10)
        assert [(r.sender, r.action, r.data.get("ran")) for r in quick.replies] == [
            ("n1", "run", True)]


def test_two_daemons_with_one_identity_answer_once_and_the_second_is_a_duplicate(canary_daemons):
    start_node, client = canary_daemons
    start_node()
    start_node()  # the same identity and key: a cloned machine
    with client() as c:
        result = c.request("canary", "run", {"marker": "twice"}, timeout=3)
    assert [r.sender for r in result.replies] == ["n1"]
    assert result.stats.duplicate_replies == 1
