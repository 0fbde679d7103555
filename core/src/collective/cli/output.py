"""MCollective-style text output: per-node blocks by display policy, summaries, stats."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from ..client.results import STATUS_LABELS, NodeReply, Result


def _value(value: Any, spec: Any = None) -> str:
    """How a reply value is printed; ``spec`` is its DDL output (``"x-display": "time"``
    shows unix seconds as a local date, as MCollective shows ``Start Time``)."""
    if isinstance(spec, dict) and spec.get("x-display") == "time" \
            and isinstance(value, (int, float)) and not isinstance(value, bool):
        return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(value))
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
        lines.append(f"{labels[key]:>{width}}: {_value(value, outputs.get(key))}")
    return "\n".join(lines)


def aggregate_text(function: str, args: list[Any], replies: list[NodeReply],
                   outputs: dict[str, Any], registry: dict[str, Any] | None = None,
                   fmt: str | None = None) -> str:
    """One ``Summary of <display_as>:`` block, computed by the named aggregate."""
    from ..aggregates import BUILTIN_AGGREGATES, render

    functions = registry if registry is not None else {a.name: a for a in BUILTIN_AGGREGATES}
    output = str(args[0]) if args else ""
    title = outputs.get(output, {}).get("display_as", output)
    if function not in functions:
        return render(title, None, f"unknown aggregate function {function!r}")
    every = bool(getattr(functions[function], "failed_replies", False))
    chosen = [r for r in replies if (every or r.ok) and output in r.data]
    if not chosen:
        return render(title, None)
    try:
        result = functions[function].compute([r.data[output] for r in chosen], list(args[1:]))
    except Exception as exc:  # a plugin's aggregate must not take the output down
        return render(title, None, f"exception raised while processing {function}: {exc}")
    if fmt:
        result.format = fmt
    return render(title, result)


def finished_line(result: Result, elapsed_s: float) -> str:
    stats = result.stats
    total = len(stats.expected) if stats.expected else len(result.replies)
    return f"Finished processing {len(result.replies)} / {total} hosts in {elapsed_s * 1000:.2f} ms"


def no_response_text(result: Result) -> str:
    """MCollective's closing lists: ``No response from:`` (expected, silent) and
    ``Unexpected response from:`` (answered, though not among the expected nodes)."""
    text = ""
    missing = result.stats.no_response
    if missing:
        text += "\nNo response from:\n\n" + "".join(f"    {node}\n" for node in missing)
    unexpected = sorted(set(result.stats.unexpected))
    if unexpected:
        text += "\nUnexpected response from:\n\n" + "".join(f"    {node}\n" for node in unexpected)
    return text


def stats_block(result: Result, caption: str = "rpc stats") -> str:
    """The ``-v`` block: nodes, pass/fail and times, headed ``---- CAPTION ----``."""
    s = result.stats
    ok, failed = len(result.ok), len(result.failed)
    return (
        f"---- {caption} ----\n"
        f"           Nodes: {len(s.expected)} / {len(result.replies)}\n"
        f"     Pass / Fail: {ok} / {failed}\n"
        f"      Start Time: {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(s.start_time))}\n"
        f"  Discovery Time: {s.discovery_time * 1000:.2f}ms\n"
        f"      Agent Time: {s.agent_time * 1000:.2f}ms\n"
        f"      Total Time: {s.total_time * 1000:.2f}ms\n"
    )


def result_json(result: Result, replies: list[NodeReply] | None = None) -> str:
    """One JSON document: the list of replies (``mco rpc ... --nodes -`` reads it back)."""
    chosen = result.replies if replies is None else replies
    return json.dumps([r.to_dict() for r in chosen], indent=2, sort_keys=True)
