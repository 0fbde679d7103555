"""Request filters: which nodes act on a request (MCollective's -F/-C/-I/-A/-W).

A request carries a filter; every node evaluates it against its own identity,
facts, classes and agents and silently ignores the request when it does not
match. The wire form (``docs/contracts.md``)::

    {"fact": [{"fact": "role", "operator": "==", "value": "web"}],
     "cf_class": ["/^role::/"], "identity": ["node-001"], "agent": ["rpcutil"],
     "compound": []}

Semantics (MCollective 2.x, REFERENCE.md §2a):

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
* ``=~`` is an unanchored, case-sensitive :func:`re.search`; surrounding
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
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "FactFilter",
    "Filter",
    "FilterError",
    "NodeInfo",
    "OPERATORS",
    "compile_regex",
    "fact_values",
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


class FilterError(ValueError):
    """A filter that cannot be parsed, is malformed on the wire, or is unsafe."""


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
    """Parse ``-F`` text with MCollective's rules (REFERENCE.md §2a).

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
    """Compile a filter regex once (cached), refusing long and known-catastrophic ones.

    Python's :mod:`re` has no match timeout, so a pathological pattern could
    pin a node's receive thread. We cap the length at :data:`MAX_REGEX_CHARS`
    and refuse nested quantifiers (``(a+)+``); values matched against are facts,
    classes and identities, which are short.
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

def _check_value(kind: str, value: Any) -> None:
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
        compile_regex(_strip_slashes(value))


def _check_fact(flt: FactFilter) -> None:
    for name, val in (("fact name", flt.fact), ("fact value", flt.value)):
        if not isinstance(val, str):
            raise FilterError(f"{name} must be a string, not {type(val).__name__}")
        if len(val) > MAX_VALUE_CHARS:
            raise FilterError(f"{name} is longer than {MAX_VALUE_CHARS} characters")
    if not flt.fact:
        raise FilterError("fact name must not be empty")
    if flt.operator not in OPERATORS:
        raise FilterError(f"unknown fact operator {flt.operator!r} (known: {' '.join(OPERATORS)})")
    if flt.operator == "=~":
        compile_regex(_strip_slashes(flt.value))


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
    _check_fact(flt)
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


def _compare(actual: str, operator: str, wanted: str) -> bool:
    if operator == "==":
        return actual == wanted
    if operator == "=~":
        return compile_regex(_strip_slashes(wanted)).search(actual) is not None
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


def _match_name(pattern: str, names: Sequence[str]) -> bool:
    if _is_regex(pattern):
        regex = compile_regex(_strip_slashes(pattern))
        return any(regex.search(name) for name in names)
    return pattern in names


# -- the filter ----------------------------------------------------------------------

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
    def from_dict(cls, data: Any) -> Filter:
        """Parse and strictly validate the wire form (``None`` is the empty filter).

        Unknown keys, wrong types, more than :data:`MAX_ENTRIES` entries in a list,
        values over :data:`MAX_VALUE_CHARS` characters, bad or unsafe regexes and
        ``compound`` expressions that do not parse (syntax and limits only: the
        node does not know the client's functions) all raise :class:`FilterError`.
        Missing keys are empty.
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
        flt.validate()
        return flt

    def validate(self) -> None:
        """Raise :class:`FilterError` if any entry is malformed or unsafe."""
        for key in FILTER_KEYS:
            if len(getattr(self, key)) > MAX_ENTRIES:
                raise FilterError(f"filter {key} has more than {MAX_ENTRIES} entries")
        for item in self.fact:
            if not isinstance(item, FactFilter):
                raise FilterError(f"fact filter entries must be FactFilter, not {type(item).__name__}")
            _check_fact(item)
        for kind, values in (("class", self.cf_class), ("identity", self.identity),
                             ("agent", self.agent)):
            for value in values:
                _check_value(kind, value)
        for expr in self.compound:
            if not isinstance(expr, str):
                raise FilterError(f"compound filter entries must be strings, not {type(expr).__name__}")
            _compound().parse_cached(expr)

    # -- questions -----------------------------------------------------------------
    def is_empty(self) -> bool:
        """True when the filter matches every node."""
        return not (self.fact or self.cf_class or self.identity or self.agent or self.compound)

    def is_identity_only(self) -> bool:
        """True for a list of exact identities and nothing else: direct addressing,
        no discovery needed."""
        return (bool(self.identity) and not any(_is_regex(i) for i in self.identity)
                and not (self.fact or self.cf_class or self.agent or self.compound))

    def matches(self, node: NodeInfo) -> bool:
        """Does ``node`` match? Identities OR-ed, everything else AND-ed.

        Compound expressions are evaluated last (they may call data plugins);
        one that does not parse raises :class:`FilterError`.
        """
        if self.identity and not any(_match_name(i, [node.identity]) for i in self.identity):
            return False
        if self.agent:
            agents = [*node.agents, "discovery"]
            if not all(_match_name(a, agents) for a in self.agent):
                return False
        if self.cf_class:
            classes = list(node.classes)
            if not all(_match_name(c, classes) for c in self.cf_class):
                return False
        for flt in self.fact:
            values = fact_values(node.facts, flt.fact)
            if values is None:
                return False
            if not any(_compare(v, flt.operator, flt.value) for v in values):
                return False
        if self.compound:
            compound = _compound()
            for text in self.compound:
                if not isinstance(text, str):
                    raise FilterError("compound filter entries must be strings")
                if not compound.evaluate(compound.parse_cached(text), node):
                    return False
        return True

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
