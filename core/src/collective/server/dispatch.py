"""From a verified request to a reply: DDL validation, authorization, the action.

:class:`AgentHost` holds the agents of one node. The daemon calls
:meth:`AgentHost.prepare` on its receive thread (cheap: names, DDL validation,
authorization), then either :meth:`AgentHost.run` (the action in this process, on a
thread) or :meth:`AgentHost.job` / :meth:`AgentHost.finish` around a worker process that
runs it (:mod:`collective.server.workers`): the job is what the worker needs, the worker
calls :func:`invoke`, and ``finish`` checks its result as ``run`` would have.
All of them only read state built by :meth:`AgentHost.load`, so they are thread-safe;
on SIGHUP the daemon builds a new host rather than changing this one.

Order matters (docs/security.md S6): unknown agent or action (status 2) before anything
else, then DDL validation (3 or 4), then authorization (1), and only then the
action; an agent's code never runs for a request that failed any of them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .. import __version__
from ..agent import Agent, Reply, Request, RPCError, check_agent
from ..authz import AuthzContext, Decision
from ..ddl import AgentDDL, RequestError

if TYPE_CHECKING:  # pragma: no cover - types only
    from ..config import Config

log = logging.getLogger(__name__)

__all__ = ["AgentHost", "CallInfo", "NodeContext", "Outcome", "StaticNode", "short_error"]

NOT_AUTHORIZED = "You are not authorized to call this agent or action."

#: The counters ``rpcutil daemon_stats`` reports (MCollective ``runnerstats.rb``).
STAT_COUNTERS = ("total", "validated", "unvalidated", "passed", "filtered", "replies", "ttlexpired")


@runtime_checkable
class NodeContext(Protocol):
    """What agents (``self.node``) and the host may ask about the node they run on."""

    identity: str
    config: Config
    #: unix seconds when the daemon started
    start_time: float
    collectives: list[str]
    version: str

    def facts(self) -> dict[str, Any]: ...

    def classes(self) -> list[str]: ...

    def agent_ddls(self) -> dict[str, AgentDDL]: ...

    def stats(self) -> dict[str, Any]: ...

    def data_plugins(self) -> list[str]: ...


class StaticNode:
    """A :class:`NodeContext` with fixed facts, for tests and the in-process node.

    An :class:`AgentHost` built with it binds itself, so :meth:`agent_ddls` and
    :meth:`stats` describe that host's agents.
    """

    def __init__(self, identity: str, config: Config, facts: Mapping[str, Any] | None = None,
                 classes: list[str] | None = None, collectives: list[str] | None = None,
                 version: str = __version__, start_time: float | None = None,
                 stats: Mapping[str, Any] | None = None, data_plugins: list[str] | None = None) -> None:
        self.identity = identity
        self.config = config
        self.start_time = time.time() if start_time is None else start_time
        self.collectives = list(collectives if collectives is not None else config.collectives)
        self.version = version
        self._facts = dict(facts or {})
        self._classes = list(classes or [])
        self._stats = dict(stats or {})
        self._data_plugins = list(data_plugins or [])
        self.host: AgentHost | None = None

    @property
    def main_collective(self) -> str:
        return self.config.main_collective

    def bind_host(self, host: AgentHost) -> None:
        """Called by :class:`AgentHost` so the node can describe its agents."""
        self.host = host

    def facts(self) -> dict[str, Any]:
        return dict(self._facts)

    def classes(self) -> list[str]:
        return list(self._classes)

    def agent_ddls(self) -> dict[str, AgentDDL]:
        if self.host is None:
            return {}
        return {name: agent.ddl for name, agent in sorted(self.host.agents.items())
                if agent.ddl is not None}

    def data_plugins(self) -> list[str]:
        return sorted(self._data_plugins)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {name: 0 for name in STAT_COUNTERS}
        stats.update(
            pid=os.getpid(),
            threads=threading.active_count(),
            agents=sorted(self.host.agents) if self.host else [],
            starttime=int(self.start_time),
            configfile=str(self.config.path) if self.config.path else None,
            version=self.version,
        )
        stats.update(self._stats)
        return stats


@dataclass(frozen=True)
class CallInfo:
    """One verified request, as the host needs it."""

    request_id: str
    #: the verified caller
    caller: str
    #: the client host
    sender: str
    agent: str
    action: str
    data: Any
    collective: str
    #: unix milliseconds
    time: int
    #: ``(host, validated data)``, set by :meth:`AgentHost.prepare` (not part of the call's identity)
    _prepared: tuple[Any, Mapping[str, Any]] | None = field(default=None, init=False, repr=False,
                                                            compare=False)


@dataclass(frozen=True)
class Outcome:
    """What to reply and audit."""

    statuscode: int
    statusmsg: str
    data: dict[str, Any]
    #: ``allow`` (the action ran or may run), ``deny`` (authorization) or ``invalid``
    decision: str
    #: a short machine-friendly reason for the audit log
    reason: str


_REASONS = {0: "ok", 1: "aborted", 2: "unknown_action", 3: "missing_data", 4: "invalid_data",
            5: "error"}


def short_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters: never a traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AgentHost:
    """The agents of one node, and the way requests reach them.

    :param config: the daemon config, passed to ``activate`` and the agents
    :param node: the :class:`NodeContext` agents see as ``self.node``
    :param agent_classes: agent name -> class (``PluginManager.agents()``)
    :param ddls: agent name -> validated DDL
    :param authorizer: an object with ``authorize(AuthzContext) -> Decision``, or
        None to allow every valid request
    :param data_plugins: data plugin name -> class or instance, answering
        ``fstat(...)``-style calls in policies (``AuthzContext.data_resolver``); None
        takes ``node.pm.data_plugins()`` when the node has a plugin manager (the
        daemon), else the built-in ones. Instantiated on first use.
    """

    def __init__(self, config: Config, node: Any, agent_classes: Mapping[str, type],
                 ddls: Mapping[str, AgentDDL], authorizer: Any = None,
                 data_plugins: Mapping[str, Any] | None = None) -> None:
        self.config = config
        self.node = node
        self.agent_classes = dict(agent_classes)
        self.ddls = dict(ddls)
        self.authorizer = authorizer
        self._data_registry = data_plugins
        self._data_instances: Mapping[str, Any] | None = None
        self._data_lock = threading.Lock()
        #: agent name -> instance, for the agents that loaded
        self.agents: dict[str, Agent] = {}
        self._actions: dict[str, dict[str, Any]] = {}
        bind = getattr(node, "bind_host", None)
        if callable(bind):
            bind(self)

    # -- loading -------------------------------------------------------------------
    def load(self) -> list[str]:
        """Instantiate every agent that has a matching DDL and wants to run here.

        A problem disables that agent alone.

        :returns: one message per disabled agent (a quiet ``activate() -> False`` is
            not a problem)
        """
        problems: list[str] = []
        agents: dict[str, Agent] = {}
        actions: dict[str, dict[str, Any]] = {}
        for name, cls in sorted(self.agent_classes.items()):
            label = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
            ddl = self.ddls.get(name)
            if ddl is None:
                problems.append(f"agent {name} ({label}) disabled: no DDL {name}.json was found for it")
                continue
            mismatch = check_agent(cls, ddl)
            if mismatch:
                problems.append(f"agent {name} disabled: " + "; ".join(mismatch))
                continue
            try:
                active = cls.activate(self.config)
            except Exception as exc:
                log.debug("agent %s activate() failed", name, exc_info=True)
                problems.append(f"agent {name} ({label}) disabled: activate() failed: {short_error(exc)}")
                continue
            if not active:
                log.debug("agent %s is not activated on this node", name)
                continue
            try:
                instance = cls(self.config, self.node)
            except Exception as exc:
                log.debug("agent %s could not be constructed", name, exc_info=True)
                problems.append(f"agent {name} ({label}) disabled: {short_error(exc)}")
                continue
            instance.ddl = ddl
            agents[name] = instance
            actions[name] = {a: cls.action_function(a) for a in cls.actions()}
        for name in sorted(set(self.ddls) - set(self.agent_classes)):
            log.debug("DDL %s has no agent class here (client-only)", name)
        self.agents, self._actions = agents, actions
        return problems

    def has(self, agent: str) -> bool:
        """True when ``agent`` is loaded and active."""
        return agent in self.agents

    # -- requests ------------------------------------------------------------------
    def prepare(self, call: CallInfo) -> Outcome | None:
        """Check names, validate the data and authorize.

        :returns: the refusal to send back, or None when the call may run
            (decision ``allow``); the validated data is kept on ``call`` for :meth:`run`
        """
        agent, action = call.agent, call.action
        if not isinstance(agent, str) or agent not in self.agents:
            # a node asked directly for an agent it does not have (MCollective: the
            # node has no such agent, so the action cannot be known either)
            return Outcome(2, f"Unknown agent {agent}: this node does not have it", {},
                           "invalid", "unknown_agent")
        if not isinstance(action, str) or action not in self._actions.get(agent, {}):
            return Outcome(2, f"Unknown action {action} for agent {agent}", {}, "invalid",
                           "unknown_action")
        act = self.agents[agent].ddl.actions[action]  # type: ignore[union-attr]
        try:
            data = act.validate_input(call.data if isinstance(call.data, Mapping) else call.data or {})
        except RequestError as exc:
            return Outcome(exc.statuscode, exc.message, act.output_defaults(), "invalid",
                           _REASONS.get(exc.statuscode, "invalid_data"))
        frozen = MappingProxyType(data)
        if self.authorizer is not None:
            decision = self._authorize(call, frozen)
            if not decision.allowed:
                reason = decision.reason + (f" (rule: {decision.rule})" if decision.rule else "")
                return Outcome(1, NOT_AUTHORIZED, act.output_defaults(), "deny", reason)
        object.__setattr__(call, "_prepared", (self, frozen))
        return None

    def authorize_only(self, call: CallInfo) -> Outcome | None:
        """Just the authorizer, for a call that has no DDL to validate against (a
        discovery ping whose filter needs data plugins): the refusal, or None."""
        if self.authorizer is None:
            return None
        decision = self._authorize(call, MappingProxyType({}))
        if decision.allowed:
            return None
        reason = decision.reason + (f" (rule: {decision.rule})" if decision.rule else "")
        return Outcome(1, NOT_AUTHORIZED, {}, "deny", reason)

    def _authorize(self, call: CallInfo, data: Mapping[str, Any]) -> Decision:
        try:
            ctx = AuthzContext(caller=call.caller, agent=call.agent, action=call.action, data=data,
                               facts=MappingProxyType(self.node.facts()),
                               classes=tuple(self.node.classes()), identity=self.node.identity,
                               data_resolver=_LazyResolver(self))
            decision = self.authorizer.authorize(ctx)
        except Exception as exc:  # fail closed: a broken policy denies
            log.exception("authorizer failed for %s#%s from %s", call.agent, call.action, call.caller)
            return Decision(False, f"authorizer error: {type(exc).__name__}")
        if not isinstance(decision, Decision) and not hasattr(decision, "allowed"):
            log.error("authorizer returned %r, not a Decision: denying", decision)
            return Decision(False, "authorizer returned no decision")
        if decision.allowed is not True:
            return Decision(False, str(getattr(decision, "reason", "denied")),
                            getattr(decision, "rule", None))
        return decision

    def data_plugin_instances(self) -> Mapping[str, Any]:
        """The data plugins policies may call, instantiated once per host."""
        if self._data_instances is None:
            with self._data_lock:
                if self._data_instances is None:
                    from ..data import BUILTIN_DATA_PLUGINS, instantiate

                    registry = self._data_registry
                    try:
                        if registry is None:
                            pm = getattr(self.node, "pm", None)
                            registry = (pm.data_plugins() if pm is not None
                                        and callable(getattr(pm, "data_plugins", None))
                                        else {p.name: p for p in BUILTIN_DATA_PLUGINS})
                        self._data_instances = instantiate(registry)
                    except Exception:
                        log.exception("data plugins could not be loaded; policy expressions "
                                      "calling functions will not match")
                        self._data_instances = {}
        return self._data_instances

    def run(self, call: CallInfo) -> Outcome:
        """Run the action here (calling :meth:`prepare` first if it was not) and map
        exceptions to status codes. Never raises."""
        job = self.job(call)
        if isinstance(job, Outcome):
            return job
        agent = self.agents[call.agent]
        func = self._actions[call.agent][call.action]
        code, message, data = invoke(agent, func, job)
        return self.finish(call, {"statuscode": code, "statusmsg": message, "data": data})

    def job(self, call: CallInfo) -> dict[str, Any] | Outcome:
        """What a worker needs to run ``call`` (JSON-able), or the refusal when
        :meth:`prepare` (called if it was not) refuses it."""
        if call._prepared is None or call._prepared[0] is not self:
            refused = self.prepare(call)
            if refused is not None:
                return refused
        assert call._prepared is not None
        act = self.agents[call.agent].ddl.actions[call.action]  # type: ignore[union-attr]
        return {"agent": call.agent, "action": call.action, "data": dict(call._prepared[1]),
                "defaults": act.output_defaults(),
                "request": {"id": call.request_id, "caller": call.caller, "sender": call.sender,
                            "agent": call.agent, "action": call.action,
                            "collective": call.collective, "time": call.time}}

    def finish(self, call: CallInfo, result: Mapping[str, Any]) -> Outcome:
        """The outcome of ``call`` from what :func:`invoke` returned (here or in a worker):
        the output is checked against the DDL and must be JSON."""
        act = self.agents[call.agent].ddl.actions[call.action]  # type: ignore[union-attr]
        code = result.get("statuscode")
        code = code if isinstance(code, int) and 0 <= code <= 5 else 5
        message = str(result.get("statusmsg", ""))
        out = result.get("data")
        if not isinstance(out, dict):
            out = act.output_defaults()
        for problem in act.validate_output(out):
            log.warning("%s (request %s)", problem, call.request_id)
        try:
            json.dumps(out, allow_nan=False)
        except (TypeError, ValueError) as exc:
            log.error("%s#%s (request %s) returned data that is not JSON: %s", call.agent,
                      call.action, call.request_id, exc)
            return Outcome(5, f"Unknown error in {call.agent}#{call.action}: the reply data "
                              "cannot be encoded as JSON", act.output_defaults(), "allow", "error")
        return Outcome(code, message, out, "allow", _REASONS.get(code, "error"))


def invoke(agent: Any, func: Any, job: Mapping[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """Call ``func(agent, request, reply)`` for ``job`` (:meth:`AgentHost.job`) and map
    exceptions to status codes, as MCollective's ``handlemsg`` does. Never raises.

    :returns: ``(statuscode, statusmsg, reply data)``
    """
    meta = job["request"]
    label = f"{meta['agent']}#{meta['action']}"
    request = Request(job["data"], id=meta["id"], caller=meta["caller"], sender=meta["sender"],
                      agent=meta["agent"], action=meta["action"],
                      collective=meta["collective"], time=meta["time"])
    reply = Reply(job["defaults"])
    try:
        func(agent, request, reply)
    except (RPCError, RequestError) as exc:
        code = exc.statuscode if isinstance(exc.statuscode, int) and 1 <= exc.statuscode <= 5 else 5
        log.info("%s (request %s) failed with status %d: %s", label, meta["id"], code, exc)
        reply.fail(str(exc) or _REASONS[code], code)
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        log.exception("%s (request %s) raised", label, meta["id"])
        reply.fail(f"Unknown error in {label}: {short_error(exc)}", 5)
    return reply.statuscode, reply.statusmsg, dict(reply.data)


class _LazyResolver:
    """A :class:`collective.data.DataResolver` for one request, built on the first call
    (most policies never call a data plugin)."""

    def __init__(self, host: AgentHost) -> None:
        self._host = host
        self._resolver: Any = None

    @property
    def plugins(self) -> Mapping[str, Any]:
        return self._host.data_plugin_instances()

    def __call__(self, name: str, argument: str | None) -> Any:
        if self._resolver is None:
            from ..data import DataResolver

            self._resolver = DataResolver(self._host.data_plugin_instances(), self._host.node)
        return self._resolver(name, argument)
