"""Fuzzing request filters as a node receives them: ``-S`` expressions mutated from valid
ones, wire filters mutated from valid ones, and regular expressions built from the pieces
that make backtracking engines explode.

Properties: parsing raises :class:`~collective.compound.FilterSyntaxError` /
:class:`~collective.filters.FilterError` only; what parses renders back to the same
expression; evaluation on a node with a :class:`~collective.filters.Budget` gives a bool
(or :class:`~collective.filters.FilterBudgetExceeded`) and never runs away; a regex from
the wire is compiled by RE2 and matched in bounded time, or refused with FilterError.
Bounded: a few hundred examples and a deadline per example (docs/security.md)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from collective.compound import (
    FilterSyntaxError,
    evaluate,
    evaluate3,
    expression_cost,
    parse,
    render,
)
from collective.filters import (
    Budget,
    Filter,
    FilterBudgetExceeded,
    FilterError,
    NodeInfo,
    filter_regex,
)

FUZZ = settings(max_examples=400, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow])
#: generous: a budget is 20 ms of CPU; this only catches a hang or a missing budget check
WALL_BOUND = 1.0

LONG = "a" * 20_000
NODE = NodeInfo(
    "web-01.example.com",
    facts={"role": "web", "cpus": 4, "os": {"family": "debian", "release": "12"},
           "tags": ["a", "b", LONG], "long": LONG + "!", "ratio": 0.5, "flag": True, "none": None},
    classes=["base", "role::web", "x" * 1000], agents=["rpcutil", "service"],
    data=lambda name, arg: ({"size": 10, "present": True, "name": arg or "", "long": LONG}
                            if name in ("fstat", "fact") else None),
)


def _run(flt: Any) -> Any:
    """Evaluate with the node's default budget, timed (wall clock, generous)."""
    started = time.monotonic()
    try:
        result = flt()
    except FilterBudgetExceeded:
        result = None
    assert time.monotonic() - started < WALL_BOUND
    return result


# -- -S expressions -------------------------------------------------------------------------------

_CORPUS = [
    "role=web", "(role=web or role=cache) and not location=us", "/^role::w/ and !cpus<2",
    'fstat("/etc/hosts").size>0', "fact('role').value=web", "os.family=debian and cpus>=4",
    "long=~/(a+)+$/", "tags=~^a", "not (a or b) and c", "ratio<=0.6 or flag=true",
    "puppet().enabled=false", "long!=/a{1,100}b/",
]
_PIECES = ["(", ")", " ", " and ", " or ", " not ", "!", "role", "=", "==", "=~", "!=", "!~",
           "<", ">=", "=>", "=<", "/", "/^w/", "/(a+)+/", "/(a|aa)*$/", "/.{0,1000}x/", "'",
           '"', "fstat(", "'/etc/hosts'", ").", "size", ",", "web", "\\", ".", "0", "1e999",
           "\t", "é", "\x00", "\n", "((((", "))))", "long", "tags", "none", "fact('long')"]


@st.composite
def mutated_expressions(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_CORPUS))
    for _ in range(draw(st.integers(0, 5))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "repeat", "join"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(_PIECES) | st.text(max_size=3)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 6)):]
        elif kind == "repeat":
            text = text[:at] + text[at:at + draw(st.integers(1, 20))] * draw(st.integers(2, 40)) + text[at:]
        else:
            text = f"{text} {draw(st.sampled_from(['and', 'or']))} {draw(st.sampled_from(_CORPUS))}"
    return text


@FUZZ
@given(mutated_expressions())
@example("(" * 5000)
@example("not " * 2000 + "x")
@example(" or ".join(f"fstat('/f{i}').size>0" for i in range(300)))
@example("long=~/" + "(a*)*" * 40 + "$/")
def test_compound_parse_and_evaluate_raise_only_filter_errors(text):
    try:
        expr = parse(text)
    except FilterSyntaxError as exc:
        assert 1 <= exc.column <= len(text) + 1
        event("refused")
        return
    event("parsed")
    assert parse(render(expr)) == expr
    expression_cost(expr)
    for fn in (evaluate, evaluate3):
        assert _run(lambda fn=fn: fn(expr, NODE, Budget())) in (True, False, None)


# -- wire filters ---------------------------------------------------------------------------------

_VALID_FILTER = {
    "fact": [{"fact": "role", "operator": "==", "value": "web"},
             {"fact": "long", "operator": "=~", "value": "/a$/"}],
    "cf_class": ["base", "/^role::/"], "identity": ["web-01.example.com", "/^web/"],
    "agent": ["rpcutil"], "compound": ["cpus>=4 and not role=db"],
}
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=12), st.sampled_from(_PIECES + _CORPUS))
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


@st.composite
def mutated_filters(draw: st.DrawFn) -> Any:
    flt: Any = {key: [dict(v) if isinstance(v, dict) else v for v in values]
                for key, values in _VALID_FILTER.items()}
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from([*sorted(_VALID_FILTER), "bogus"]))
        how = draw(st.sampled_from(["replace", "item", "append", "field", "drop", "many"]))
        entries = flt.get(key)
        if how == "replace" or not isinstance(entries, list):
            flt[key] = draw(_json)
        elif how == "item" and entries:
            entries[draw(st.integers(0, len(entries) - 1))] = draw(_json)
        elif how == "append":
            entries.append(draw(_json | st.sampled_from(_CORPUS)))
        elif how == "field" and key == "fact" and entries and isinstance(entries[0], dict):
            entries[0][draw(st.sampled_from(["fact", "operator", "value", "x"]))] = draw(
                _json | st.sampled_from(["=~", "!=", ">=", "/(a+)+$/", "/" + "(a|a)*" * 20 + "/"]))
        elif how == "drop":
            flt.pop(key, None)
        elif how == "many":
            flt[key] = entries * draw(st.integers(2, 300))
    return flt


@FUZZ
@given(mutated_filters())
@example({"fact": [{"fact": "long", "operator": "=~", "value": "/(a+)+$/"}]})
@example({"compound": ["long=~/(a|aa)*$/"] * 16})
@example({"identity": ["/" + "a?" * 120 + "a" * 120 + "/"]})
def test_wire_filters_raise_only_filter_error_and_match_in_bounded_time(data):
    try:
        flt = Filter.from_dict(data, Budget())
    except FilterError:
        event("refused")
        return
    event("accepted")
    assert Filter.from_dict(flt.to_dict()) == flt
    assert _run(lambda: flt.matches(NODE, Budget())) in (True, False, None)
    assert _run(lambda: flt.evaluate(NODE, Budget())) in (True, False, None)


# -- regular expressions from the wire ----------------------------------------------------------

_REGEX_PIECES = ["(", ")", "*", "+", "?", "{", "}", "{2,}", "{1000}", "{0,1000}", "[", "]", "^",
                 "$", ".", "|", "\\", "\\d", "\\w", "\\s", "\\b", "\\pL", "\\p{Greek}", "\\1",
                 "(?=", "(?!", "(?<=", "(?P<n>", "(?i)", "(?s)", "a", "aa", "b", "!", "é",
                 "\\x00", "\\Q", "\\E", "[[:alpha:]]", "[^a]", "-", ",", "\\z", "(?:"]


@settings(FUZZ, max_examples=600)
@given(st.lists(st.sampled_from(_REGEX_PIECES), max_size=40).map("".join) | st.text(max_size=60))
@example("(a+)+$")
@example("(a|aa)*b")
@example("(.*a){20}")
@example("\\pL{1000}")
@example("(?P<x>a)(?P=x)")
@example("x" * 300)
def test_regex_from_the_wire_is_linear_or_refused(pattern):
    try:
        regex = filter_regex(pattern)
    except FilterError as exc:
        assert str(exc)
        event("refused")
        return
    event("compiled")
    for text in (LONG, LONG + "!", "é" * 5000, ""):
        assert _run(lambda text=text: Budget().search(regex, text)) in (True, False, None)
