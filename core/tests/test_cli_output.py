"""MCollective-style text: node blocks by display policy, aggregate summaries."""

from __future__ import annotations

import click
import pytest

from collective.cli.output import (
    aggregate_text,
    finished_line,
    no_response_text,
    node_text,
    should_show,
)
from collective.client.results import CallStats, NodeReply, Result

OUTPUTS = {"value": {"display_as": "Value"}, "fact": {"display_as": "Fact"}}


def reply(sender, code=0, **data):
    return NodeReply(sender=sender, agent="rpcutil", action="get_fact", statuscode=code,
                     statusmsg="OK" if code == 0 else "Unknown config property x", data=data, elapsed_ms=2.0)


@pytest.mark.parametrize(("policy", "ok", "failed"), [
    ("always", True, True), ("all", True, True), ("ok", True, False), ("failed", False, True), ("none", False, False),
])
def test_display_policy(policy, ok, failed):
    assert should_show(reply("a"), policy) is ok
    assert should_show(reply("a", 1), policy) is failed


def test_node_text_ok_shows_outputs_right_aligned():
    text = click.unstyle(node_text(reply("node-001", fact="role", value="web"), OUTPUTS))
    assert text.splitlines() == ["node-001", "    Fact: role", "   Value: web"]


def test_node_text_failure_shows_label_and_message_not_data():
    text = click.unstyle(node_text(reply("node-001", 1, value="half baked"), OUTPUTS))
    assert text.splitlines()[0] == f"{'node-001':<40} Request Aborted"
    assert "Unknown config property x" in text
    assert "half baked" not in text


def test_summary_counts_values_and_expands_arrays():
    replies = [reply("a", value="web"), reply("b", value="web"), reply("c", value=["db", "web"]), reply("d", 1)]
    text = aggregate_text("summary", ["value"], replies, OUTPUTS)
    assert text.startswith("Summary of Value:")
    assert "web = 3" in text and "db = 1" in text


def test_average_and_sum():
    replies = [reply("a", value=1), reply("b", value=3)]
    assert "Average of Value: 2.000000" in aggregate_text("average", ["value"], replies, OUTPUTS)
    assert "Sum of Value: 4.000000" in aggregate_text("sum", ["value"], replies, OUTPUTS)


def test_boolean_summary_uses_labels():
    replies = [reply("a", value=True), reply("b", value=False), reply("c", value=True)]
    text = aggregate_text("boolean_summary", ["value", {"true": "enabled", "false": "disabled"}], replies, OUTPUTS)
    assert "enabled = 2" in text and "disabled = 1" in text


def test_no_aggregate_when_every_reply_failed():
    assert "No aggregate summary could be computed" in aggregate_text("summary", ["value"], [reply("a", 1)], OUTPUTS)


def test_finished_line_and_no_response_block():
    result = Result(replies=[reply("a")], stats=CallStats(expected=["a", "b"], responded=["a"]))
    assert finished_line(result, 0.01523) == "Finished processing 1 / 2 hosts in 15.23 ms"
    assert no_response_text(result) == "\nNo response from:\n\n    b\n"


def test_unexpected_responders_are_listed_where_the_client_counted_them():
    result = Result(replies=[reply("a"), reply("z")],
                    stats=CallStats(expected=["a", "b"], responded=["a", "z"], unexpected=["z"]))
    assert no_response_text(result) == ("\nNo response from:\n\n    b\n"
                                        "\nUnexpected response from:\n\n    z\n")


def test_summary_skips_null_values():
    replies = [reply("a", value="amd64"), reply("b", value=None), reply("c", value=None)]
    text = aggregate_text("summary", ["value"], replies, OUTPUTS)
    assert "amd64 = 1" in text and " = 2" not in text
    all_null = aggregate_text("summary", ["value"], [reply("a", value=None)], OUTPUTS)
    assert "No aggregate summary could be computed" in all_null


def test_an_aggregate_may_count_failed_replies_in_its_own_order_and_format():
    from collective.aggregates import Aggregate, AggregateResult

    def states(values, args):
        counts = {"OK": 0, "WARNING": 0, "CRITICAL": 0}
        for value in values:
            counts[("OK", "WARNING", "CRITICAL")[value]] += 1
        return AggregateResult("collection", counts, format="%10s : %s", ordered=True)

    registry = {"states": Aggregate("states", states, failed_replies=True),
                "ok_only": Aggregate("ok_only", states)}
    replies = [reply("a", value=0), reply("b", 1, value=2), reply("c", 1, value=2), reply("d", 1)]
    text = aggregate_text("states", ["value"], replies, OUTPUTS, registry)
    assert text.splitlines()[2:] == ["           OK : 1", "      WARNING : 0", "     CRITICAL : 2"]
    ok_only = aggregate_text("ok_only", ["value"], replies, OUTPUTS, registry)
    assert "CRITICAL : 0" in ok_only and "OK : 1" in ok_only


def test_a_collection_format_that_does_not_fit_falls_back_to_the_default_line():
    from collective.aggregates import AggregateResult, render

    text = render("Value", AggregateResult("collection", {"web": 2}, format="%d%d%d"))
    assert "   web = 2" in text
