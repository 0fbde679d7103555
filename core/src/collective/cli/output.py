"""MCollective-style text output: per-node blocks by display policy, summaries, stats."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import click

from ..client.results import STATUS_LABELS, NodeReply, Result


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if value is True or value is False:
        return "true" if value else "false"
    return "" if value is None else str(value)


def should_show(reply: NodeReply, display: str) -> bool:
    """The DDL's display policy (``ok``, ``failed``, ``always``) or ``--display``."""
    if display in ("always", "all"):
        return True
    if display == "none":
        return False
    if display == "ok":
        return reply.ok
    return not reply.ok


def node_text(reply: NodeReply, outputs: dict[str, Any], verbose: bool = False) -> str:
    """``%-40s %s`` sender and status label, then the outputs for status 0 only."""
    label = "" if reply.ok else STATUS_LABELS.get(reply.statuscode, "Unknown Request Status")
    lines = [f"{reply.sender:<40} {click.style(label, fg='red') if label else ''}".rstrip()]
    if not reply.ok:
        lines.append(f"   {click.style(reply.statusmsg, fg='yellow')}")
        return "\n".join(lines)
    labels = {key: outputs.get(key, {}).get("display_as", key) for key in reply.data}
    width = max((len(label) for label in labels.values()), default=0) + 3
    for key, value in reply.data.items():
        lines.append(f"{labels[key]:>{width}}: {_value(value)}")
    return "\n".join(lines)


def _summary_values(replies: list[NodeReply], output: str) -> list[Any]:
    values: list[Any] = []
    for reply in replies:
        if not reply.ok or output not in reply.data:
            continue
        value = reply.data[output]
        values.extend(value if isinstance(value, list) else [value])
    return values


def aggregate_text(function: str, args: list[Any], replies: list[NodeReply],
                   outputs: dict[str, Any]) -> str:
    """One ``Summary of <display_as>:`` block (summary, average, sum, boolean_summary)."""
    output = str(args[0]) if args else ""
    title = outputs.get(output, {}).get("display_as", output)
    ok_replies = [r for r in replies if r.ok]
    head = f"Summary of {title}:\n\n"
    if not ok_replies:
        return head + "   No aggregate summary could be computed\n"
    values = _summary_values(ok_replies, output)
    if function in ("summary", "boolean_summary"):
        labels = args[1] if function == "boolean_summary" and len(args) > 1 and isinstance(args[1], dict) else {}
        mapped = [labels.get(str(v).lower(), "True" if v is True else "False" if v is False else _value(v))
                  if function == "boolean_summary" else _value(v) for v in values]
        counts = Counter(mapped)
        width = max((len(k) for k in counts), default=0)
        body = "".join(f"   {k:>{width}} = {n}\n" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return head + body
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return head + "   No aggregate summary could be computed\n"
    if function == "average":
        return head + f"   Average of {title}: {sum(numbers) / len(numbers):f}\n"
    if function == "sum":
        return head + f"   Sum of {title}: {sum(numbers):f}\n"
    return head + f"   Could not compute summary - unknown aggregate function {function!r}\n"


def finished_line(result: Result, elapsed_s: float) -> str:
    stats = result.stats
    total = len(stats.expected) if stats.expected else len(result.replies)
    return f"Finished processing {len(result.replies)} / {total} hosts in {elapsed_s * 1000:.2f} ms"


def no_response_text(result: Result) -> str:
    missing = result.stats.no_response
    if not missing:
        return ""
    return "\nNo response from:\n\n" + "".join(f"    {node}\n" for node in missing)


def stats_block(result: Result) -> str:
    s = result.stats
    ok, failed = len(result.ok), len(result.failed)
    return (
        "---- rpc stats ----\n"
        f"           Nodes: {len(s.expected)} / {len(result.replies)}\n"
        f"     Pass / Fail: {ok} / {failed}\n"
        f"      Start Time: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(s.start_time))}\n"
        f"  Discovery Time: {s.discovery_time * 1000:.2f}ms\n"
        f"      Agent Time: {s.agent_time * 1000:.2f}ms\n"
        f"      Total Time: {s.total_time * 1000:.2f}ms\n"
    )


def result_json(result: Result) -> str:
    return json.dumps([r.to_dict() for r in result.replies], indent=2, sort_keys=True)
