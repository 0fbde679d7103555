"""The policy file format of MCollective's actionpolicy plugin, parsed strictly.

A policy file (``<policy_dir>/<agent>.policy``) is read line by line (``\\n``
ends a line; a trailing ``\\r`` is dropped)::

    # a comment (also after leading blanks); blank lines are skipped
    policy default deny
    allow<TAB>cert=admin<TAB>*<TAB>*<TAB>*
    allow<TAB>cert=acme-devs<TAB>enable disable status<TAB>customer=acme<TAB>*
    deny<TAB>*<TAB>restart<TAB>environment=production and not fstat("/etc/maint").present=true

* ``policy default WORD`` (``^policy\\s+default\\s+(\\w+)``, MCollective's regex:
  anything after the word is ignored) may appear anywhere; the last one wins;
  ``allow`` means allow, any other word deny.
* A rule is ``allow`` or ``deny`` followed by 3 or 4 fields, each separated by
  one or more **hard tabs** (a space where a tab belongs is an error, not a
  skipped line): callers, actions, facts and, in a 5-field line, classes.
* callers: ``*``; or caller ids (``cert=alice``, compared as exact tokens) and
  ``/regex/`` caller ids; or group names from the ``groups`` file -- not both
  kinds in one line.
* actions: ``*`` or a space-separated list of action names.
* facts (5-field line): ``*``; space-separated ``fact<op>value`` pairs, all of
  which must match (parsed and compared exactly like ``-F``:
  :func:`collective.filters.parse_fact`, typed int/float/string comparison); or
  a compound ``-S`` expression (:mod:`collective.compound`), recognised when a
  word starts with ``!``, is ``and``/``or``/``not``, or contains a parenthesis
  (so ``puppet().enabled=false`` is compound, which MCollective's ``\\(.+\\)``
  test missed).
* classes (5-field line): ``*``; space-separated class names or ``/regex/``,
  all of which must be present; or a compound expression.
* In a 4-field line the last field is always a compound expression (facts,
  classes and data plugin calls such as ``fstat("/etc/hosts").size>0``).

Where this is stricter than MCollective (which logged and skipped what it could
not use), each is an error with file, line and column: an unparseable line; a
fact field word that is not ``fact<op>value`` (MCollective: a rule that never
matches); a class field word that looks like a fact; ``*`` mixed with other
words; a 4-field line whose last field is ``*`` (MCollective evaluated ``*``
as a class and never matched it; Choria denied); more than 5 fields; group
names mixed with caller ids; a bad regex; a compound expression that does not
parse. :func:`parse_policy` raises one :class:`PolicyError` listing every
error (``exc.errors``); nothing else escapes it, whatever the input.

The ``groups`` file: ``name caller caller ...`` per line (space-separated, name
``^[\\w.\\-]+$``), comments and blank lines as above; a later line for the same
name replaces the earlier one (MCollective's behaviour).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from collective.compound import Expr, FilterSyntaxError
from collective.compound import parse as parse_compound
from collective.compound import render as render_compound
from collective.filters import FactFilter, FilterError, compile_regex, filter_regex, parse_fact

__all__ = [
    "ANY",
    "Callers",
    "Classes",
    "Compound",
    "Default",
    "Facts",
    "Groups",
    "MAX_FILE_BYTES",
    "Policy",
    "PolicyError",
    "Rule",
    "decode",
    "parse_groups",
    "parse_policy",
]

#: Policy and groups files larger than this are refused.
MAX_FILE_BYTES = 1024 * 1024

#: What ``*`` parses to in every field.
ANY = None

_COMMENT = re.compile(r"[ \t\r\f\v]*(?:#.*)?")
_DEFAULT = re.compile(r"policy[ \t\f\v]+default[ \t\f\v]+([A-Za-z0-9_]+)")
_KEYWORD = re.compile(r"(allow|deny)(?=[\t ]|$)")
_FIELD = re.compile(r"[^\t]+")
_WORD = re.compile(r"[^ \t\r\n\f\v]+")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_ACTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LOOKS_LIKE_FACT = re.compile(r".+(?:<|>|=).+")
FIELD_NAMES = ("callers", "actions", "facts", "classes")


class PolicyError(ValueError):
    """A policy or groups file that does not parse.

    ``str()`` is ``path:line:column: message`` (1-based line and column; a tab
    counts as one column). ``errors`` lists every error found in the file, this
    one first.
    """

    def __init__(self, message: str, path: str = "<policy>", line: int = 1, column: int = 1,
                 errors: list[PolicyError] | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        self.errors: list[PolicyError] = errors if errors is not None else [self]
        super().__init__(f"{path}:{line}:{column}: {message}")

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


# -- the model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Callers:
    """The callers field when it is not ``*``."""

    #: the words as written: caller ids and ``/regex/`` (``kind="ids"``) or group names
    tokens: tuple[str, ...]
    kind: Literal["ids", "groups"] = "ids"

    @property
    def exact(self) -> frozenset[str]:
        return frozenset(t for t in self.tokens if not _is_regex(t)) if self.kind == "ids" \
            else frozenset()

    @property
    def regexes(self) -> tuple[str, ...]:
        return tuple(t for t in self.tokens if _is_regex(t)) if self.kind == "ids" else ()

    def render(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True)
class Facts:
    """``fact<op>value`` pairs that must all match (``-F`` semantics)."""

    items: tuple[FactFilter, ...]

    def render(self) -> str:
        return " ".join(f"{f.fact}{f.operator}{f.value}" for f in self.items)


@dataclass(frozen=True)
class Classes:
    """Class names (or ``/regex/``) that must all be present (``-C`` semantics)."""

    items: tuple[str, ...]

    def render(self) -> str:
        return " ".join(self.items)


@dataclass(frozen=True)
class Compound:
    """A compound ``-S`` expression; equality compares the parsed expression."""

    expr: Expr
    text: str = field(default="", compare=False)

    def render(self) -> str:
        return render_compound(self.expr)


Condition = Facts | Classes | Compound | None


@dataclass(frozen=True)
class Rule:
    """One ``allow``/``deny`` line. ``None`` in a field means ``*``."""

    effect: Literal["allow", "deny"]
    callers: Callers | None
    actions: tuple[str, ...] | None
    #: the facts field; in a 4-field line the compound expression
    facts: Facts | Compound | None
    #: the classes field of a 5-field line (None for ``*``); unused in a 4-field line
    classes: Classes | Compound | None = None
    #: 4 for ``allow callers actions expression``, 5 with a classes field
    fields: Literal[4, 5] = 5
    line: int = field(default=0, compare=False)
    #: the line as written (without the line break)
    text: str = field(default="", compare=False)

    @property
    def matches_everything(self) -> bool:
        """``allow|deny * * * *``: no request gets past this line."""
        return (self.fields == 5 and self.callers is None and self.actions is None
                and self.facts is None and self.classes is None)

    def render(self) -> str:
        """The line in canonical form (one tab between fields)."""
        parts = [self.effect, self.callers.render() if self.callers else "*",
                 " ".join(self.actions) if self.actions else "*"]
        parts.append(self.facts.render() if self.facts is not None else "*")
        if self.fields == 5:
            parts.append(self.classes.render() if self.classes is not None else "*")
        return "\t".join(parts)


@dataclass(frozen=True)
class Default:
    """A ``policy default WORD`` line."""

    word: str
    line: int
    text: str
    #: what follows the word (MCollective ignored it)
    rest: str = ""

    @property
    def allow(self) -> bool:
        return self.word == "allow"


@dataclass(frozen=True)
class Policy:
    """A parsed policy file."""

    path: str
    rules: tuple[Rule, ...]
    #: every ``policy default`` line, in order; the last one is in force
    defaults: tuple[Default, ...] = ()

    @property
    def default(self) -> Default | None:
        return self.defaults[-1] if self.defaults else None

    def render(self) -> str:
        head = [f"policy default {self.default.word}"] if self.default else []
        return "\n".join([*head, *(rule.render() for rule in self.rules)]) + "\n"


@dataclass(frozen=True)
class Groups:
    """A parsed ``groups`` file: group name -> caller ids."""

    path: str
    members: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: group name -> the line it was (last) defined on
    lines: Mapping[str, int] = field(default_factory=dict)
    #: names defined more than once: name -> every line
    duplicates: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def has(self, group: str, caller: str) -> bool:
        return caller in self.members.get(group, ())


# -- helpers ---------------------------------------------------------------------------------

def _is_regex(value: str) -> bool:
    return len(value) >= 2 and value.startswith("/") and value.endswith("/")


def _words(text: str, offset: int) -> Iterator[tuple[str, int]]:
    """The space-separated words of a field, each with its 0-based column in the line."""
    for found in _WORD.finditer(text):
        yield found.group(0), offset + found.start()


def decode(data: bytes, path: str) -> str:
    """UTF-8 text, or :class:`PolicyError` at the first undecodable byte."""
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(f"the file is {len(data)} bytes; at most {MAX_FILE_BYTES} are allowed",
                          path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise PolicyError(f"not UTF-8 text ({exc.reason})", path, line, column) from None


class _LineError(Exception):
    """One error on the current line: message and 0-based column."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


# -- the fields ------------------------------------------------------------------------------

def _star(words: list[tuple[str, int]], what: str) -> bool:
    """True for a field that is exactly ``*``; an error when ``*`` is mixed with words."""
    for word, col in words:
        if "*" == word and len(words) > 1:
            raise _LineError(f"'*' must be the whole {what} field, not one word of it", col)
    return len(words) == 1 and words[0][0] == "*"


def _regex(word: str, col: int) -> None:
    if not _is_regex(word):
        raise _LineError(f"{word!r} starts with '/' but does not end with one; write a regular "
                         "expression as /re/", col)
    try:
        compile_regex(word[1:-1])  # the nested-quantifier message users know
        filter_regex(word[1:-1])  # what matching uses: RE2, linear time ((a|a)*$ too)
    except FilterError as exc:
        raise _LineError(str(exc), col) from None


def _callers(words: list[tuple[str, int]]) -> Callers | None:
    if _star(words, "callers"):
        return ANY
    kinds: list[str] = []
    for word, col in words:
        if word.startswith("/"):
            _regex(word, col)
            kind = "ids"
        elif "=" in word:
            kind = "ids"
        elif _GROUP_NAME.fullmatch(word):
            kind = "groups"
        else:
            raise _LineError(f"{word!r} is not a caller id (like cert=alice), a /regex/ or a "
                             "group name", col)
        if kinds and kind != kinds[0]:
            raise _LineError(f"{word!r}: a line may not mix group names and caller ids "
                             "(write two lines)", col)
        kinds.append(kind)
    return Callers(tuple(word for word, _ in words), "groups" if kinds[0] == "groups" else "ids")


def _actions(words: list[tuple[str, int]]) -> tuple[str, ...] | None:
    if _star(words, "actions"):
        return ANY
    for word, col in words:
        if not _ACTION_NAME.fullmatch(word):
            raise _LineError(f"{word!r} is not an action name (separate actions with spaces)", col)
    return tuple(word for word, _ in words)


def _looks_compound(words: list[tuple[str, int]]) -> bool:
    return any(w.startswith("!") or w in ("and", "or", "not") or "(" in w or ")" in w
               for w, _ in words)


def _compound(text: str, offset: int) -> Compound:
    try:
        expr = parse_compound(text)
    except FilterSyntaxError as exc:
        raise _LineError(f"compound expression: {exc.reason}", offset + exc.column - 1) from None
    return Compound(expr, text)


def _facts(text: str, offset: int, words: list[tuple[str, int]]) -> Facts | Compound | None:
    if _star(words, "facts"):
        return ANY
    if _looks_compound(words):
        return _compound(text, offset)
    items = []
    for word, col in words:
        try:
            items.append(parse_fact(word))
        except FilterError as exc:
            hint = " (a class belongs in the 5th field)" if not _LOOKS_LIKE_FACT.fullmatch(word) \
                else ""
            raise _LineError(f"{exc}{hint}", col) from None
    return Facts(tuple(items))


def _classes(text: str, offset: int, words: list[tuple[str, int]]) -> Classes | Compound | None:
    if _star(words, "classes"):
        return ANY
    if _looks_compound(words):
        return _compound(text, offset)
    for word, col in words:
        if word.startswith("/"):
            _regex(word, col)
        elif _LOOKS_LIKE_FACT.fullmatch(word):
            raise _LineError(f"{word!r} looks like a fact comparison, not a class (facts belong "
                             "in the 4th field)", col)
    return Classes(tuple(word for word, _ in words))


def _rule(line: str, lineno: int) -> Rule:
    keyword = _KEYWORD.match(line)
    assert keyword is not None
    effect = keyword.group(1)
    start = keyword.end()
    if start >= len(line):
        raise _LineError(f"expected a tab and the callers after {effect!r}", start)
    if line[start] != "\t":
        raise _LineError(f"expected a tab after {effect!r}, found a space: the fields of a "
                         "policy line are separated by hard tabs", start)
    fields = [(m.group(0), m.start()) for m in _FIELD.finditer(line, start)]
    if len(fields) < 3:
        hint = ""
        where = fields[-1][1] + len(fields[-1][0]) if fields else start
        for text, col in fields:
            space = text.find(" ", len(text) - len(text.lstrip(" ")))
            if space >= 0:
                where = col + space
                hint = "; is there a space where a tab belongs? Fields are separated by hard tabs"
                break
        raise _LineError(f"expected 4 or 5 tab-separated fields (allow|deny, callers, actions, "
                         f"facts[, classes]), found {len(fields) + 1}{hint}", where)
    if len(fields) > 4:
        raise _LineError(f"too many fields: expected at most 5 (allow|deny, callers, actions, "
                         f"facts, classes), found {len(fields) + 1}", fields[4][1])
    parsed: list[tuple[str, int, list[tuple[str, int]]]] = []
    for (text, col), name in zip(fields, FIELD_NAMES, strict=False):
        words = list(_words(text, col))
        if not words:
            raise _LineError(f"the {name} field is empty", col)
        parsed.append((text, col, words))
    callers = _callers(parsed[0][2])
    actions = _actions(parsed[1][2])
    text, col, words = parsed[2]
    if len(parsed) == 3:
        if len(words) == 1 and words[0][0] == "*":
            raise _LineError("in a 4-field line the last field is a compound expression, and '*' "
                             "is not one (MCollective never matched such a line); write "
                             "'*<TAB>*' for any facts and classes", words[0][1])
        try:
            expression = _compound(text, col)
        except _LineError as exc:
            if "  " in text.strip() or words[-1][0] == "*":
                exc.message += " (if this was meant as two fields, separate them with a tab)"
            raise
        return Rule(effect, callers, actions, expression, None, 4, lineno, line)  # type: ignore[arg-type]
    facts = _facts(text, col, words)
    ctext, ccol, cwords = parsed[3]
    classes = _classes(ctext, ccol, cwords)
    return Rule(effect, callers, actions, facts, classes, 5, lineno, line)  # type: ignore[arg-type]


def _lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.split("\n"), 1):
        yield number, line[:-1] if line.endswith("\r") else line


# -- the parsers -----------------------------------------------------------------------------

def parse_policy(text: str | bytes, path: str = "<policy>") -> Policy:
    """Parse a policy file.

    :raises PolicyError: the first error, with every error of the file in
        ``errors`` (nothing else is raised, whatever ``text`` holds)
    """
    if isinstance(text, (bytes, bytearray)):
        text = decode(bytes(text), path)
    elif len(text) > MAX_FILE_BYTES:
        raise PolicyError(f"the file is {len(text)} characters; at most {MAX_FILE_BYTES} are "
                          "allowed", path)
    rules: list[Rule] = []
    defaults: list[Default] = []
    errors: list[PolicyError] = []
    for number, line in _lines(text):
        if _COMMENT.fullmatch(line):
            continue
        try:
            found = _DEFAULT.match(line)
            if found:
                defaults.append(Default(found.group(1), number, line, line[found.end():]))
            elif line.startswith("policy"):
                raise _LineError("expected 'policy default allow' or 'policy default deny'", 0)
            elif _KEYWORD.match(line):
                rules.append(_rule(line, number))
            else:
                raise _LineError("cannot parse this line: expected a comment, 'policy default "
                                 "allow|deny', or an allow/deny rule with tab-separated fields",
                                 len(line) - len(line.lstrip(" \t")))
        except _LineError as exc:
            errors.append(PolicyError(exc.message, path, number, exc.column + 1))
    if errors:
        first = errors[0]
        raise PolicyError(first.message, path, first.line, first.column, errors)
    return Policy(path, tuple(rules), tuple(defaults))


def parse_groups(text: str | bytes, path: str = "groups") -> Groups:
    """Parse a ``groups`` file (``name caller caller ...`` per line).

    :raises PolicyError: as :func:`parse_policy`
    """
    if isinstance(text, (bytes, bytearray)):
        text = decode(bytes(text), path)
    elif len(text) > MAX_FILE_BYTES:
        raise PolicyError(f"the file is {len(text)} characters; at most {MAX_FILE_BYTES} are "
                          "allowed", path)
    members: dict[str, frozenset[str]] = {}
    lines: dict[str, int] = {}
    seen: dict[str, list[int]] = {}
    errors: list[PolicyError] = []
    for number, line in _lines(text):
        if _COMMENT.fullmatch(line):
            continue
        words = list(_words(line, 0))
        name, col = words[0]
        if not _GROUP_NAME.fullmatch(name):
            errors.append(PolicyError(f"{name!r} is not a group name (letters, digits, '_', '.' "
                                      "and '-'); expected 'name caller caller ...'", path, number,
                                      col + 1))
            continue
        members[name] = frozenset(word for word, _ in words[1:])
        lines[name] = number
        seen.setdefault(name, []).append(number)
    if errors:
        first = errors[0]
        raise PolicyError(first.message, path, first.line, first.column, errors)
    duplicates = {name: tuple(nums) for name, nums in seen.items() if len(nums) > 1}
    return Groups(path, members, lines, duplicates)
