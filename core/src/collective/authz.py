"""The records authorizers receive and return.

An authorizer (registered with the ``collective_authorizers`` hook) is
constructed with the daemon config and has ``authorize(ctx: AuthzContext) ->
Decision``. The daemon calls it after DDL validation and before the action, on
every request; a denied request gets status 1 and an audit line ``deny``
(docs/security.md S6). ``ctx.data_resolver`` answers data plugin calls such as
``fstat("/etc/hosts")`` for policies that use them (cached per request).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: ``resolver(name, argument) -> outputs | None``: answers data plugin calls such as
#: ``fstat("/etc/hosts")`` (a :class:`collective.data.DataResolver`).
DataResolverFn = Callable[[str, str | None], Mapping[str, Any] | None]

__all__ = ["AuthzContext", "CallerAllowList", "DataResolverFn", "Decision", "DenyUnconfigured"]


@dataclass(frozen=True)
class AuthzContext:
    """Everything a policy may look at for one request."""

    #: the verified caller, e.g. ``cert=alice``
    caller: str
    agent: str
    action: str
    #: the request data after DDL validation (defaults filled in); read-only
    data: Mapping[str, Any]
    #: this node's facts
    facts: Mapping[str, Any]
    #: this node's configuration-management classes
    classes: Sequence[str]
    #: this node's identity
    identity: str
    #: answers data plugin calls (``fstat("/etc/hosts").size``) in policy expressions,
    #: cached per request; None when the host has no data plugins to offer
    data_resolver: DataResolverFn | None = None


@dataclass(frozen=True)
class Decision:
    """An authorizer's answer."""

    allowed: bool
    #: why, for the audit log (``"policy puppet.policy line 3"``, ``"no policy: default deny"``)
    reason: str
    #: the rule that matched, if any
    rule: str | None = None

    @classmethod
    def allow(cls, reason: str, rule: str | None = None) -> Decision:
        return cls(True, reason, rule)

    @classmethod
    def deny(cls, reason: str, rule: str | None = None) -> Decision:
        return cls(False, reason, rule)


class DenyUnconfigured:
    """What a node without ``authorization.provider`` uses: deny every request, so a
    fresh install allows nothing until a policy says so (``authorization.allow_unconfigured:
    true`` turns this off, loudly)."""

    name = "deny_unconfigured"
    REASON = ("no authorization configured: default deny (set authorization.provider, or "
              "authorization.allow_unconfigured: true)")

    def authorize(self, ctx: AuthzContext) -> Decision:
        return Decision.deny(self.REASON)


class CallerAllowList:
    """``authorization: {provider: callers, callers: [cert=admin, ...]}``: the listed
    callers may call every agent and action, everyone else nothing.

    For small fleets and the local fleet of ``mco fleet up``; per-agent, per-action and
    per-fact rules need a policy provider such as ``actionpolicy``
    (collective-auth-actionpolicy).
    """

    name = "callers"

    def __init__(self, config: Any) -> None:
        callers = config.get("authorization.callers") or []
        self.callers = frozenset(str(c) for c in callers)

    def authorize(self, ctx: AuthzContext) -> Decision:
        if ctx.caller in self.callers:
            return Decision.allow("caller in authorization.callers")
        return Decision.deny("caller not in authorization.callers")
