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
  every node answers, and MCollective's pseudo-agent ``mcollective``, which every
  node has (``-A mcollective`` matches the whole fleet).
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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from . import compound
from .matching import (
    DEFAULT_CPU_BUDGET,
    MAX_REGEX_CHARS,
    MAX_REGEX_PROGRAM,
    REGEX_MAX_MEM,
    SEARCH_UNIT_SECONDS,
    UNLIMITED,
    Budget,
    FilterBudgetExceeded,
    FilterError,
    NodeInfo,
    compare,
    fact_values,
    filter_regex,
    is_regex,
    match_name,
    node_fact_values,
    strip_slashes,
)

# Budget, FilterError, FilterBudgetExceeded, NodeInfo, filter_regex, fact_values and the
# regex and CPU limits are defined in collective.matching (shared with collective.compound
# and collective.data) and importable from here as they always were.

__all__ = [
    "Budget",
    "DEFAULT_CPU_BUDGET",
    "FactFilter",
    "Filter",
    "FilterBudgetExceeded",
    "FilterCost",
    "FilterError",
    "MAX_REGEX_CHARS",
    "MAX_REGEX_PROGRAM",
    "NodeInfo",
    "OPERATORS",
    "REGEX_MAX_MEM",
    "SEARCH_UNIT_SECONDS",
    "UNLIMITED",
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


# -- regular expressions for Python's re (filters themselves use RE2: collective.matching)

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


# -- validation ---------------------------------------------------------------------

def _check_value(kind: str, value: Any, compile: bool = True) -> None:
    if not isinstance(value, str):
        raise FilterError(f"{kind} filter entries must be strings, not {type(value).__name__}")
    if not value:
        raise FilterError(f"{kind} filter entries must not be empty")
    if len(value) > MAX_VALUE_CHARS:
        raise FilterError(f"{kind} filter entry is longer than {MAX_VALUE_CHARS} characters")
    if value.startswith("/"):
        if not is_regex(value):
            raise FilterError(f"{kind} filter {value!r} starts with '/' but does not end with "
                              "one; write a regular expression as /re/")
        if compile:
            filter_regex(strip_slashes(value))


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
        filter_regex(strip_slashes(flt.value))


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
                regexes.append(strip_slashes(item.value))
        terms = len(self.fact)
        for kind, values in (("class", self.cf_class), ("identity", self.identity),
                             ("agent", self.agent)):
            for value in values:
                _check_value(kind, value, compile=False)
                chars += len(value)
                if is_regex(value):
                    regexes.append(strip_slashes(value))
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
        return (bool(self.identity) and not any(is_regex(i) for i in self.identity)
                and not (self.fact or self.cf_class or self.agent or self.compound))

    def _simple_match(self, node: NodeInfo, budget: Budget) -> bool:
        """Identity, agent, class and fact entries (everything but ``compound``)."""
        if self.identity and not any(match_name(i, (node.identity,), budget)
                                     for i in self.identity):
            return False
        if self.agent:
            # "mcollective" is MCollective's pseudo-agent every node has (-A mcollective)
            agents = frozenset([*node.agents, "discovery", "mcollective"])
            if not all(match_name(a, agents, budget) for a in self.agent):
                return False
        if self.cf_class:
            classes = frozenset(node.classes)
            budget.step(len(classes))
            if not all(match_name(c, classes, budget) for c in self.cf_class):
                return False
        for flt in self.fact:
            values = node_fact_values(node, flt.fact, budget)
            if values is None:
                return False
            if not any(compare(v, flt.operator, flt.value, budget) for v in values):
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
                f"identity matches {i}" if is_regex(i) else f"identity is {i}"
                for i in self.identity))
        for klass in self.cf_class:
            clauses.append(f"has a class matching {klass}" if is_regex(klass)
                           else f"has class {klass}")
        for agent in self.agent:
            clauses.append(f"has an agent matching {agent}" if is_regex(agent)
                           else f"has agent {agent}")
        for flt in self.fact:
            value = flt.value
            if flt.operator == "=~" and not is_regex(value):
                value = f"/{value}/"
            clauses.append(f"fact {flt.fact} {_OP_WORDS.get(flt.operator, flt.operator)} {value}")
        if self.compound:
            for text in self.compound:
                expr = compound.parse_cached(text)
                words = compound.describe(expr)
                clauses.append(f"({words})" if isinstance(expr, compound.Or) else words)
        if not clauses:
            return "every node"
        if len(self.identity) > 1 and len(clauses) > 1:
            clauses[0] = f"({clauses[0]})"
        return " and ".join(clauses)
