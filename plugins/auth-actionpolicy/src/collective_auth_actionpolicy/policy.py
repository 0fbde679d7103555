"""Evaluating a parsed policy against one request, on the node.

MCollective's rules (MCollective's actionpolicy) without its bugs:

* Lines are tried in order; the first one whose every field matches decides.
* Callers are compared as exact tokens (``cert=alice-admin`` never admits
  ``cert=alice``; MCollective used a substring test), ``/regex/`` callers with an
  unanchored :func:`re.search` (anchor them with ``^...$``), groups by exact
  membership in the ``groups`` file.
* Facts and classes are the **node's** own (``AuthzContext.facts`` /
  ``classes``), never the request filter, and are compared with the same typed
  semantics as ``-F``/``-C``/``-S`` (:mod:`collective.filters`,
  :mod:`collective.compound`), never with ``eval``.
* No line matched: the last ``policy default`` line decides; without one, the
  ``allow_unconfigured`` setting.

Fail closed where an answer is not available: a rule whose expression calls a
data plugin that is unknown or fails on this node does not match if it is an
``allow`` rule and *does* match if it is a ``deny`` rule; likewise a rule naming
groups when the groups file is unusable (it exists but never parsed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collective.compound import describe as describe_compound
from collective.compound import evaluate as evaluate_compound
from collective.filters import Filter, FilterError, NodeInfo, filter_regex

from .parser import Classes, Compound, Facts, Groups, Policy, Rule

log = logging.getLogger(__name__)

__all__ = ["Request", "Verdict", "evaluate_policy", "match_rule"]


@dataclass(frozen=True)
class Request:
    """What a policy looks at (a subset of :class:`collective.authz.AuthzContext`)."""

    caller: str
    action: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    classes: Sequence[str] = ()
    identity: str = ""
    #: ``(name, argument) -> outputs | None`` for data plugin calls; None: none available
    data_resolver: Callable[[str, str | None], Any] | None = None

    @classmethod
    def from_context(cls, ctx: Any) -> Request:
        return cls(caller=ctx.caller, action=ctx.action, facts=ctx.facts, classes=ctx.classes,
                   identity=ctx.identity, data_resolver=getattr(ctx, "data_resolver", None))


@dataclass(frozen=True)
class Verdict:
    """The outcome: allowed or not, why, and the deciding line."""

    allowed: bool
    reason: str
    #: ``path:line: text`` of the deciding rule or ``policy default`` line, if any
    rule: str | None = None
    #: one line per rule tried (only when asked for)
    trace: tuple[str, ...] = ()


class _Recorder:
    """Wraps the data resolver and notes the calls it could not answer."""

    def __init__(self, inner: Callable[[str, str | None], Any] | None) -> None:
        self.inner = inner
        self.failed: list[str] = []

    def __call__(self, name: str, argument: str | None) -> Any:
        result = None
        if self.inner is not None:
            try:
                result = self.inner(name, argument)
            except Exception:  # a resolver never takes authorization down
                log.exception("data plugin %s failed in a policy expression", name)
                result = None
        if result is None:
            self.failed.append(f"{name}()")
        return result


def _node(request: Request, recorder: _Recorder) -> NodeInfo:
    return NodeInfo(identity=request.identity, facts=request.facts, classes=tuple(request.classes),
                    data=recorder)


def _caller_matches(rule: Rule, request: Request, groups: Groups | None) -> tuple[bool | None, str]:
    """(matched, why); matched is None when the groups file is unusable."""
    callers = rule.callers
    if callers is None:
        return True, "callers *"
    caller = request.caller
    if callers.kind == "groups":
        if groups is None:
            return None, "the groups file is unusable"
        for group in callers.tokens:
            if groups.has(group, caller):
                return True, f"caller {caller} is in group {group}"
        return False, f"caller {caller} is in none of the groups {callers.render()}"
    if caller in callers.exact:
        return True, f"caller {caller} is listed"
    for pattern in callers.regexes:
        try:
            if filter_regex(pattern[1:-1]).search(caller):
                return True, f"caller {caller} matches {pattern}"
        except FilterError:  # validated when parsed; be safe anyway
            continue
    return False, f"caller {caller} is not one of {callers.render()}"


def _condition(cond: Facts | Classes | Compound | None, what: str, request: Request,
               recorder: _Recorder) -> tuple[bool, str]:
    if cond is None:
        return True, f"{what} *"
    node = _node(request, recorder)
    try:
        if isinstance(cond, Compound):
            ok = evaluate_compound(cond.expr, node)
            shown = describe_compound(cond.expr)
        elif isinstance(cond, Facts):
            ok = Filter(fact=list(cond.items)).matches(node)
            shown = " and ".join(f"{f.fact}{f.operator}{f.value}" for f in cond.items)
        else:
            ok = Filter(cf_class=list(cond.items)).matches(node)
            shown = "classes " + " ".join(cond.items)
    except FilterError as exc:
        return False, f"{what} could not be evaluated: {exc}"
    return ok, f"{what} {'match' if ok else 'do not match'}: {shown}"


def match_rule(rule: Rule, request: Request, groups: Groups | None) -> tuple[bool, str]:
    """Does ``rule`` match ``request``? Returns (matched, why in a few words)."""
    caller_ok, why = _caller_matches(rule, request, groups)
    if caller_ok is None:
        if rule.effect == "deny":
            return True, f"{why}: a deny line naming groups matches (fail closed)"
        return False, f"{why}: an allow line naming groups does not match"
    if not caller_ok:
        return False, why
    reasons = [why]
    if rule.actions is not None and request.action not in rule.actions:
        return False, f"action {request.action} is not one of {' '.join(rule.actions)}"
    reasons.append("actions *" if rule.actions is None else f"action {request.action} is listed")
    recorder = _Recorder(request.data_resolver)
    conditions = [(rule.facts, "expression" if rule.fields == 4 else "facts")]
    if rule.fields == 5:
        conditions.append((rule.classes, "classes"))
    for cond, what in conditions:
        ok, why = _condition(cond, what, request, recorder)
        if recorder.failed:
            calls = ", ".join(sorted(set(recorder.failed)))
            if rule.effect == "deny":
                return True, f"{what}: data plugin call {calls} could not be answered on this " \
                             "node: a deny line matches (fail closed)"
            return False, f"{what}: data plugin call {calls} could not be answered on this node"
        if not ok:
            return False, why
        reasons.append(why)
    return True, "; ".join(reasons)


def _where(policy: Policy, line: int, text: str) -> str:
    return f"{policy.path}:{line}: {text}"


def evaluate_policy(policy: Policy, request: Request, groups: Groups | None,
                    allow_unconfigured: bool, trace: bool = False) -> Verdict:
    """First matching rule wins; else the last ``policy default``; else ``allow_unconfigured``."""
    steps: list[str] = []
    for rule in policy.rules:
        matched, why = match_rule(rule, request, groups)
        if trace:
            steps.append(f"line {rule.line}: {rule.effect}: {'MATCH' if matched else 'no match'}"
                         f" ({why})")
        if matched:
            verb = "allowed" if rule.effect == "allow" else "denied"
            return Verdict(rule.effect == "allow",
                           f"{verb} by the {rule.effect} rule at line {rule.line} of "
                           f"{policy.path} ({why})",
                           _where(policy, rule.line, rule.text), tuple(steps))
    default = policy.default
    if default is not None:
        word = "allow" if default.allow else "deny"
        note = "" if default.word in ("allow", "deny") else f" ({default.word!r} means deny)"
        return Verdict(default.allow, f"no rule matched; policy default {word}{note} at line "
                                      f"{default.line} of {policy.path}",
                       _where(policy, default.line, default.text), tuple(steps))
    word = "allow" if allow_unconfigured else "deny"
    return Verdict(allow_unconfigured,
                   f"no rule matched and {policy.path} has no 'policy default' line: {word} "
                   f"(allow_unconfigured is {str(allow_unconfigured).lower()})", None, tuple(steps))
