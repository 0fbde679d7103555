"""The compound ``-S`` filter language of MCollective: tokenizer, parser, evaluator.

``mco find -S "(role=web or role=cache) and not location=us"`` selects nodes with
a boolean expression over facts, classes and data-plugin functions. MCollective
joined the statements' results into a Ruby string and ``eval``-ed it
(CVE-2016-2788); here the text is tokenized, parsed by recursive descent into a
small AST of frozen dataclasses and evaluated by walking it. Nothing is ever
``eval``-ed, and the wire form stays the text: every node re-parses it with this
module.

Grammar (MCollective 2.x; precedence ``not`` > ``and`` > ``or``, as Ruby's
``!``/``&&``/``||`` gave MCollective)::

    expr      := conj { "or" conj }
    conj      := unary { "and" unary }
    unary     := ("not" | "!") unary | primary
    primary   := "(" expr ")" | statement
    statement := NAME [OP VALUE]                        # fact comparison, or a class
               | "/" regex "/"                           # class regex
               | FUNC "(" [QUOTED] ")" ["." FIELD] [OP VALUE]   # data plugin call
    OP        := "=" | "==" | "!=" | "<" | ">" | "<=" | ">=" | "=~" | "=>" | "=<"

Rules, with the places where this differs from (or pins down) MCollective:

* ``and``, ``or`` and ``not`` are keywords only when followed by whitespace or
  ``(`` -- and, unlike MCollective, also by ``)`` or the end of the input, which
  turns ``role=web and`` into a clear error instead of a class called ``and``.
  So a class ``order`` or a fact ``notes`` is a statement. ``!`` is always
  ``not``. Keywords are lower case.
* A statement is a fact comparison when it has an operator, else a class (a bare
  word, or ``/regex/``). Fact names are dotted paths (``os.family=debian``).
  Whitespace around the operator is allowed (MCollective refused it); values
  end at whitespace or ``)``, except ``/regex/`` values, which end at the closing
  unescaped ``/``.
* ``=`` means ``==``; ``=>`` and ``=<`` are aliases of ``>=`` and ``<=``. A value
  written ``/re/`` makes ``=``, ``==`` and ``=~`` a regex match and ``!=`` a
  negated regex match (MCollective did that for functions only, and compared a
  fact literally with the string ``"/re/"``); with ``< > <= >=`` it stays a
  literal string. ``=~`` also takes a regex without slashes (``index=~^4``).
  Regexes go through :func:`collective.matching.filter_regex`: RE2 (linear-time
  matching, so ``(a+)+`` is harmless), at most 256 characters.
* Fact and class statements match exactly like ``-F`` and ``-C`` (the same
  functions of :mod:`collective.matching` do both): typed int/float/string
  comparison, list facts match when any element does, a missing fact never
  matches. ``!=/re/`` on a list fact means "some element does not match", like ``!=``.
* Functions are data plugins (:mod:`collective.data`). Arguments are quoted with
  ``'`` or ``"`` (no escapes). MCollective data plugins take exactly one
  argument; we allow zero or one (``puppet()``-style plugins), more is an
  error. Without ``.field`` the plugin's ``default_output`` is used. Without an
  operator the value is tested for truth (false for null, ``false``, ``0``, ``""``).
  Typing (``Matcher.eval_compound_fstatement``): a null result is false;
  ``< > <= >=`` on a string or boolean result are false; a regex on a non-string
  is false; for a numeric result the right side must be an integer or a float,
  for a boolean result ``true`` or ``false`` -- anything else makes the whole
  expression fail to match, as does an unknown function, an unknown field or a
  plugin that fails. Failing the whole expression (not just the statement)
  keeps ``not nosuch('x')`` from matching every node, as in MCollective.
* Limits: at most :data:`MAX_CHARS` characters, :data:`MAX_DEPTH` levels of
  parentheses and ``not``, :data:`MAX_NODES` AST nodes. Every problem raises
  :class:`FilterSyntaxError`, nothing else. A filter's caps on terms, regexes and
  data plugin calls (:meth:`collective.filters.Filter.validate`) count
  :func:`expression_cost`; evaluation on a node spends a
  :class:`~collective.matching.Budget`.
* Data plugins on a node: :func:`evaluate3` treats a call the resolver defers
  (raises :class:`Deferred`) as *unknown*, with Kleene's three-valued logic
  (``unknown and false`` is false, ``unknown or true`` is true), so a node can
  tell whether the rest of the filter decides without calling the plugin. A data
  plugin is only called when it is needed.
* When :func:`parse` is given the known functions (the client passes the data
  plugin registry), an unknown function, an unknown field or an argument the
  plugin refuses is a syntax error, so nothing is sent.
"""

from __future__ import annotations

import logging
import operator as _operator
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from .matching import (
    UNLIMITED,
    Budget,
    FilterBudgetExceeded,
    FilterError,
    NodeInfo,
    compare,
    filter_regex,
    is_regex,
    match_name,
    node_fact_values,
    strip_slashes,
)

log = logging.getLogger(__name__)

__all__ = [
    "And",
    "ClassMatch",
    "Deferred",
    "Expr",
    "ExprCost",
    "FactCmp",
    "FilterSyntaxError",
    "FuncCall",
    "MAX_CHARS",
    "MAX_DEPTH",
    "MAX_NODES",
    "Not",
    "Or",
    "compare_value",
    "describe",
    "evaluate",
    "evaluate3",
    "expression_cost",
    "expression_functions",
    "parse",
    "render",
]

#: At most this many characters in one ``-S`` expression.
MAX_CHARS = 4096
#: At most this many nested parentheses and ``not``.
MAX_DEPTH = 32
#: At most this many AST nodes (statements, and/or groups, nots).
MAX_NODES = 256
#: MCollective data plugins take one argument; we allow zero or one.
MAX_ARGS = 1


# -- the AST ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FactCmp:
    """``fact OP value``; ``op`` is one of ``== != < > <= >= =~`` or ``!~`` (negated regex)."""

    fact: str
    op: str
    value: str


@dataclass(frozen=True)
class ClassMatch:
    """A class name, or ``/regex/`` (kept with its slashes, as in ``Filter.cf_class``)."""

    name: str


@dataclass(frozen=True)
class FuncCall:
    """``name('arg').field OP value``; ``field``, ``op`` and ``value`` may be None."""

    name: str
    args: tuple[str, ...] = ()
    field: str | None = None
    op: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class Not:
    expr: Expr


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]


Expr = FactCmp | ClassMatch | FuncCall | Not | And | Or


# -- errors --------------------------------------------------------------------------------

_HEADINGS = {
    "parse": "Parse errors",
    "token": "Malformed token(s)",
    "paren": "Missing parenthesis",
}


class FilterSyntaxError(FilterError):
    """A ``-S`` expression that does not parse; ``str()`` is MCollective's message
    followed by the input and a caret line under the offending token.

    :ivar column: 1-based column of the offending token
    :ivar reason: what is wrong, one line
    :ivar text: the expression
    """

    def __init__(self, reason: str, text: str, column: int, length: int = 1,
                 kind: str = "parse") -> None:
        self.reason = reason
        self.text = text
        self.column = column
        self.length = max(1, length)
        self.kind = kind
        super().__init__(self.render())

    def render(self) -> str:
        start = 0
        text = self.text
        index = self.column - 1
        if len(text) > 120:  # show a window around the problem
            start = max(0, min(index - 60, len(text) - 120))
            text = text[start:start + 120]
        shown = "".join(" " if ch.isspace() else (ch if ch.isprintable() else "?") for ch in text)
        prefix = "..." if start else ""
        suffix = "..." if start + len(text) < len(self.text) else ""
        offset = index - start + len(prefix)
        caret = "^" * max(1, min(self.length, len(shown) + len(prefix) - offset))
        heading = _HEADINGS.get(self.kind, "Parse errors")
        return (f"{heading} found while parsing -S input {prefix}{shown}{suffix}\n"
                f"    {prefix}{shown}{suffix}\n"
                f"    {' ' * offset}{caret}\n"
                f"    column {self.column}: {self.reason}")


# -- the tokenizer -------------------------------------------------------------------------

class _Token(NamedTuple):
    kind: str  # "(", ")", "and", "or", "not", "stmt", "eof"
    start: int  # 0-based
    length: int
    node: Expr | None = None


#: Characters that end a name (fact, class or function).
_NAME_STOP = frozenset("()=<>!'\"")
#: Operators, longest and MCollective-alias first.
_OPS = ("=>", "=<", "==", "=~", "!=", "<=", ">=", "<", ">", "=")
_CANON = {"=": "==", "=>": ">=", "=<": "<="}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = ("and", "or", "not")
#: Whitespace, then a parenthesis, ``!`` or a keyword followed by whitespace, a
#: parenthesis or the end (``\s`` is :meth:`str.isspace`).
_QUICK = re.compile(r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<bang>!)"
                    r"|(?P<kw>and|or|not)(?=[\s()]|\Z))?")
_QUICK_KIND = {"open": "(", "close": ")", "bang": "not"}


class _Scanner:
    """Hands out tokens one at a time, so an early error stops the work early."""

    def __init__(self, text: str, functions: Collection[str] | Mapping[str, Any] | None) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.functions = functions

    # errors
    def error(self, reason: str, start: int, length: int = 1, kind: str = "token") -> FilterSyntaxError:
        return FilterSyntaxError(reason, self.text, start + 1, length, kind)

    def skip_space(self, i: int) -> int:
        while i < self.n and self.text[i].isspace():
            i += 1
        return i

    def next(self) -> _Token:
        quick = _QUICK.match(self.text, self.pos)
        assert quick is not None  # the pattern can match the empty string
        word = quick.lastgroup
        i = quick.start(word) if word else quick.end()
        if word is not None:
            self.pos = quick.end()
            return _Token(_QUICK_KIND.get(word) or quick.group(word), i, self.pos - i)
        if i >= self.n:
            self.pos = i
            return _Token("eof", i, 1)
        return self.statement(i)

    def regex_end(self, i: int) -> int:
        """``text[i]`` is ``/``: the index after the closing unescaped ``/``."""
        j = i + 1
        while j < self.n:
            ch = self.text[j]
            if ch == "\\":
                j += 2
                continue
            if ch == "/":
                return j + 1
            j += 1
        raise self.error("unterminated regular expression: no closing '/'", i, self.n - i)

    def expect_end(self, i: int, what: str) -> None:
        """A statement must be followed by whitespace, a parenthesis, ``!`` or the end."""
        if i < self.n and not (self.text[i].isspace() or self.text[i] in "()!"):
            raise self.error(f"unexpected {self.text[i]!r} after {what}", i)

    def compile(self, pattern: str, start: int, length: int) -> None:
        try:
            filter_regex(pattern)
        except FilterError as exc:
            raise self.error(str(exc), start, length) from None

    def operator(self, i: int) -> str | None:
        for op in _OPS:
            if self.text.startswith(op, i):
                return op
        return None

    def value(self, i: int, op: str) -> tuple[str, bool, int, int]:
        """The value after ``op`` at ``i``: (value, written as /re/, start, end)."""
        text, n = self.text, self.n
        v = self.skip_space(i)
        if v >= n or text[v] == ")":
            raise self.error(f"expected a value after {op!r}", v)
        if text[v] == "/":
            end = self.regex_end(v)
            self.expect_end(end, "a regular expression")
            return text[v:end], True, v, end
        end = v
        while end < n and not text[end].isspace() and text[end] != ")":
            end += 1
        return text[v:end], False, v, end

    def comparison(self, op: str, value: str, slashed: bool, start: int, end: int) -> str:
        """The canonical operator; regexes are compiled (and refused) here."""
        op = _CANON.get(op, op)
        if slashed and op in ("==", "=~"):
            op = "=~"
        elif slashed and op == "!=":
            op = "!~"
        if op in ("=~", "!~"):
            self.compile(strip_slashes(value), start, end - start)
        return op

    def statement(self, i: int) -> _Token:
        text, n = self.text, self.n
        if text[i] == "/":
            end = self.regex_end(i)
            self.expect_end(end, "a class regular expression")
            self.compile(text[i + 1:end - 1], i, end - i)
            self.pos = end
            return _Token("stmt", i, end - i, ClassMatch(text[i:end]))
        j = i
        while j < n and not text[j].isspace() and text[j] not in _NAME_STOP:
            j += 1
        name = text[i:j]
        if not name:
            raise self.error(f"expected a fact, class or function statement, found {text[i]!r}", i)
        if j < n and text[j] == "(":
            return self.function(i, name, j)
        k = self.skip_space(j)
        op = self.operator(k)
        if op is None:
            self.expect_end(j, f"class {name!r}")
            self.pos = j
            return _Token("stmt", i, j - i, ClassMatch(name))
        value, slashed, vstart, end = self.value(k + len(op), op)
        canon = self.comparison(op, value, slashed, vstart, end)
        self.pos = end
        return _Token("stmt", i, end - i, FactCmp(name, canon, value))

    def function(self, i: int, name: str, j: int) -> _Token:
        text, n = self.text, self.n
        if not _IDENT.fullmatch(name):
            raise self.error(f"{name!r} is not a valid function name", i, j - i)
        args: list[tuple[str, int]] = []
        k = self.skip_space(j + 1)
        if k < n and text[k] == ")":
            k += 1
        else:
            while True:
                k = self.skip_space(k)
                if k >= n:
                    raise self.error(f"{name}( is never closed", j, kind="paren")
                quote = text[k]
                if quote not in "'\"":
                    raise self.error(f"the arguments of {name}() must be quoted with ' or \"", k)
                close = text.find(quote, k + 1)
                if close < 0:
                    raise self.error(f"unterminated quoted argument of {name}()", k, n - k)
                args.append((text[k + 1:close], k))
                k = self.skip_space(close + 1)
                if k < n and text[k] == ",":
                    k += 1
                    continue
                if k < n and text[k] == ")":
                    k += 1
                    break
                if k >= n:
                    raise self.error(f"{name}( is never closed", j, kind="paren")
                raise self.error(f"expected ',' or ')' in the arguments of {name}()", k)
        if len(args) > MAX_ARGS:
            raise self.error(f"{name}() takes at most one argument (MCollective data plugins "
                             "take one)", args[MAX_ARGS][1], kind="parse")
        field = None
        if k < n and text[k] == ".":
            found = _IDENT.match(text, k + 1)
            if not found:
                raise self.error(f"expected a field name after '{name}(...).'", k + 1)
            field = found.group(0)
            k = found.end()
        call_end = k
        m = self.skip_space(k)
        op = self.operator(m)
        value: str | None = None
        if op is None:
            self.expect_end(k, f"{name}()")
            end = k
        else:
            value, slashed, vstart, end = self.value(m + len(op), op)
            op = self.comparison(op, value, slashed, vstart, end)
        self.check_function(name, args, field, i, call_end)
        self.pos = end
        return _Token("stmt", i, end - i,
                      FuncCall(name, tuple(a for a, _ in args), field, op, value))

    def check_function(self, name: str, args: list[tuple[str, int]], field: str | None,
                       start: int, end: int) -> None:
        """Against the known functions, when the caller gave them."""
        known = self.functions
        if known is None:
            return
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise self.error(f"Can't find DDL for data plugin '{name}': no such data plugin "
                             f"is installed (known: {listed})", start, len(name), kind="parse")
        plugin = known[name] if isinstance(known, Mapping) else None
        if plugin is None:
            return
        outputs = getattr(plugin, "outputs", None)
        if field is not None and isinstance(outputs, Mapping) and outputs and field not in outputs:
            raise self.error(f"data plugin '{name}' has no output '{field}' (outputs: "
                             f"{', '.join(sorted(outputs))})", end - len(field), len(field),
                             kind="parse")
        validate = getattr(plugin, "validate", None)
        if callable(validate):
            argument = args[0][0] if args else None
            where = args[0][1] if args else start
            try:
                validate(argument)
            except (ValueError, TypeError) as exc:
                raise self.error(str(exc), where, (len(argument) + 2) if argument is not None
                                 else len(name), kind="parse") from None


# -- the parser ----------------------------------------------------------------------------

_DESCRIBE_TOKEN = {"(": "'('", ")": "')'", "and": "'and'", "or": "'or'", "not": "'not'",
                   "eof": "the end of the input"}


class _Parser:
    def __init__(self, scanner: _Scanner) -> None:
        self.scanner = scanner
        self.nodes = 0
        self.last: _Token | None = None
        self.token = scanner.next()

    def advance(self) -> _Token:
        token = self.last = self.token
        self.token = self.scanner.next()
        return token

    def error(self, reason: str, token: _Token, kind: str = "parse") -> FilterSyntaxError:
        return self.scanner.error(reason, token.start, token.length, kind)

    def shown(self, token: _Token) -> str:
        if token.kind == "stmt":
            return repr(self.scanner.text[token.start:token.start + token.length])
        if token.kind == "not" and token.length == 1:
            return "'!'"
        return _DESCRIBE_TOKEN[token.kind]

    def count(self, token: _Token) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(f"the expression has more than {MAX_NODES} terms", token)

    def parse(self) -> Expr:
        if self.token.kind == "eof":
            raise self.error("the expression is empty", self.token)
        expr = self.expr(0)
        if self.token.kind == ")":
            raise self.error("this ')' has no matching '('", self.token, "paren")
        if self.token.kind != "eof":
            raise self.error(f"expected 'and', 'or' or the end of the input, found "
                             f"{self.shown(self.token)}", self.token)
        return expr

    def expr(self, depth: int) -> Expr:
        items = [self.conj(depth)]
        while self.token.kind == "or":
            if len(items) == 1:
                self.count(self.token)
            self.advance()
            items.append(self.conj(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conj(self, depth: int) -> Expr:
        items = [self.unary(depth)]
        while self.token.kind == "and":
            if len(items) == 1:
                self.count(self.token)
            self.advance()
            items.append(self.unary(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self, depth: int) -> Expr:
        if self.token.kind == "not":
            if depth >= MAX_DEPTH:
                raise self.error(f"the expression is nested more than {MAX_DEPTH} deep", self.token)
            self.count(self.token)
            self.advance()
            return Not(self.unary(depth + 1))
        return self.primary(depth)

    def primary(self, depth: int) -> Expr:
        token = self.token
        if token.kind == "(":
            if depth >= MAX_DEPTH:
                raise self.error(f"the expression is nested more than {MAX_DEPTH} deep", token)
            self.advance()
            if self.token.kind == ")":
                raise self.error("expected a statement inside '()', found ')'", self.token)
            inner = self.expr(depth + 1)
            if self.token.kind != ")":
                if self.token.kind == "eof":
                    raise self.error("this '(' is never closed", token, "paren")
                raise self.error(f"expected 'and', 'or' or ')', found {self.shown(self.token)}",
                                 self.token)
            self.advance()
            return inner
        if token.kind == "stmt":
            self.count(token)
            self.advance()
            assert token.node is not None
            return token.node
        after = f" after {self.shown(self.last)}" if self.last is not None else ""
        raise self.error(f"expected a fact, class or function statement{after}, "
                         f"found {self.shown(token)}", token)


def parse(text: str, functions: Collection[str] | Mapping[str, Any] | None = None) -> Expr:
    """Parse a ``-S`` expression into an AST.

    :param functions: the known data plugin names (a mapping name -> plugin also
        checks fields against ``plugin.outputs`` and the argument with
        ``plugin.validate``); None accepts any function (the node side, which
        refuses unknown ones when it evaluates)
    :raises FilterSyntaxError: for anything that is not a valid expression
    """
    if not isinstance(text, str):
        raise FilterSyntaxError(f"a compound filter must be a string, not {type(text).__name__}",
                                "", 1)
    if len(text) > MAX_CHARS:
        raise FilterSyntaxError(f"the expression is {len(text)} characters long; at most "
                                f"{MAX_CHARS} are allowed", text, MAX_CHARS + 1)
    return _Parser(_Scanner(text, functions)).parse()


@lru_cache(maxsize=512)
def parse_cached(text: str) -> Expr:
    """:func:`parse` without function checks, cached (nodes see the same text often)."""
    return parse(text)


# -- walking the AST -----------------------------------------------------------------------

def expression_functions(expr: Expr) -> set[str]:
    """The names of the data plugin functions ``expr`` calls."""
    if isinstance(expr, FuncCall):
        return {expr.name}
    if isinstance(expr, Not):
        return expression_functions(expr.expr)
    if isinstance(expr, (And, Or)):
        found: set[str] = set()
        for item in expr.items:
            found |= expression_functions(item)
        return found
    return set()


@dataclass(frozen=True)
class ExprCost:
    """What an expression costs (:func:`expression_cost`)."""

    #: statements: fact comparisons, classes and function calls
    terms: int
    #: the regular expressions it uses, without slashes, one per use
    regexes: tuple[str, ...]
    #: distinct data plugin calls: ``(function, arguments)``
    calls: frozenset[tuple[str, tuple[str, ...]]]


def expression_cost(expr: Expr) -> ExprCost:
    """Count the statements, regexes and distinct data plugin calls of ``expr``."""
    terms = 0
    regexes: list[str] = []
    calls: set[tuple[str, tuple[str, ...]]] = set()
    stack: list[Expr] = [expr]
    while stack:
        item = stack.pop()
        if isinstance(item, FactCmp):
            terms += 1
            if item.op in ("=~", "!~"):
                regexes.append(strip_slashes(item.value))
        elif isinstance(item, ClassMatch):
            terms += 1
            if is_regex(item.name):
                regexes.append(strip_slashes(item.name))
        elif isinstance(item, FuncCall):
            terms += 1
            calls.add((item.name, item.args))
            if item.op in ("=~", "!~") and item.value is not None:
                regexes.append(strip_slashes(item.value))
        elif isinstance(item, Not):
            stack.append(item.expr)
        elif isinstance(item, (And, Or)):
            stack.extend(item.items)
    return ExprCost(terms, tuple(regexes), frozenset(calls))


def _op_text(op: str, value: str | None) -> str:
    """The operator as written before ``value`` (a space keeps ``<`` + ``=x`` apart)."""
    text = {"!~": "!=", "==": "="}.get(op, op)
    return f"{text} " if value and value[0] in "=<>~!" else text


def _quote(arg: str) -> str:
    return f'"{arg}"' if "'" in arg else f"'{arg}'"


def _call_text(expr: FuncCall) -> str:
    text = f"{expr.name}({', '.join(_quote(a) for a in expr.args)})"
    return f"{text}.{expr.field}" if expr.field else text


def render(expr: Expr) -> str:
    """Canonical ``-S`` text for ``expr``; ``parse(render(e)) == e``."""
    if isinstance(expr, FactCmp):
        return f"{expr.fact}{_op_text(expr.op, expr.value)}{expr.value}"
    if isinstance(expr, ClassMatch):
        return expr.name
    if isinstance(expr, FuncCall):
        text = _call_text(expr)
        return text if expr.op is None else f"{text}{_op_text(expr.op, expr.value)}{expr.value}"
    if isinstance(expr, Not):
        inner = expr.expr
        return f"not ({render(inner)})" if isinstance(inner, (And, Or)) else f"not {render(inner)}"
    if isinstance(expr, And):
        return " and ".join(f"({render(i)})" if isinstance(i, (And, Or)) else render(i)
                            for i in expr.items)
    if isinstance(expr, Or):
        return " or ".join(f"({render(i)})" if isinstance(i, Or) else render(i)
                           for i in expr.items)
    raise TypeError(f"not a compound expression: {expr!r}")


_WORDS = {"==": "is", "!=": "is not", "=~": "matches", "!~": "does not match",
          "<": "is less than", ">": "is greater than", "<=": "is at most", ">=": "is at least"}


def _shown_value(op: str, value: str) -> str:
    if op in ("=~", "!~") and not is_regex(value):
        return f"/{value}/"
    return value


def describe(expr: Expr) -> str:
    """``expr`` in plain English, e.g. ``(fact role is web or fact role is cache) and
    fact location is uk``."""
    if isinstance(expr, FactCmp):
        return f"fact {expr.fact} {_WORDS[expr.op]} {_shown_value(expr.op, expr.value)}"
    if isinstance(expr, ClassMatch):
        return (f"has a class matching {expr.name}" if is_regex(expr.name)
                else f"has class {expr.name}")
    if isinstance(expr, FuncCall):
        call = _call_text(expr)
        if expr.op is None:
            return f"{call} is true"
        return f"{call} {_WORDS[expr.op]} {_shown_value(expr.op, expr.value or '')}"
    if isinstance(expr, Not):
        return f"not ({describe(expr.expr)})"
    if isinstance(expr, And):
        return " and ".join(f"({describe(i)})" if isinstance(i, (And, Or)) else describe(i)
                            for i in expr.items)
    if isinstance(expr, Or):
        return " or ".join(f"({describe(i)})" if isinstance(i, (And, Or)) else describe(i)
                           for i in expr.items)
    raise TypeError(f"not a compound expression: {expr!r}")


# -- evaluation ----------------------------------------------------------------------------

class _Unresolvable(Exception):
    """The whole expression cannot be evaluated on this node: it does not match."""


class Deferred(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a resolver for a data plugin call it will not answer now (the node's
    receive thread defers every plugin that may be slow or reveal more than facts):
    :func:`evaluate3` counts the statement as unknown."""


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_APPLY: dict[str, Callable[[Any, Any], Any]] = {
    "==": _operator.eq, "!=": _operator.ne, "<": _operator.lt, ">": _operator.gt,
    "<=": _operator.le, ">=": _operator.ge,
}


def _number(text: str) -> int | float:
    text = text.strip()
    if _INT_TEXT.fullmatch(text):
        return int(text)
    if _FLOAT_TEXT.fullmatch(text):
        return float(text)
    raise _Unresolvable(f"invalid numeric value: {text}")


def compare_value(value: Any, op: str | None, wanted: str | None,
                  budget: Budget = UNLIMITED) -> bool:
    """Compare a data plugin result with MCollective's typing rules (module docstring).

    :raises _Unresolvable: (internal) when ``wanted`` cannot be converted to the
        result's type; :func:`evaluate` turns that into "no match"
    """
    if value is None:
        return False
    if op is None:
        return bool(value)
    wanted = "" if wanted is None else wanted
    if op in ("<", ">", "<=", ">=") and isinstance(value, (str, bool)):
        log.debug("cannot compare a string or boolean with %s", op)
        return False
    if op in ("=~", "!~"):
        if not isinstance(value, str):
            log.debug("cannot match a regular expression against a %s", type(value).__name__)
            return False
        found = budget.search(filter_regex(strip_slashes(wanted)), value)
        return found if op == "=~" else not found
    budget.step()
    if isinstance(value, bool):
        text = wanted.strip()
        if text not in ("true", "false"):
            raise _Unresolvable(f"invalid boolean value: {text}")
        return bool(_APPLY[op](value, text == "true"))
    if isinstance(value, (int, float)):
        return bool(_APPLY[op](value, _number(wanted)))
    if isinstance(value, str):
        return bool(_APPLY[op](value, wanted))
    log.debug("cannot compare a %s result", type(value).__name__)
    return False


def _call(expr: FuncCall, node: NodeInfo, budget: Budget) -> bool:
    data = node.data
    if data is None:
        raise _Unresolvable(f"{expr.name}(): this node has no data plugins")
    result = data(expr.name, expr.args[0] if expr.args else None)
    budget.check()  # a plugin call is not a comparison: it may take a while
    if result is None:
        raise _Unresolvable(f"data plugin '{expr.name}' is unknown or failed")
    field = expr.field or getattr(result, "default_output", None)
    if field is None:
        if len(result) != 1:
            raise _Unresolvable(f"{expr.name}() has no default output: name a field")
        value = next(iter(result.values()))
    elif field in result:
        value = result[field]
    else:
        raise _Unresolvable(f"data plugin '{expr.name}' has no output '{field}'")
    return compare_value(value, expr.op, expr.value, budget)


def _leaf(expr: FactCmp | ClassMatch, node: NodeInfo, budget: Budget) -> bool:
    if isinstance(expr, FactCmp):
        values = node_fact_values(node, expr.fact, budget)
        if values is None:
            return False
        if expr.op == "!~":
            regex = filter_regex(strip_slashes(expr.value))
            return any(not budget.search(regex, v) for v in values)
        return any(compare(v, expr.op, expr.value, budget) for v in values)
    classes = budget.memo.get("classes") if budget.memo is not None else None
    if classes is None:
        classes = frozenset(node.classes)
        budget.step(len(classes))
        if budget.memo is not None:
            budget.memo["classes"] = classes
    return match_name(expr.name, classes, budget)


def _eval(expr: Expr, node: NodeInfo, budget: Budget) -> bool:
    if isinstance(expr, (FactCmp, ClassMatch)):
        return _leaf(expr, node, budget)
    if isinstance(expr, FuncCall):
        return _call(expr, node, budget)
    if isinstance(expr, Not):
        return not _eval(expr.expr, node, budget)
    if isinstance(expr, And):
        return all(_eval(item, node, budget) for item in expr.items)
    if isinstance(expr, Or):
        return any(_eval(item, node, budget) for item in expr.items)
    raise TypeError(f"not a compound expression: {expr!r}")


def _eval3(expr: Expr, node: NodeInfo, budget: Budget) -> bool | None:
    """Kleene's three-valued :func:`_eval`: None for unknown (a deferred call)."""
    if isinstance(expr, (FactCmp, ClassMatch)):
        return _leaf(expr, node, budget)
    if isinstance(expr, FuncCall):
        try:
            return _call(expr, node, budget)
        except Deferred:
            return None
    if isinstance(expr, Not):
        inner = _eval3(expr.expr, node, budget)
        return None if inner is None else not inner
    if isinstance(expr, And):
        unknown = False
        for item in expr.items:
            result = _eval3(item, node, budget)
            if result is False:
                return False
            unknown = unknown or result is None
        return None if unknown else True
    if isinstance(expr, Or):
        unknown = False
        for item in expr.items:
            result = _eval3(item, node, budget)
            if result is True:
                return True
            unknown = unknown or result is None
        return None if unknown else False
    raise TypeError(f"not a compound expression: {expr!r}")


def evaluate(expr: Expr, node: NodeInfo, budget: Budget | None = None) -> bool:
    """Does ``node`` match ``expr``? Never raises for a parsed expression: an
    unknown function, a failing data plugin or a right side of the wrong type
    makes the whole expression not match (and is logged).

    :raises FilterBudgetExceeded: ``budget`` ran out (the caller counts it)
    """
    try:
        return _eval(expr, node, budget or UNLIMITED)
    except FilterBudgetExceeded:
        raise
    except (_Unresolvable, FilterError) as exc:
        log.warning("compound filter does not match on %s: %s", node.identity, exc)
        return False


def evaluate3(expr: Expr, node: NodeInfo, budget: Budget | None = None) -> bool | None:
    """:func:`evaluate` in three-valued logic: None when the answer depends on a data
    plugin call that ``node.data`` deferred (see the module docstring).

    :raises FilterBudgetExceeded: ``budget`` ran out
    """
    try:
        return _eval3(expr, node, budget or UNLIMITED)
    except FilterBudgetExceeded:
        raise
    except (_Unresolvable, FilterError) as exc:
        log.warning("compound filter does not match on %s: %s", node.identity, exc)
        return False
