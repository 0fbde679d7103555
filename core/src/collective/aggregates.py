"""DDL aggregate functions: ``summary``, ``average``, ``sum``, ``boolean_summary``.

A DDL action lists ``"aggregate": [{"function": "summary", "args": ["status"]}]``;
the client collects that output from every OK reply (every reply that carries it,
for functions with ``failed_replies=True``) and prints a ``Summary of <display_as>:``
block. Plugins add functions through the ``collective_aggregates`` hook (e.g. nrpe's
``nagios_states``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class AggregateResult:
    """``collection``: value → count lines; ``numeric``: one number with a format."""

    kind: Literal["collection", "numeric"]
    value: Any
    #: numeric results: the word before "of <title>" in the default format
    label: str = "Value"
    #: printf-style format (the DDL's ``format`` overrides it): of the number for
    #: numeric results, of each ``(value, count)`` line for collections (``"%10s : %s"``)
    format: str | None = None
    #: collections: keep the function's key order (e.g. OK, WARNING, CRITICAL, UNKNOWN)
    #: instead of sorting by count
    ordered: bool = False


@dataclass(frozen=True)
class Aggregate:
    """A named aggregate function over one output's values across the OK replies."""

    name: str
    #: ``compute(values, args)``; ``args`` are the DDL arguments after the output name
    compute: Callable[[list[Any], list[Any]], AggregateResult]
    description: str = ""
    #: also take the output from replies whose status is not 0 (MCollective feeds every
    #: reply to an aggregate; nrpe's ``nagios_states`` counts WARNING and CRITICAL nodes,
    #: whose replies are status 1)
    failed_replies: bool = False


def _text(value: Any) -> str:
    if value is True or value is False:
        return "true" if value else "false"
    return "" if value is None else str(value)


def _expand(values: list[Any]) -> list[Any]:
    """Arrays count element by element; null (an output the node left unset) counts not at all."""
    out: list[Any] = []
    for value in values:
        out.extend(value if isinstance(value, list) else [value])
    return [value for value in out if value is not None]


def _numbers(values: list[Any]) -> list[float]:
    return [float(v) for v in _expand(values) if isinstance(v, (int, float)) and not isinstance(v, bool)]


def summary(values: list[Any], args: list[Any]) -> AggregateResult:
    """Count each distinct value; arrays count each element (MCollective semantics)."""
    return AggregateResult("collection", dict(Counter(_text(v) for v in _expand(values))))


def boolean_summary(values: list[Any], args: list[Any]) -> AggregateResult:
    """Like summary, with true/false mapped to labels: ``args[0] = {"true": "enabled", "false": "disabled"}``."""
    labels = args[0] if args and isinstance(args[0], dict) else {}
    mapped = [labels.get(_text(v).lower(), "True" if v is True else "False" if v is False else _text(v))
              for v in _expand(values)]
    return AggregateResult("collection", dict(Counter(mapped)))


def average(values: list[Any], args: list[Any]) -> AggregateResult:
    numbers = _numbers(values)
    return AggregateResult("numeric", sum(numbers) / len(numbers) if numbers else None, "Average")


def total(values: list[Any], args: list[Any]) -> AggregateResult:
    numbers = _numbers(values)
    return AggregateResult("numeric", sum(numbers) if numbers else None, "Sum")


BUILTIN_AGGREGATES = (
    Aggregate("summary", summary, "count of each distinct value"),
    Aggregate("boolean_summary", boolean_summary, "count of true/false with labels"),
    Aggregate("average", average, "mean of a numeric output"),
    Aggregate("sum", total, "sum of a numeric output"),
)


def render(title: str, result: AggregateResult | None, error: str | None = None) -> str:
    """The ``Summary of <title>:`` block as MCollective prints it."""
    head = f"Summary of {title}:\n\n"
    if error:
        return head + f"   Could not compute summary - {error}\n"
    if result is None or result.value is None or result.value == {}:
        return head + "   No aggregate summary could be computed\n"
    if result.kind == "collection":
        counts: dict[str, int] = result.value
        width = max(len(k) for k in counts)
        items = list(counts.items()) if result.ordered else sorted(
            counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return head + "".join(f"   {_collection_line(result.format, k, n, width)}\n"
                              for k, n in items)
    fmt = result.format or f"{result.label} of {title}: %f"
    try:
        line = fmt % result.value
    except (TypeError, ValueError):
        line = f"{result.value}"
    return head + f"   {line}\n"


def _collection_line(fmt: str | None, key: str, count: int, width: int) -> str:
    if fmt:
        try:
            return fmt % (key, count)
        except (TypeError, ValueError):
            pass
    return f"{key:>{width}} = {count}"
