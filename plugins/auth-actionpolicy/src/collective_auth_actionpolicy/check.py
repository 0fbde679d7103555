"""``mco policy check``: errors and provable warnings for policy files, offline.

Warnings are reported only when they can be proved from the text:

* a line after one that matches every request (``allow|deny * * * *``) is
  unreachable, and so is the ``policy default``;
* a line is shadowed when an earlier line matches at least every request it
  matches: callers ``*`` or a superset of the same kind (caller ids and
  ``/regex/`` compared as written, groups by name), actions ``*`` or a superset,
  and facts/classes ``*``, a subset of the same ``fact<op>value`` pairs or class
  names (fewer conditions = broader), or the same compound expression. Lines
  whose outcome can depend on fail-closed handling (data plugin calls, group
  names) are compared only when both have the same effect;
* several ``policy default`` lines (the last wins), a word other than
  ``allow``/``deny`` (it means deny), text after the word (ignored);
* caller ids that can never be a verified caller id;
* group names missing from the groups file (when one is given) and data plugin
  functions that are not installed here (when the registry is known).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from collective.compound import expression_functions

from .parser import Callers, Classes, Compound, Facts, Groups, Policy, Rule

__all__ = ["Finding", "covers", "lint"]

#: A verified caller id (collective.message.CALLER_PATTERN).
_CALLER = re.compile(r"[a-z0-9]+=[A-Za-z0-9._@-]{1,128}")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "warning"
    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.severity}: {self.message}"


def _conditions(rule: Rule) -> tuple[Facts | Classes | Compound | None, ...]:
    """(facts, classes) with a 4-field line as (expression, ``*``): the same meaning."""
    return (rule.facts, rule.classes if rule.fields == 5 else None)


def _cond_covers(a: Facts | Classes | Compound | None, b: Facts | Classes | Compound | None) -> bool:
    if a is None:
        return True
    if b is None:
        return False
    if isinstance(a, Facts) and isinstance(b, Facts):
        return set(a.items) <= set(b.items)
    if isinstance(a, Classes) and isinstance(b, Classes):
        return set(a.items) <= set(b.items)
    if isinstance(a, Compound) and isinstance(b, Compound):
        return a.expr == b.expr
    return False


def _callers_cover(a: Callers | None, b: Callers | None) -> bool:
    if a is None:
        return True
    if b is None or a.kind != b.kind:
        return False
    return set(b.tokens) <= set(a.tokens)


def _fail_closed_sensitive(rule: Rule) -> bool:
    """Can the line's outcome flip under fail-closed handling (groups, data plugins)?"""
    if rule.callers is not None and rule.callers.kind == "groups":
        return True
    return any(isinstance(c, Compound) and expression_functions(c.expr) for c in _conditions(rule))


def covers(a: Rule, b: Rule) -> bool:
    """Does ``a`` provably match every request ``b`` matches?"""
    if a.effect != b.effect and (_fail_closed_sensitive(a) or _fail_closed_sensitive(b)):
        return False
    if not _callers_cover(a.callers, b.callers):
        return False
    if a.actions is not None and (b.actions is None or not set(b.actions) <= set(a.actions)):
        return False
    return all(_cond_covers(x, y) for x, y in zip(_conditions(a), _conditions(b), strict=True))


def _column(rule: Rule, word: str) -> int:
    at = rule.text.find(word, len(rule.effect))
    return at + 1 if at >= 0 else 1


def lint(policy: Policy, groups: Groups | None = None,
         functions: Collection[str] | None = None) -> list[Finding]:
    """Warnings for a parsed policy (see the module docstring), in line order."""
    out: list[Finding] = []
    path = policy.path

    def warn(line: int, column: int, message: str) -> None:
        out.append(Finding("warning", path, line, column, message))

    defaults = policy.defaults
    for earlier in defaults[:-1]:
        warn(earlier.line, 1, f"overridden by the 'policy default' at line {defaults[-1].line} "
                              "(the last one wins)")
    for default in defaults:
        if default.word not in ("allow", "deny"):
            warn(default.line, default.text.find(default.word) + 1,
                 f"'policy default {default.word}' means deny: only 'allow' allows")
        if default.rest.strip():
            warn(default.line, len(default.text) - len(default.rest) + 1,
                 f"text after 'policy default {default.word}' is ignored: {default.rest.strip()!r}")

    catch_all: Rule | None = None
    for index, rule in enumerate(policy.rules):
        if catch_all is not None:
            warn(rule.line, 1, f"unreachable: line {catch_all.line} ({catch_all.effect} * * * *) "
                               "matches every request before this line")
        else:
            for earlier in policy.rules[:index]:
                if covers(earlier, rule):
                    same = earlier.effect == rule.effect
                    tail = ("it is redundant" if same else
                            f"this {rule.effect} never applies")
                    warn(rule.line, 1, f"shadowed by line {earlier.line}: every request this "
                                       f"line matches is {earlier.effect}ed there first, so {tail}")
                    break
        if rule.matches_everything and catch_all is None:
            catch_all = rule
        callers = rule.callers
        if callers is not None and callers.kind == "ids":
            for token in sorted(callers.exact):
                if not _CALLER.fullmatch(token):
                    warn(rule.line, _column(rule, token),
                         f"caller id {token!r} can never match: verified caller ids look like "
                         "cert=NAME")
        if callers is not None and callers.kind == "groups" and groups is not None:
            for token in callers.tokens:
                if token not in groups.members:
                    warn(rule.line, _column(rule, token),
                         f"unknown group {token!r}: it is not in {groups.path}, so it matches "
                         "nobody")
        if functions is not None:
            for cond in _conditions(rule):
                if isinstance(cond, Compound):
                    for name in sorted(expression_functions(cond.expr) - set(functions)):
                        warn(rule.line, _column(rule, f"{name}("),
                             f"data plugin {name}() is not installed here; on a node without it "
                             f"an allow line does not match and a deny line does")
    if catch_all is not None and defaults:
        last = defaults[-1]
        warn(last.line, 1, f"never used: line {catch_all.line} matches every request")
    out.sort(key=lambda f: (f.line, f.column))
    return out
