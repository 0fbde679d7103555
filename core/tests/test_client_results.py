"""Exit codes and statistics of a call (MCollective's; docs/decisions.md)."""

from __future__ import annotations

import pytest

from collective.client.results import CallStats, NodeReply, Result


def reply(sender: str, code: int = 0) -> NodeReply:
    return NodeReply(sender=sender, agent="rpcutil", action="ping", statuscode=code,
                     statusmsg="OK" if code == 0 else "failed", data={}, elapsed_ms=1.0)


@pytest.mark.parametrize(("discovered", "expected", "replies", "code"), [
    (True, ["a", "b"], [reply("a"), reply("b")], 0),   # discovered, all passed
    (True, [], [], 1),                                   # nothing discovered
    (True, ["a", "b"], [reply("a"), reply("b", 1)], 2),  # some failed
    (True, ["a", "b"], [reply("a")], 2),                 # some did not answer
    (True, ["a", "b"], [], 3),                           # discovered, no responses
    (False, ["a"], [], 4),                               # direct addressing, no responses
    (False, ["a"], [reply("a")], 0),
    (False, ["a", "b"], [reply("a", 5), reply("b")], 2),
])
def test_exit_codes(discovered, expected, replies, code):
    result = Result(replies=replies, stats=CallStats(expected=expected, discovery_performed=discovered,
                                                     responded=[r.sender for r in replies]))
    assert result.exit_code() == code


def test_no_response_is_the_sorted_difference():
    stats = CallStats(expected=["c", "a", "b"], responded=["b"])
    assert stats.no_response == ["a", "c"]


def test_ok_and_failed_partition():
    result = Result(replies=[reply("a"), reply("b", 4)])
    assert [r.sender for r in result.ok] == ["a"]
    assert [r.sender for r in result.failed] == ["b"]
