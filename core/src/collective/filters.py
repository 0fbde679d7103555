"""Request filters: which nodes act on a request (MCollective's -F/-C/-I/-A/-W).

A request carries a filter; every node evaluates it against its own identity,
facts, classes and agents and silently ignores the request when it does not
match. The wire form (``docs/contracts.md``)::

    {"fact": [{"fact": "role", "operator": "==", "value": "web"}],
     "cf_class": ["/^role::/"], "identity": ["node-001"], "agent": ["rpcutil"],
     "compound": []}

Semantics (MCollective 2.x, MCollective 2.x):

* ``identity`` entries are OR-ed (a node has one identity); every other entry,
  and every kind of filter, is AND-ed. An empty filter matches every node.
* Class, identity and agent values are exact strings, or regular expressions
  written ``/re/``. Only the surrounding slashes are removed: ``/a\\/b/`` is the
  regex ``a\\/b`` (MCollective deleted *every* ``/``; we do not copy that bug).
  A value that starts with ``/`` but does not end with one is refused rather
  than guessed at.
* The agent filter sees the agents the node reports plus ``discovery``, which
  every node answers.
* Facts: ``fact`` is a dotted path into nested mappings (``os.family``); a
  top-level key that itself contains a dot is tried first; a numeric path part
  indexes a list. A missing fact (or ``null``) never matches. A list fact
  matches when *any* element matches, a mapping fact when *any key* matches
  (so ``!=`` on a list is "some element differs", as in MCollective).
* Values are compared as strings; booleans render as ``true``/``false`` (JSON),
  not Python's ``True``.
* ``=~`` is an unanchored, case-sensitive search (RE2, see below); surrounding
  ``/…/`` on the value are removed.
* ``==`` is string equality.
* ``!= < > <= >=`` compare **as integers** when both sides match
  ``^-?[0-9]+$``, **as floats** when both sides are numbers and at least one
  matches ``^-?[0-9]+\\.[0-9]+$``, and otherwise **as strings**
  (lexicographic, by code point): ``index>=48`` is numeric, ``rack>=rack5`` is
  a string comparison, and ``10 > 9`` but ``"v10" < "v9"``.

``compound`` holds ``-S`` expressions as text (the wire form), each parsed with
:mod:`collective.compound` -- a real grammar, never ``eval`` -- when the filter
is validated and again on every node. Several expressions are AND-ed with each
other and with the rest. Data plugin calls in them (``fstat("/x").size>0``)
are answered through :attr:`NodeInfo.data`.

Cost (``docs/security.md``): a node evaluates filters before it knows whether the
caller may do anything, so what a filter may cost is bounded whatever it says.

* Regular expressions run on RE2 (``google-re2``), whose matching time is linear
  in the text: no pattern can backtrack. RE2 has no backreferences, lookaround,
  possessive quantifiers or atomic groups, writes Python's ``\\Z`` as ``\\z`` and
  its ``\\d \\w \\s \\b`` are ASCII; a pattern it cannot run is refused with a
  :class:`FilterError` naming the construct. At most :data:`MAX_REGEX_CHARS`
  characters and :data:`MAX_REGEX_PROGRAM` RE2 instructions per pattern.
* Static caps, checked by :meth:`Filter.validate` on the client (nothing is sent)
  and again on the node (the filter does not match): :data:`MAX_TERMS` terms,
  :data:`MAX_REGEXES` regular expressions, :data:`MAX_DATA_CALLS` distinct data
  plugin calls, :data:`MAX_FILTER_CHARS` characters in all, and the ``-S`` limits
  of :mod:`collective.compound` (4 KiB of ``-S`` text in all, 32 levels).
* A :class:`Budget` of CPU time per evaluation on the node, checked between steps;
  one regular-expression search whose worst case (text length times program size)
  would not fit in what is left is not started. A filter that runs out does not
  match (:class:`FilterBudgetExceeded`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "Budget",
    "FactFilter",
    "Filter",
    "FilterBudgetExceeded",
    "FilterCost",
    "FilterError",
    "NodeInfo",
    "OPERATORS",
    "compile_regex",
    "fact_values",
    "filter_regex",
    "parse_fact",
    "parse_with",
]

#: Operators a fact filter may use on the wire.
OPERATORS = ("==", "=~", "!=", "<", ">", "<=", ">=")

#: Wire keys of a filter, in order.
FILTER_KEYS = ("fact", "cf_class", "identity", "agent", "compound")

#: At most this many entries in each list of a filter.
MAX_ENTRIES = 256
#: At most this many characters in any one value (fact name, fact value, class, ...).
MAX_VALUE_CHARS = 1024
#: At most this many characters in a regular expression.
MAX_REGEX_CHARS = 256
#: At most this many RE2 instructions in one compiled regular expression (``\pL``
#: alone has about 1,200; ``.{0,1000}x`` about 9,000).
MAX_REGEX_PROGRAM = 4096
#: RE2's memory limit per pattern: a bigger program fails to compile early.
REGEX_MAX_MEM = 1 << 20
#: At most this many terms in a filter: fact, class and agent entries, identity
#: regexes and ``-S`` statements (exact identities are a set lookup and do not count).
MAX_TERMS = 256
#: At most this many regular expressions in a filter.
MAX_REGEXES = 16
#: At most this many distinct data plugin calls (``fstat('/a')`` and ``fstat('/b')``
#: are two) in a filter.
MAX_DATA_CALLS = 8
#: At most this many characters in all the strings of a filter together.
MAX_FILTER_CHARS = 16 * 1024
#: The CPU time (seconds, of the evaluating thread) one filter may use on a node.
DEFAULT_CPU_BUDGET = 0.02
#: The worst-case cost model of one RE2 search: ``len(text) * (256 + program size)``
#: units (UTF-8 bytes times instructions) at up to 1.3 ns each, as measured on the
#: 2-core development machine for patterns that defeat RE2's DFA (docs/security.md).
SEARCH_UNIT_SECONDS = 1.5e-9


class FilterError(ValueError):
    """A filter that cannot be parsed, is malformed on the wire, or is unsafe."""


class FilterBudgetExceeded(FilterError):
    """The filter used up its :class:`Budget` on this node: it does not match."""


class Budget:
    """What evaluating one filter may spend on a node: CPU time of the calling thread.

    :meth:`step` is called for every comparison and checks the clock every
    :attr:`CHECK_EVERY` steps (``time.thread_time`` costs about 2 µs); :meth:`check`
    checks it now; :meth:`search` refuses, before it starts, a regular-expression
    search whose worst case would not fit in what is left.

    :param cpu_seconds: the budget; None means unlimited (the client)
    :param clock: the CPU clock (``time.thread_time``)
    """

    CHECK_EVERY = 64

    def __init__(self, cpu_seconds: float | None = DEFAULT_CPU_BUDGET,
                 clock: Callable[[], float] = time.thread_time) -> None:
        self.clock = clock
        self.started = clock()
        self.limit = cpu_seconds
        self.deadline = None if cpu_seconds is None else self.started + cpu_seconds
        self._steps = 0
        #: per-evaluation cache (rendered fact values, node sets); None: no caching
        self.memo: dict[Any, Any] | None = None if cpu_seconds is None else {}

    def used(self) -> float:
        """CPU seconds used so far."""
        return self.clock() - self.started

    def check(self) -> None:
        """Raise :class:`FilterBudgetExceeded` if the CPU budget is used up."""
        if self.deadline is not None and self.clock() > self.deadline:
            raise FilterBudgetExceeded(f"the filter used more than {self.limit * 1000:g} ms of "
                                       "CPU time on this node")

    def step(self, n: int = 1) -> None:
        """Account for ``n`` comparisons."""
        self._steps += n
        if self._steps >= self.CHECK_EVERY:
            self._steps = 0
            self.check()

    def search(self, regex: Any, text: str) -> bool:
        """``regex.search(text)`` unless its worst case would overrun the budget."""
        if self.deadline is not None:
            chars = len(text) if text.isascii() else 4 * len(text)  # UTF-8 bytes, at most
            worst = chars * (256 + regex.program_size) * SEARCH_UNIT_SECONDS
            if worst > 0.001:  # a long text: check first, and again after
                self.check()
                if self.clock() + worst > self.deadline:
                    raise FilterBudgetExceeded(
                        f"matching /{regex.pattern}/ against a {len(text)}-character value could "
                        "take longer than the filter's CPU budget on this node")
                found = regex.search(text)
                self.check()
                return found
            self.step(1 + int(worst / 20e-6))  # a clock check at least every ~1.3 ms of worst case
            return regex.search(text)
        return regex.search(text)


#: A budget that never runs out (clients, tests, policies written by the admin).
UNLIMITED = Budget(None)


# -- parsing ------------------------------------------------------------------------

# MCollective ``Util.parse_fact_string``, in order; the first rule that matches wins.
_FACT_RULES: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"([^ ]+?)[ ]*=>[ ]*(.+)"), ">="),
    (re.compile(r"([^ ]+?)[ ]*=<[ ]*(.+)"), "<="),
    (re.compile(r"([^ ]+?)[ ]*(<=|>=|<|>|!=|==|=~)[ ]*(.+)"), None),
    (re.compile(r"(.+?)[ ]*=[ ]*/(.+)/"), "=~/"),
    (re.compile(r"([^= ]+?)[ ]*=[ ]*(.+)"), "=="),
)


@dataclass(frozen=True)
class FactFilter:
    """One ``-F`` entry: ``fact operator value``."""

    fact: str
    operator: str
    value: str

    def to_dict(self) -> dict[str, str]:
        return {"fact": self.fact, "operator": self.operator, "value": self.value}

    def __str__(self) -> str:
        return f"{self.fact}{self.operator}{self.value}"


def parse_fact(text: str) -> FactFilter:
    """Parse ``-F`` text with MCollective's rules (MCollective 2.x).

    ``a=>1`` and ``a=<1`` are aliases of ``>=``/``<=``; ``<= >= < > != == =~``
    are taken as written; ``a=/re/`` means ``=~`` (the value keeps its slashes,
    as on MCollective's wire); ``a=b`` means ``==``. Spaces around the operator
    are allowed. Anything else raises :class:`FilterError`.
    """
    if not isinstance(text, str):
        raise FilterError(f"Could not parse fact {text!r}: it is not a string")
    if "\n" in text or "\r" in text:
        raise FilterError(f"Could not parse fact {text!r}: it contains a line break")
    stripped = text.strip()
    for rule, operator in _FACT_RULES:
        found = rule.fullmatch(stripped) if operator == "=~/" else rule.match(stripped)
        if not found:
            continue
        if operator is None:
            fact, op, value = found.group(1), found.group(2), found.group(3)
        elif operator == "=~/":
            fact, op, value = found.group(1), "=~", f"/{found.group(2)}/"
        else:
            fact, op, value = found.group(1), operator, found.group(2)
        flt = FactFilter(fact, op, value)
        _check_fact(flt)
        return flt
    raise FilterError(f"Could not parse fact {text!r}: it does not appear to be in a valid format")


def parse_with(word: str) -> FactFilter | str:
    """One word of ``-W``: a :class:`FactFilter` if it parses as a fact, else a class."""
    if not isinstance(word, str) or not word.strip():
        raise FilterError("an empty -W word is neither a fact nor a class")
    try:
        return parse_fact(word)
    except FilterError:
        word = word.strip()
        _check_value("class", word)
        return word


# -- regular expressions -----------------------------------------------------------

def _is_regex(value: str) -> bool:
    return len(value) >= 2 and value.startswith("/") and value.endswith("/")


def _strip_slashes(value: str) -> str:
    return value[1:-1] if _is_regex(value) else value


_QUANT_AFTER = re.compile(r"[+*]|\{(\d*),(\d*)\}|\{(\d+)\}")


def _repeat_at(pattern: str, i: int) -> tuple[bool, bool, int]:
    """Is there a quantifier at ``i``: (repeats more than once, unbounded, length)."""
    found = _QUANT_AFTER.match(pattern, i)
    if not found:
        return False, False, 0
    token = found.group(0)
    if token in "+*":
        return True, True, len(token)
    if found.group(3) is not None:  # {n}
        return int(found.group(3)) > 1, False, len(token)
    upper = found.group(2)
    if upper == "":  # {n,}
        return True, True, len(token)
    return int(upper) > 1, False, len(token)


def _nested_quantifier(pattern: str) -> bool:
    """A heuristic for catastrophic backtracking: a repeated group that contains an
    unbounded quantifier, such as ``(a+)+``, ``(a*)*``, ``(\\w+\\s?)*`` or ``(.*){2,}``.

    It does not catch every slow pattern (``(a|aa)+`` or ``.*.*.*=`` get through).
    """
    stack: list[bool] = []  # per open group: does it contain an unbounded quantifier?
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":  # a character class: quantifier characters inside are literal
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            continue
        if ch == "(":
            stack.append(False)
            i += 1
            continue
        if ch == ")":
            inner = stack.pop() if stack else False
            i += 1
            repeats, unbounded, length = _repeat_at(pattern, i)
            if repeats and inner:
                return True
            i += length
            if unbounded or inner:
                if stack:
                    stack[-1] = True
            continue
        repeats, unbounded, length = _repeat_at(pattern, i)
        if length:
            if unbounded and stack:
                stack[-1] = True
            i += length
            if i < n and pattern[i] in "?+":  # lazy / possessive suffix
                i += 1
            continue
        i += 1
    return False


@lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a pattern for Python's backtracking :mod:`re`, refusing long and
    known-catastrophic ones (cached).

    Not for request filters, which use :func:`filter_regex` (RE2, linear time):
    this heuristic does not catch every slow pattern (``(a|aa)+$`` gets through).
    It is for patterns that need :mod:`re` and are either written by the node's
    admin (policy caller regexes) or matched where a timeout can stop them (the
    process agent matches in a child process it kills). The length is capped at
    :data:`MAX_REGEX_CHARS` and nested quantifiers (``(a+)+``) are refused.
    """
    if len(pattern) > MAX_REGEX_CHARS:
        raise FilterError(f"regular expression is longer than {MAX_REGEX_CHARS} characters")
    if _nested_quantifier(pattern):
        raise FilterError(f"regular expression /{pattern}/ has nested quantifiers "
                          "(like (a+)+) that can take exponential time; rewrite it")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise FilterError(f"invalid regular expression /{pattern}/: {exc}") from None


#: RE2 errors -> what to tell the user.
_RE2_HINTS = (
    ("invalid perl operator: (?=", "lookahead is not supported"),
    ("invalid perl operator: (?!", "lookahead is not supported"),
    ("invalid perl operator: (?<", "lookbehind is not supported"),
    ("invalid perl operator: (?>", "atomic groups are not supported"),
    ("invalid perl operator: (?#", "comments are not supported"),
    ("invalid perl operator: (?x", "verbose mode (?x) is not supported"),
    ("invalid escape sequence: \\Z", "write \\z for the end of the text"),
    ("bad repetition operator: ++", "possessive quantifiers are not supported"),
    ("bad repetition operator: *+", "possessive quantifiers are not supported"),
    ("bad repetition operator: ?+", "possessive quantifiers are not supported"),
    ("invalid repetition size", "a repetition count is over 1000 or repetitions nest too deep"),
    ("pattern too large", "the compiled pattern is too large"),
)


class _Regex:
    """A compiled RE2 pattern: ``search(text) -> bool`` without capture groups."""

    __slots__ = ("_match", "pattern", "program_size")

    def __init__(self, pattern: str, compiled: Any) -> None:
        #: the pattern as written
        self.pattern = pattern
        #: RE2 instructions: the cost of a search is at most ``len(text) * (256 + this)``
        self.program_size = int(compiled.programsize)
        raw = compiled._regexp  # one C++ call per search, no match object
        anchor = type(raw).Anchor.UNANCHORED
        match = raw.Match

        def search(data: bytes) -> bool:
            return match(anchor, data, 0, len(data))[0][0] != -1

        self._match = search

    def search(self, text: str) -> bool:
        """Does the pattern match anywhere in ``text`` (``re.search`` semantics)?"""
        return self._match(text.encode("utf-8", "surrogatepass"))

    def __repr__(self) -> str:
        return f"<filter regex /{self.pattern}/, {self.program_size} instructions>"


def _re2() -> Any:
    try:
        import re2
    except ImportError:  # pragma: no cover - a dependency of collective-core
        raise FilterError("regular expressions in filters need the google-re2 package "
                          "(a dependency of collective-core): pip install google-re2") from None
    return re2


@lru_cache(maxsize=1024)
def _compile_filter_regex(pattern: str) -> _Regex | str:
    """The compiled pattern, or the reason it is refused (cached either way)."""
    if not isinstance(pattern, str):
        return "a regular expression must be a string"
    if len(pattern) > MAX_REGEX_CHARS:
        return f"regular expression is longer than {MAX_REGEX_CHARS} characters"
    re2 = _re2()
    options = re2.Options()
    options.log_errors = False  # RE2 would print to stderr
    options.never_capture = True  # only "does it match": the DFA alone
    options.max_mem = REGEX_MAX_MEM
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else str(exc)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        hint = next((h for marker, h in _RE2_HINTS if marker in reason), None)
        why = f"{reason}; {hint}" if hint else reason
        return (f"invalid regular expression /{pattern}/ for RE2, the linear-time engine "
                f"filters use: {why}")
    except (TypeError, ValueError) as exc:
        return f"invalid regular expression /{pattern}/: {exc}"
    regex = _Regex(pattern, compiled)
    if regex.program_size > MAX_REGEX_PROGRAM:
        return (f"regular expression /{pattern}/ is too complex: {regex.program_size} RE2 "
                f"instructions, at most {MAX_REGEX_PROGRAM} (large counted repetitions or "
                "Unicode classes such as \\pL make big programs)")
    return regex


def filter_regex(pattern: str, budget: Budget | None = None) -> _Regex:
    """Compile a filter regular expression with RE2 (cached); see the module docstring.

    :param budget: checked after a compilation (a cache miss), which can take a
        few milliseconds for large patterns
    :raises FilterError: the pattern is too long, too complex or not RE2 syntax
    """
    result = _compile_filter_regex(pattern)
    if budget is not None:
        budget.check()
    if isinstance(result, str):
        raise FilterError(result)
    return result


# -- validation ---------------------------------------------------------------------

def _check_value(kind: str, value: Any, compile: bool = True) -> None:
    if not isinstance(value, str):
        raise FilterError(f"{kind} filter entries must be strings, not {type(value).__name__}")
    if not value:
        raise FilterError(f"{kind} filter entries must not be empty")
    if len(value) > MAX_VALUE_CHARS:
        raise FilterError(f"{kind} filter entry is longer than {MAX_VALUE_CHARS} characters")
    if value.startswith("/"):
        if not _is_regex(value):
            raise FilterError(f"{kind} filter {value!r} starts with '/' but does not end with "
                              "one; write a regular expression as /re/")
        if compile:
            filter_regex(_strip_slashes(value))


def _check_fact(flt: FactFilter, compile: bool = True) -> None:
    for name, val in (("fact name", flt.fact), ("fact value", flt.value)):
        if not isinstance(val, str):
            raise FilterError(f"{name} must be a string, not {type(val).__name__}")
        if len(val) > MAX_VALUE_CHARS:
            raise FilterError(f"{name} is longer than {MAX_VALUE_CHARS} characters")
    if not flt.fact:
        raise FilterError("fact name must not be empty")
    if flt.operator not in OPERATORS:
        raise FilterError(f"unknown fact operator {flt.operator!r} (known: {' '.join(OPERATORS)})")
    if flt.operator == "=~" and compile:
        filter_regex(_strip_slashes(flt.value))


def _fact_from_dict(item: Any) -> FactFilter:
    if not isinstance(item, Mapping):
        raise FilterError(f"fact filter entries must be objects, not {type(item).__name__}")
    keys = set(item)
    if keys != {"fact", "operator", "value"}:
        extra = sorted(map(str, keys - {"fact", "operator", "value"}))
        missing = sorted({"fact", "operator", "value"} - keys)
        what = f"unknown key(s) {', '.join(extra)}" if extra else f"missing {', '.join(missing)}"
        raise FilterError(f"fact filter entry: {what}")
    for key in ("fact", "operator", "value"):
        if not isinstance(item[key], str):
            raise FilterError(f"fact filter entry: {key} must be a string, "
                              f"not {type(item[key]).__name__}")
    flt = FactFilter(item["fact"], item["operator"], item["value"])
    _check_fact(flt, compile=False)  # regexes are compiled after the caps are checked
    return flt


# -- fact lookup and comparison ------------------------------------------------------

_MISSING = object()
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]+")


def _lookup(facts: Mapping[str, Any], path: str) -> Any:
    """The fact at ``path``: a literal top-level key first, then a dotted walk."""
    if path in facts:
        return facts[path]
    if "." not in path:
        return _MISSING
    node: Any = facts
    for part in path.split("."):
        if isinstance(node, Mapping):
            if part not in node:
                return _MISSING
            node = node[part]
        elif (isinstance(node, Sequence) and not isinstance(node, (str, bytes))
              and part.isascii() and part.isdigit()):
            index = int(part)
            if index >= len(node):
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node


def _render(value: Any) -> str:
    """A fact value as the string filters compare: JSON spelling for scalars."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return str(value)


def fact_values(facts: Mapping[str, Any], path: str) -> list[str] | None:
    """The strings a fact filter on ``path`` is tested against, or ``None`` if missing.

    A list gives its elements, a mapping its keys, anything else itself.
    """
    value = _lookup(facts, path)
    if value is _MISSING or value is None:
        return None
    if isinstance(value, Mapping):
        return [_render(key) for key in value]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_render(item) for item in value if item is not None]
    return [_render(value)]


def _typed(left: str, right: str) -> tuple[Any, Any]:
    """Both sides as ints, floats or strings (see the module docstring)."""
    left_int, right_int = _INT.fullmatch(left), _INT.fullmatch(right)
    if left_int and right_int:
        return int(left), int(right)
    if (left_int or _FLOAT.fullmatch(left)) and (right_int or _FLOAT.fullmatch(right)):
        return float(left), float(right)
    return left, right


def _compare(actual: str, operator: str, wanted: str, budget: Budget = UNLIMITED) -> bool:
    if operator == "==":
        budget.step()
        return actual == wanted
    if operator == "=~":
        return budget.search(filter_regex(_strip_slashes(wanted)), actual)
    budget.step()
    left, right = _typed(actual, wanted)
    if operator == "!=":
        return bool(left != right)
    if operator == "<":
        return bool(left < right)
    if operator == ">":
        return bool(left > right)
    if operator == "<=":
        return bool(left <= right)
    if operator == ">=":
        return bool(left >= right)
    raise FilterError(f"unknown fact operator {operator!r}")


def _match_name(pattern: str, names: Sequence[str] | frozenset[str],
                budget: Budget = UNLIMITED) -> bool:
    if _is_regex(pattern):
        regex = filter_regex(_strip_slashes(pattern))
        return any(budget.search(regex, name) for name in names)
    budget.step()
    return pattern in names


def _values(node: NodeInfo, path: str, budget: Budget) -> list[str] | None:
    """:func:`fact_values`, once per fact and evaluation (``budget.memo``)."""
    memo = budget.memo
    if memo is None:
        return fact_values(node.facts, path)
    key = ("fact", path)
    if key not in memo:
        values = fact_values(node.facts, path)
        budget.step(len(values) if values else 1)  # rendering a long list costs
        memo[key] = values
    return memo[key]


# -- the filter ----------------------------------------------------------------------

@dataclass(frozen=True)
class FilterCost:
    """What a valid filter costs, from :meth:`Filter.validate`."""

    #: fact, class and agent entries, identity regexes and ``-S`` statements
    terms: int
    #: regular expressions
    regexes: int
    #: distinct data plugin calls: ``(function, arguments)``
    calls: frozenset[tuple[str, tuple[str, ...]]]
    #: characters in all the filter's strings
    chars: int

    @property
    def functions(self) -> set[str]:
        """The data plugin names the filter calls."""
        return {name for name, _ in self.calls}


@dataclass(frozen=True)
class NodeInfo:
    """What a node knows about itself when it evaluates a filter.

    ``data(name, argument)`` answers compound filter functions such as
    ``fstat("/etc/hosts")`` with the plugin's outputs, or None when the plugin
    is unknown or failed (:class:`collective.data.DataResolver`). Without it,
    an expression that calls a function does not match.
    """

    identity: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    classes: Sequence[str] = ()
    agents: Sequence[str] = ()
    data: Callable[[str, str | None], dict[str, Any] | None] | None = None


_OP_WORDS = {
    "==": "is", "!=": "is not", "=~": "matches", "<": "is less than",
    ">": "is greater than", "<=": "is at most", ">=": "is at least",
}


@dataclass
class Filter:
    """A request filter; see the module docstring for the matching rules."""

    fact: list[FactFilter] = field(default_factory=list)
    cf_class: list[str] = field(default_factory=list)
    identity: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)
    #: ``-S`` expressions, as text
    compound: list[str] = field(default_factory=list)

    # -- wire form ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The wire form; raises :class:`FilterError` if the filter is invalid."""
        self.validate()
        return {
            "fact": [f.to_dict() for f in self.fact],
            "cf_class": list(self.cf_class),
            "identity": list(self.identity),
            "agent": list(self.agent),
            "compound": list(self.compound),
        }

    @classmethod
    def from_dict(cls, data: Any, budget: Budget | None = None) -> Filter:
        """Parse and strictly validate the wire form (``None`` is the empty filter).

        Unknown keys, wrong types, more than :data:`MAX_ENTRIES` entries in a list,
        values over :data:`MAX_VALUE_CHARS` characters, a filter over the caps of
        :meth:`validate`, bad regexes and ``compound`` expressions that do not parse
        (syntax and limits only: the node does not know the client's functions) all
        raise :class:`FilterError`. Missing keys are empty.

        :param budget: the node's budget for this filter (parsing and compiling count)
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise FilterError(f"a filter must be an object, not {type(data).__name__}")
        unknown = sorted(map(str, set(data) - set(FILTER_KEYS)))
        if unknown:
            raise FilterError(f"unknown filter key(s): {', '.join(unknown)} "
                              f"(known: {', '.join(FILTER_KEYS)})")
        lists: dict[str, list[Any]] = {}
        for key in FILTER_KEYS:
            value = data.get(key, [])
            if not isinstance(value, list):
                raise FilterError(f"filter {key} must be a list, not {type(value).__name__}")
            if len(value) > MAX_ENTRIES:
                raise FilterError(f"filter {key} has {len(value)} entries; at most "
                                  f"{MAX_ENTRIES} are allowed")
            lists[key] = value
        flt = cls(fact=[_fact_from_dict(item) for item in lists["fact"]],
                  cf_class=list(lists["cf_class"]), identity=list(lists["identity"]),
                  agent=list(lists["agent"]), compound=list(lists["compound"]))
        flt.validate(budget)
        return flt

    def validate(self, budget: Budget | None = None) -> FilterCost:
        """Raise :class:`FilterError` if any entry is malformed, or the filter is over
        the caps (:data:`MAX_TERMS`, :data:`MAX_REGEXES`, :data:`MAX_DATA_CALLS`,
        :data:`MAX_FILTER_CHARS`, 4 KiB of ``-S`` text); returns what it costs.

        The cheap checks come first: sizes, then parsing, then compiling regexes.
        """
        compound = _compound()
        for key in FILTER_KEYS:
            if len(getattr(self, key)) > MAX_ENTRIES:
                raise FilterError(f"filter {key} has more than {MAX_ENTRIES} entries")
        chars = 0
        regexes: list[str] = []
        for item in self.fact:
            if not isinstance(item, FactFilter):
                raise FilterError(f"fact filter entries must be FactFilter, not {type(item).__name__}")
            _check_fact(item, compile=False)
            chars += len(item.fact) + len(item.value)
            if item.operator == "=~":
                regexes.append(_strip_slashes(item.value))
        terms = len(self.fact)
        for kind, values in (("class", self.cf_class), ("identity", self.identity),
                             ("agent", self.agent)):
            for value in values:
                _check_value(kind, value, compile=False)
                chars += len(value)
                if _is_regex(value):
                    regexes.append(_strip_slashes(value))
                    terms += 1
                elif kind != "identity":
                    terms += 1
        texts = 0
        for expr in self.compound:
            if not isinstance(expr, str):
                raise FilterError(f"compound filter entries must be strings, not {type(expr).__name__}")
            texts += len(expr)
        chars += texts
        if chars > MAX_FILTER_CHARS:
            raise FilterError(f"the filter is {chars} characters long; at most "
                              f"{MAX_FILTER_CHARS} are allowed")
        if texts > compound.MAX_CHARS:
            raise FilterError(f"the -S expressions are {texts} characters long together; at "
                              f"most {compound.MAX_CHARS} are allowed")
        calls: set[tuple[str, tuple[str, ...]]] = set()
        for text in self.compound:
            cost = compound.expression_cost(compound.parse_cached(text))
            if budget is not None:
                budget.check()
            terms += cost.terms
            regexes.extend(cost.regexes)
            calls |= cost.calls
        if terms > MAX_TERMS:
            raise FilterError(f"the filter has {terms} terms; at most {MAX_TERMS} are allowed "
                              "(fact, class and agent filters, identity regexes and -S statements)")
        if len(regexes) > MAX_REGEXES:
            raise FilterError(f"the filter has {len(regexes)} regular expressions; at most "
                              f"{MAX_REGEXES} are allowed")
        if len(calls) > MAX_DATA_CALLS:
            raise FilterError(f"the filter calls data plugins with {len(calls)} different "
                              f"arguments; at most {MAX_DATA_CALLS} are allowed")
        for pattern in regexes:
            filter_regex(pattern, budget)
        return FilterCost(terms=terms, regexes=len(regexes), calls=frozenset(calls), chars=chars)

    # -- questions -----------------------------------------------------------------
    def is_empty(self) -> bool:
        """True when the filter matches every node."""
        return not (self.fact or self.cf_class or self.identity or self.agent or self.compound)

    def is_identity_only(self) -> bool:
        """True for a list of exact identities and nothing else: direct addressing,
        no discovery needed."""
        return (bool(self.identity) and not any(_is_regex(i) for i in self.identity)
                and not (self.fact or self.cf_class or self.agent or self.compound))

    def _simple_match(self, node: NodeInfo, budget: Budget) -> bool:
        """Identity, agent, class and fact entries (everything but ``compound``)."""
        if self.identity and not any(_match_name(i, (node.identity,), budget)
                                     for i in self.identity):
            return False
        if self.agent:
            agents = frozenset([*node.agents, "discovery"])
            if not all(_match_name(a, agents, budget) for a in self.agent):
                return False
        if self.cf_class:
            classes = frozenset(node.classes)
            budget.step(len(classes))
            if not all(_match_name(c, classes, budget) for c in self.cf_class):
                return False
        for flt in self.fact:
            values = _values(node, flt.fact, budget)
            if values is None:
                return False
            if not any(_compare(v, flt.operator, flt.value, budget) for v in values):
                return False
        return True

    def matches(self, node: NodeInfo, budget: Budget | None = None) -> bool:
        """Does ``node`` match? Identities OR-ed, everything else AND-ed.

        Compound expressions are evaluated last, calling data plugins through
        ``node.data``; one that does not parse raises :class:`FilterError`.

        :param budget: what the evaluation may spend (default: unlimited)
        :raises FilterBudgetExceeded: the budget ran out
        """
        budget = budget or UNLIMITED
        if not self._simple_match(node, budget):
            return False
        if self.compound:
            compound = _compound()
            for text in self.compound:
                if not isinstance(text, str):
                    raise FilterError("compound filter entries must be strings")
                if not compound.evaluate(compound.parse_cached(text), node, budget):
                    return False
        return True

    def evaluate(self, node: NodeInfo, budget: Budget | None = None) -> bool | None:
        """Like :meth:`matches`, but a data plugin call that ``node.data`` defers
        (raises :class:`collective.compound.Deferred`) is *unknown*: the answer is
        True or False when the rest of the filter decides, else None.

        Nodes use it on their receive thread to find out whether a filter needs
        data plugins (which run only for authorized callers, elsewhere) at all.
        """
        budget = budget or UNLIMITED
        if not self._simple_match(node, budget):
            return False
        unknown = False
        if self.compound:
            compound = _compound()
            for text in self.compound:
                if not isinstance(text, str):
                    raise FilterError("compound filter entries must be strings")
                result = compound.evaluate3(compound.parse_cached(text), node, budget)
                if result is False:
                    return False
                unknown = unknown or result is None
        return None if unknown else True

    def describe(self) -> str:
        """Plain English, one clause per filter entry (identities form one clause)."""
        clauses: list[str] = []
        if self.identity:
            clauses.append(" or ".join(
                f"identity matches {i}" if _is_regex(i) else f"identity is {i}"
                for i in self.identity))
        for klass in self.cf_class:
            clauses.append(f"has a class matching {klass}" if _is_regex(klass)
                           else f"has class {klass}")
        for agent in self.agent:
            clauses.append(f"has an agent matching {agent}" if _is_regex(agent)
                           else f"has agent {agent}")
        for flt in self.fact:
            value = flt.value
            if flt.operator == "=~" and not _is_regex(value):
                value = f"/{value}/"
            clauses.append(f"fact {flt.fact} {_OP_WORDS.get(flt.operator, flt.operator)} {value}")
        if self.compound:
            compound = _compound()
            for text in self.compound:
                expr = compound.parse_cached(text)
                words = compound.describe(expr)
                clauses.append(f"({words})" if isinstance(expr, compound.Or) else words)
        if not clauses:
            return "every node"
        if len(self.identity) > 1 and len(clauses) > 1:
            clauses[0] = f"({clauses[0]})"
        return " and ".join(clauses)


def _compound() -> Any:
    """:mod:`collective.compound`, imported on first use (it imports this module)."""
    from . import compound

    return compound
