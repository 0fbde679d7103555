"""Agents and dispatch: the @action allow-list, status codes, authorization (docs/security.md S6).

The ``canary`` agent appends a line to a file for every action that runs, so a
test can prove that a refused request ran no agent code at all.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from collective.agent import (
    Aborted,
    Agent,
    InvalidData,
    MissingData,
    Reply,
    Request,
    RequestError,
    RPCError,
    UnknownAction,
    UnknownError,
    action,
    check_agent,
)
from collective.authz import AuthzContext, Decision
from collective.config import Config
from collective.ddl import DDL_SCHEMA_ID, AgentDDL
from collective.ddl import RequestError as DDLRequestError
from collective.server.dispatch import AgentHost, CallInfo, NodeContext, Outcome, StaticNode


def action_spec(name, inputs=None, required=(), outputs=None):
    return {
        "action": name,
        "description": f"the {name} action",
        "input": {"type": "object", "required": list(required), "properties": inputs or {}},
        "output": outputs or {
            "written": {"description": "what was written", "display_as": "Written", "type": "string"},
            "count": {"description": "a counter", "display_as": "Count", "type": "integer", "default": 0},
        },
    }


TEXT = {"text": {"type": "string", "description": "what to write", "maxLength": 20, "format": "shellsafe"}}

CANARY_DDL = {
    "$schema": DDL_SCHEMA_ID,
    "metadata": {"name": "canary", "description": "writes a canary file", "author": "tests",
                 "license": "Apache-2.0", "version": "0.1.0", "url": "https://example.com", "timeout": 7},
    "actions": [
        action_spec("write", TEXT, required=["text"]),
        action_spec("defaults"),
        action_spec("abort"),
        action_spec("soft_fail"),
        action_spec("boom"),
        action_spec("invalid"),
        action_spec("exit"),
        action_spec("not_json"),
        action_spec("bad_output"),
    ],
}


class Canary(Agent):
    name = "canary"

    def __init__(self, config, node):
        super().__init__(config, node)
        self.path = Path(config.plugin("canary")["file"])

    def touch(self, what: str) -> None:
        with self.path.open("a") as fh:
            fh.write(what + "\n")

    @action
    def write(self, request: Request, reply: Reply) -> None:
        self.touch(request["text"])
        reply["written"] = request["text"]
        reply["count"] += 1

    @action
    def defaults(self, request: Request, reply: Reply) -> None:
        self.touch("defaults")

    @action
    def abort(self, request: Request, reply: Reply) -> None:
        self.touch("abort")
        raise Aborted("No such command: check_load")

    @action
    def soft_fail(self, request: Request, reply: Reply) -> None:
        reply.fail("partly failed")
        reply["written"] = "after the failure"

    @action
    def boom(self, request: Request, reply: Reply) -> None:
        self.touch("boom")
        raise ValueError("first line " + "x" * 5000 + "\nsecond line")

    @action
    def invalid(self, request: Request, reply: Reply) -> None:
        raise InvalidData("the value is wrong")

    @action
    def exit(self, request: Request, reply: Reply) -> None:
        raise SystemExit(3)

    @action
    def not_json(self, request: Request, reply: Reply) -> None:
        reply["written"] = {1, 2}

    @action
    def bad_output(self, request: Request, reply: Reply) -> None:
        reply["count"] = "many"

    # Not actions: none of these may ever be dispatched.
    def run(self, request: Request, reply: Reply) -> None:
        self.touch("run")

    def _private(self, request: Request, reply: Reply) -> None:
        self.touch("_private")

    def helper(self, request: Request, reply: Reply) -> None:
        self.touch("helper")


@pytest.fixture
def canary(tmp_path):
    return tmp_path / "canary.log"


@pytest.fixture
def config(canary):
    return Config({"identity": "node-1", "plugins": {"canary": {"file": str(canary)}}},
                  kind="server", env={})


def make_host(config, authorizer=None, classes=None, ddls=None, facts=None):
    node = StaticNode("node-1", config, facts=facts or {"role": "web"}, classes=["base"])
    ddl = AgentDDL.load(CANARY_DDL)
    host = AgentHost(config, node, classes or {"canary": Canary}, ddls or {"canary": ddl},
                     authorizer=authorizer)
    return host, host.load()


def call(action, agent="canary", **data):
    return CallInfo(request_id="0123abcd", caller="cert=alice", sender="client-1", agent=agent,
                    action=action, data=data, collective="mcollective", time=1_700_000_000_000)


def dispatch(host, info):
    refused = host.prepare(info)
    return refused if refused is not None else host.run(info)


@pytest.fixture
def host(config):
    host, problems = make_host(config)
    assert problems == []
    return host


# -- the happy path ----------------------------------------------------------------------


def test_status_0(host, canary):
    outcome = dispatch(host, call("write", text="hello"))
    assert outcome == Outcome(0, "OK", {"written": "hello", "count": 1}, "allow", "ok")
    assert canary.read_text() == "hello\n"


def test_reply_prefilled_with_output_defaults(host):
    outcome = dispatch(host, call("defaults"))
    assert (outcome.statuscode, outcome.data) == (0, {"written": None, "count": 0})


def test_agent_attributes(host, config):
    agent = host.agents["canary"]
    assert host.has("canary") and not host.has("nosuch")
    assert agent.ddl.name == "canary"
    assert agent.timeout == 7
    assert agent.config is config
    assert isinstance(agent.node, NodeContext)
    assert Canary.actions() == {"write", "defaults", "abort", "soft_fail", "boom", "invalid", "exit",
                                "not_json", "bad_output"}


def test_request_is_read_only_and_carries_the_caller(config):
    seen = {}

    class Spy(Canary):
        @action
        def write(self, request, reply):
            seen["request"] = request
            with pytest.raises(TypeError):
                request["text"] = "changed"  # type: ignore[index]

    host, problems = make_host(config, classes={"canary": Spy})
    assert problems == []
    assert dispatch(host, call("write", text="x")).statuscode == 0
    request = seen["request"]
    assert dict(request) == {"text": "x"}
    assert (request.id, request.caller, request.sender, request.agent, request.action,
            request.collective, request.time) == ("0123abcd", "cert=alice", "client-1", "canary",
                                                  "write", "mcollective", 1_700_000_000_000)


# -- failures map to status codes ------------------------------------------------------------


def test_aborted_is_status_1(host, canary):
    outcome = dispatch(host, call("abort"))
    assert (outcome.statuscode, outcome.statusmsg) == (1, "No such command: check_load")
    assert outcome.data == {"written": None, "count": 0}
    assert outcome.decision == "allow"


def test_reply_fail_continues(host):
    outcome = dispatch(host, call("soft_fail"))
    assert (outcome.statuscode, outcome.statusmsg) == (1, "partly failed")
    assert outcome.data["written"] == "after the failure"


def test_rpc_error_subclasses(host):
    outcome = dispatch(host, call("invalid"))
    assert (outcome.statuscode, outcome.statusmsg) == (4, "the value is wrong")


@pytest.mark.parametrize(("exc", "code"), [
    (Aborted("x"), 1), (UnknownAction("x"), 2), (MissingData("x"), 3), (InvalidData("x"), 4),
    (UnknownError("x"), 5), (RPCError("x", 3), 3), (RPCError("x"), 5), (RPCError("x", 0), 5),
    (RPCError("x", 99), 5), (Aborted("x", 4), 4),
])
def test_exception_codes(exc, code):
    assert exc.statuscode == code
    assert str(exc) == "x"


def test_exception_is_status_5_with_a_short_message(host, canary, caplog):
    with caplog.at_level(logging.ERROR, logger="collective.server.dispatch"):
        outcome = dispatch(host, call("boom"))
    assert outcome.statuscode == 5
    assert outcome.statusmsg.startswith("Unknown error in canary#boom: ValueError: first line")
    assert len(outcome.statusmsg) < 250
    assert "Traceback" not in outcome.statusmsg and "second line" not in outcome.statusmsg
    assert canary.read_text() == "boom\n"
    assert any(r.exc_info and "canary#boom" in r.getMessage() for r in caplog.records)


def test_system_exit_in_an_action_is_status_5(host):
    assert dispatch(host, call("exit")).statuscode == 5


def test_reply_data_that_is_not_json_is_status_5(host):
    outcome = dispatch(host, call("not_json"))
    assert outcome.statuscode == 5
    assert outcome.data == {"written": None, "count": 0}


def test_bad_output_type_is_logged_not_failed(host, caplog):
    with caplog.at_level(logging.WARNING, logger="collective.server.dispatch"):
        outcome = dispatch(host, call("bad_output"))
    assert (outcome.statuscode, outcome.data["count"]) == (0, "many")
    assert "output count should be integer, not string" in caplog.text


# -- what may not run (S6) -----------------------------------------------------------------------

HIDDEN = ["__init__", "_private", "run", "ddl", "__class__", "helper", "touch", "activate",
          "actions", "action_function", "__dict__", "timeout", "nosuch", "", "WRITE", "write ",
          "__getattribute__"]


@pytest.mark.parametrize("name", HIDDEN)
def test_unknown_actions_are_status_2_and_run_nothing(host, canary, name):
    outcome = dispatch(host, call(name))
    assert outcome.statuscode == 2
    assert outcome.statusmsg == f"Unknown action {name} for agent canary"
    assert outcome.decision == "invalid"
    assert outcome.data == {}
    assert not canary.exists()
    assert host.run(call(name)).statuscode == 2
    assert not canary.exists()


@pytest.mark.parametrize("agent", ["nosuch", "Canary", "__class__"])
def test_unknown_agents_are_status_2_and_say_unknown_agent(host, canary, agent):
    outcome = dispatch(host, call("write", agent=agent, text="x"))
    assert (outcome.statuscode, outcome.statusmsg) == (
        2, f"Unknown agent {agent}: this node does not have it")
    assert outcome.reason == "unknown_agent"
    assert not canary.exists()


def test_non_string_names_are_status_2(host):
    info = CallInfo("id", "cert=a", "h", "canary", ["write"], {}, "mcollective", 0)  # type: ignore[arg-type]
    assert host.prepare(info).statuscode == 2


def test_undeclared_input_is_status_4_and_runs_nothing(host, canary):
    outcome = dispatch(host, call("write", text="x", command="touch /tmp/pwn"))
    assert outcome.statuscode == 4
    assert outcome.statusmsg == "request contains an input 'command' that is not declared in the DDL"
    assert (outcome.decision, outcome.reason) == ("invalid", "invalid_data")
    assert not canary.exists()


def test_missing_input_is_status_3(host, canary):
    outcome = dispatch(host, call("write"))
    assert (outcome.statuscode, outcome.statusmsg) == (3, "Action write needs a text argument")
    assert outcome.data == {"written": None, "count": 0}
    assert not canary.exists()


@pytest.mark.parametrize("text", ["x; touch /tmp/pwn", "x\ntouch /tmp/pwn", "$(touch /tmp/pwn)",
                                  "`id`", "x & y", "-oDpkg::Pre-Invoke::=touch /tmp/pwn", "--help",
                                  "../../bin/sh", "a" * 10240, "x\x00y", 5, None])
def test_invalid_input_is_status_4_and_runs_nothing(host, canary, text):
    outcome = dispatch(host, call("write", text=text))
    assert outcome.statuscode == 4
    assert not canary.exists()


def test_run_without_prepare_still_validates(host, canary):
    assert host.run(call("write", text="x; touch /tmp/pwn")).statuscode == 4
    assert not canary.exists()


# -- authorization ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self, decision=None, error=None):
        self.decision = decision
        self.error = error
        self.contexts: list[AuthzContext] = []

    def authorize(self, ctx):
        self.contexts.append(ctx)
        if self.error:
            raise self.error
        return self.decision


def test_authorizer_deny_is_status_1_and_runs_nothing(config, canary):
    authz = Recorder(Decision(False, "no policy matched: default deny", "puppet.policy:3"))
    host, _ = make_host(config, authorizer=authz)
    outcome = dispatch(host, call("write", text="hello"))
    assert (outcome.statuscode, outcome.statusmsg) == (1, "You are not authorized to call this agent or action.")
    assert outcome.decision == "deny"
    assert "default deny" in outcome.reason and "puppet.policy:3" in outcome.reason
    assert not canary.exists()
    assert host.run(call("write", text="hello")).decision == "deny"
    assert not canary.exists()


def test_authorizer_sees_validated_data_and_node_facts(config):
    authz = Recorder(Decision.allow("policy line 1"))
    host, _ = make_host(config, authorizer=authz)
    assert dispatch(host, call("write", text="hello")).statuscode == 0
    ctx = authz.contexts[0]
    assert (ctx.caller, ctx.agent, ctx.action, ctx.identity) == ("cert=alice", "canary", "write", "node-1")
    assert dict(ctx.data) == {"text": "hello"}
    assert dict(ctx.facts) == {"role": "web"} and list(ctx.classes) == ["base"]
    with pytest.raises(TypeError):
        ctx.data["text"] = "changed"  # type: ignore[index]


def test_authorizer_called_once_per_call(config):
    authz = Recorder(Decision(True, "ok"))
    host, _ = make_host(config, authorizer=authz)
    dispatch(host, call("write", text="hello"))
    assert len(authz.contexts) == 1


def test_authorizer_not_called_for_invalid_requests(config):
    authz = Recorder(Decision(True, "ok"))
    host, _ = make_host(config, authorizer=authz)
    dispatch(host, call("__init__"))
    dispatch(host, call("write", text="x;y"))
    assert authz.contexts == []


@pytest.mark.parametrize("authz", [Recorder(error=RuntimeError("policy file vanished")),
                                   Recorder(decision=None), Recorder(decision="yes")])
def test_broken_authorizer_fails_closed(config, canary, authz):
    host, _ = make_host(config, authorizer=authz)
    outcome = dispatch(host, call("write", text="hello"))
    assert (outcome.statuscode, outcome.decision) == (1, "deny")
    assert not canary.exists()


# -- loading ---------------------------------------------------------------------------------------


def test_check_agent_both_directions():
    ddl_doc = {**CANARY_DDL, "actions": [*CANARY_DDL["actions"], action_spec("extra")]}
    problems = check_agent(Canary, AgentDDL.load(ddl_doc))
    assert len(problems) == 1
    assert "Canary" in problems[0] and "canary.json" in problems[0] and "'extra'" in problems[0]

    class More(Canary):
        @action
        def undeclared(self, request, reply):
            pass

    problems = check_agent(More, AgentDDL.load(CANARY_DDL))
    assert len(problems) == 1
    assert "More" in problems[0] and "canary.json" in problems[0] and "'undeclared'" in problems[0]
    assert check_agent(Canary, AgentDDL.load(CANARY_DDL)) == []


def test_check_agent_reserved_and_private_marks():
    class Sneaky(Canary):
        @action
        def _hidden(self, request, reply):
            pass

        @action
        def activate(cls, config):  # type: ignore[override]
            return True

    assert Sneaky.actions() == Canary.actions()
    problems = check_agent(Sneaky, AgentDDL.load(CANARY_DDL))
    assert any("'_hidden'" in p for p in problems) and any("'activate'" in p for p in problems)


def test_check_agent_name_mismatch():
    class Other(Canary):
        name = "other"

    problems = check_agent(Other, AgentDDL.load(CANARY_DDL))
    assert problems and "'other'" in problems[0] and "canary.json" in problems[0]


def test_override_without_mark_removes_the_action():
    class Fewer(Canary):
        def write(self, request, reply):
            self.touch("unmarked override")

    assert "write" not in Fewer.actions()


def make_class(name, **attrs):
    ddl = {**CANARY_DDL, "metadata": {**CANARY_DDL["metadata"], "name": name}}
    return type(name.title(), (Canary,), {"name": name, **attrs}), AgentDDL.load(ddl)


def test_load_disables_only_the_broken_agent(config, caplog):
    def explode(self, config, node):
        raise OSError("cannot open /etc/broken.conf")

    broken, broken_ddl = make_class("broken", __init__=explode)
    nodll, _ = make_class("noddl")
    sleepy, sleepy_ddl = make_class("sleepy", activate=classmethod(lambda cls, config: False))
    bad_activate, bad_activate_ddl = make_class(
        "badact", activate=classmethod(lambda cls, config: 1 / 0))

    class Mismatch(Canary):
        name = "mismatch"

    _, mismatch_ddl = make_class("mismatch")
    mismatch_ddl.actions.pop("write")
    classes = {"canary": Canary, "broken": broken, "noddl": nodll, "sleepy": sleepy,
               "badact": bad_activate, "mismatch": Mismatch}
    ddls = {"canary": AgentDDL.load(CANARY_DDL), "broken": broken_ddl, "sleepy": sleepy_ddl,
            "badact": bad_activate_ddl, "mismatch": mismatch_ddl}
    with caplog.at_level(logging.DEBUG, logger="collective.server.dispatch"):
        host, problems = make_host(config, classes=classes, ddls=ddls)
    assert sorted(host.agents) == ["canary"]
    text = "\n".join(problems)
    assert len(problems) == 4
    assert "agent broken" in text and "OSError: cannot open /etc/broken.conf" in text
    assert "agent noddl" in text and "no DDL" in text
    assert "agent badact" in text and "ZeroDivisionError" in text
    assert "agent mismatch" in text and "'write'" in text
    assert "sleepy" not in text
    assert "sleepy is not activated" in caplog.text
    assert dispatch(host, call("write", agent="sleepy", text="x")).statuscode == 2


def test_load_rejects_non_agent_classes(config):
    class NotAnAgent:
        name = "canary"

    host, problems = make_host(config, classes={"canary": NotAnAgent})
    assert host.agents == {} and "not a subclass" in problems[0]


def test_static_node_describes_the_host(host):
    node = host.node
    assert list(node.agent_ddls()) == ["canary"]
    stats = node.stats()
    assert stats["agents"] == ["canary"] and stats["total"] == 0 and stats["version"]


def test_concurrent_runs(host, canary):
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda i: dispatch(host, call("write", text=f"line{i}")), range(64)))
    assert all(o.statuscode == 0 for o in outcomes)
    assert len(canary.read_text().splitlines()) == 64


def test_request_error_is_shared():
    assert RequestError is DDLRequestError
    err = RequestError(3, "Action x needs a y argument")
    assert (err.statuscode, str(err)) == (3, "Action x needs a y argument")


def test_reply_mapping():
    reply = Reply({"a": [1]})
    reply["b"] = 2
    del reply["b"]
    assert dict(reply) == {"a": [1]} and len(reply) == 1
    reply.fail("bad", 7)
    assert (reply.statuscode, reply.statusmsg) == (5, "bad")
