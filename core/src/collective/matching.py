"""Filter matching: how one filter value is tested on a node, shared by every kind of filter.

:mod:`collective.filters` (``-F -C -I -A -W``), :mod:`collective.compound` (``-S``), the
data plugins (:mod:`collective.data`) and the CLI (``mco describe-filter``) all match with
the functions here, so a fact, a class or a regular expression means the same thing in
each of them. The rules themselves are written down once, in :mod:`collective.filters`;
in short:

* a value written ``/re/`` is a regular expression (:func:`is_regex`); only the
  surrounding slashes are removed (:func:`strip_slashes`);
* regular expressions run on RE2 (:func:`filter_regex`): linear time, no backtracking,
  at most :data:`MAX_REGEX_CHARS` characters and :data:`MAX_REGEX_PROGRAM` instructions;
* a fact is a literal top-level key or a dotted path (:func:`lookup_fact`, which returns
  :data:`MISSING` when there is none); values are compared as the strings
  :func:`render_value` makes (JSON spelling: ``true``, not ``True``), a list by its
  elements and a mapping by its keys (:func:`fact_values`);
* ``== =~ != < > <= >=`` compare as integers, floats or strings (:func:`compare`);
  class, identity and agent entries are exact names or ``/re/`` (:func:`match_name`);
* everything a node evaluates is paid for from a :class:`Budget` of CPU time, and a
  filter that runs out does not match (:class:`FilterBudgetExceeded`).

This module imports nothing else of collective's, so every filter module can import it.
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
    "DEFAULT_CPU_BUDGET",
    "FilterBudgetExceeded",
    "FilterError",
    "FilterRegex",
    "MAX_REGEX_CHARS",
    "MAX_REGEX_PROGRAM",
    "MISSING",
    "NodeInfo",
    "REGEX_MAX_MEM",
    "SEARCH_UNIT_SECONDS",
    "UNLIMITED",
    "compare",
    "fact_values",
    "filter_regex",
    "is_regex",
    "lookup_fact",
    "match_name",
    "node_fact_values",
    "render_value",
    "strip_slashes",
]

#: At most this many characters in a regular expression.
MAX_REGEX_CHARS = 256
#: At most this many RE2 instructions in one compiled regular expression (``\pL``
#: alone has about 1,200; ``.{0,1000}x`` about 9,000).
MAX_REGEX_PROGRAM = 4096
#: RE2's memory limit per pattern: a bigger program fails to compile early.
REGEX_MAX_MEM = 1 << 20
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


# -- the node's view of itself -------------------------------------------------------

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


# -- regular expressions -----------------------------------------------------------

def is_regex(value: str) -> bool:
    """Is a filter value a regular expression, written ``/re/``?"""
    return len(value) >= 2 and value.startswith("/") and value.endswith("/")


def strip_slashes(value: str) -> str:
    """The pattern of a ``/re/`` value (only the surrounding slashes go); other values as given."""
    return value[1:-1] if is_regex(value) else value


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


class FilterRegex:
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
def _compile_filter_regex(pattern: str) -> FilterRegex | str:
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
    regex = FilterRegex(pattern, compiled)
    if regex.program_size > MAX_REGEX_PROGRAM:
        return (f"regular expression /{pattern}/ is too complex: {regex.program_size} RE2 "
                f"instructions, at most {MAX_REGEX_PROGRAM} (large counted repetitions or "
                "Unicode classes such as \\pL make big programs)")
    return regex


def filter_regex(pattern: str, budget: Budget | None = None) -> FilterRegex:
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


# -- fact lookup and comparison ------------------------------------------------------

#: What :func:`lookup_fact` returns for a fact the node does not have (``None`` is a
#: fact whose value is null; neither ever matches a fact filter).
MISSING = object()
_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?[0-9]+\.[0-9]+")


def lookup_fact(facts: Mapping[str, Any], path: str) -> Any:
    """The fact at ``path``: a literal top-level key first, then a dotted walk."""
    if path in facts:
        return facts[path]
    if "." not in path:
        return MISSING
    node: Any = facts
    for part in path.split("."):
        if isinstance(node, Mapping):
            if part not in node:
                return MISSING
            node = node[part]
        elif (isinstance(node, Sequence) and not isinstance(node, (str, bytes))
              and part.isascii() and part.isdigit()):
            index = int(part)
            if index >= len(node):
                return MISSING
            node = node[index]
        else:
            return MISSING
    return node


def render_value(value: Any) -> str:
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
    value = lookup_fact(facts, path)
    if value is MISSING or value is None:
        return None
    if isinstance(value, Mapping):
        return [render_value(key) for key in value]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [render_value(item) for item in value if item is not None]
    return [render_value(value)]


def _typed(left: str, right: str) -> tuple[Any, Any]:
    """Both sides as ints, floats or strings (see :mod:`collective.filters`)."""
    left_int, right_int = _INT.fullmatch(left), _INT.fullmatch(right)
    if left_int and right_int:
        return int(left), int(right)
    if (left_int or _FLOAT.fullmatch(left)) and (right_int or _FLOAT.fullmatch(right)):
        return float(left), float(right)
    return left, right


def compare(actual: str, operator: str, wanted: str, budget: Budget = UNLIMITED) -> bool:
    """One fact comparison, ``actual operator wanted``, with the rules of ``-F``.

    ``==`` is string equality; ``=~`` an unanchored RE2 search for ``wanted`` (slashes
    removed); ``!= < > <= >=`` compare as integers, as floats or as strings.

    :raises FilterError: an unknown operator or an invalid regular expression
    :raises FilterBudgetExceeded: ``budget`` ran out
    """
    if operator == "==":
        budget.step()
        return actual == wanted
    if operator == "=~":
        return budget.search(filter_regex(strip_slashes(wanted)), actual)
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


def match_name(pattern: str, names: Sequence[str] | frozenset[str],
               budget: Budget = UNLIMITED) -> bool:
    """Does a class, identity or agent entry match one of ``names``? An exact name, or
    ``/re/`` searched in each name."""
    if is_regex(pattern):
        regex = filter_regex(strip_slashes(pattern))
        return any(budget.search(regex, name) for name in names)
    budget.step()
    return pattern in names


def node_fact_values(node: NodeInfo, path: str, budget: Budget) -> list[str] | None:
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
