"""The DDL: meta-schema errors naming file and key, input validation, CLI conversion."""

from __future__ import annotations

import copy
import functools
import json
import socket
from importlib.resources import files

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collective.ddl import (
    DDL_SCHEMA_ID,
    AgentDDL,
    DDLError,
    RequestError,
    _ecma_to_python,
    meta_schema,
)
from collective.formats import BUILTIN_FORMATS, Format

RPCUTIL = files("collective.agents.rpcutil") / "rpcutil.json"


def base_ddl() -> dict:
    return {
        "$schema": DDL_SCHEMA_ID,
        "metadata": {"name": "nrpe", "description": "Runs NRPE checks", "author": "me",
                     "license": "Apache-2.0", "version": "1.0.0", "url": "https://example.com",
                     "timeout": 5},
        "actions": [{
            "action": "runcommand",
            "description": "Run a check",
            "input": {
                "type": "object",
                "required": ["command"],
                "properties": {
                    "command": {"type": "string", "description": "The check", "x-prompt": "Check",
                                "maxLength": 50, "pattern": "^[a-zA-Z0-9_-]+$"},
                },
            },
            "output": {
                "output": {"description": "Output", "display_as": "Output", "type": "string",
                           "default": ""},
                "exitcode": {"description": "Exit code", "display_as": "Exit Code",
                             "type": "integer", "default": 3},
                "perfdata": {"description": "Perf data", "display_as": "Performance Data"},
            },
            "aggregate": [{"function": "nagios_states", "args": ["exitcode"]}],
        }],
    }


def load_file(tmp_path, doc, name="nrpe.json", **kwargs):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return AgentDDL.load(path, **kwargs)


# -- the meta-schema -------------------------------------------------------------------


def test_meta_schema_is_local_and_valid():
    import jsonschema

    schema = meta_schema()
    assert schema["$id"] == DDL_SCHEMA_ID
    jsonschema.Draft202012Validator.check_schema(schema)


def test_rpcutil_ddl_loads_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the DDL loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    ddl = AgentDDL.load(RPCUTIL)
    assert ddl.name == "rpcutil"
    assert ddl.timeout == 10
    assert ddl.source == "rpcutil.json"
    assert set(ddl.actions) == {"ping", "inventory", "get_fact", "get_facts", "daemon_stats",
                                "agent_inventory", "agent_ddl", "collective_info",
                                "get_config_item"}
    assert all(act.display == "always" for act in ddl.actions.values())
    assert ddl.actions["get_fact"].aggregates == [{"function": "summary", "args": ["value"]}]
    assert ddl.actions["get_fact"].required == ["fact"]
    assert ddl.metadata["version"] == "0.1.0"
    assert ddl.to_dict() == json.loads(RPCUTIL.read_text())


def test_load_forms(tmp_path):
    doc = base_ddl()
    from_dict = AgentDDL.load(doc)
    from_path = load_file(tmp_path, doc)
    from_str = AgentDDL.load(str(tmp_path / "nrpe.json"))
    assert from_dict.to_dict() == from_path.to_dict() == from_str.to_dict() == doc
    assert from_dict.source == "nrpe.json"
    act = from_path.actions["runcommand"]
    assert act.display == "failed"  # the default
    assert act.inputs["command"]["x-prompt"] == "Check"
    assert act.outputs["exitcode"]["display_as"] == "Exit Code"
    # the loaded DDL does not share state with the document it came from
    doc["actions"][0]["input"]["properties"]["command"]["maxLength"] = 1
    assert from_dict.actions["runcommand"].inputs["command"]["maxLength"] == 50


def mutate(path, value=None, delete=False):
    """A base DDL with the key at ``path`` (a tuple) set or deleted."""
    doc = base_ddl()
    node = doc
    for part in path[:-1]:
        node = node[part]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


ACTION = ("actions", 0)
COMMAND = (*ACTION, "input", "properties", "command")

BAD = [
    pytest.param(mutate(("metadata", "url"), delete=True),
                 "nrpe.json: metadata: 'url' is a required property", id="missing-metadata-url"),
    pytest.param(mutate(("metadata", "timeout"), delete=True),
                 "nrpe.json: metadata: 'timeout' is a required property", id="missing-timeout"),
    pytest.param(mutate(("metadata", "timeout"), 0),
                 "nrpe.json: metadata.timeout: 0 is less than the minimum of 1", id="timeout-0"),
    pytest.param(mutate(("metadata", "version"), "one"),
                 "nrpe.json: metadata.version: 'one' does not match", id="version"),
    pytest.param(mutate(("metadata", "colour"), "red"),
                 "nrpe.json: metadata.colour: unknown key", id="unknown-metadata-key"),
    pytest.param(mutate((*ACTION, "action"), "Run-Command"),
                 "nrpe.json: actions[0].action: 'Run-Command' does not match", id="bad-action-name"),
    pytest.param(mutate((*ACTION, "action"), "_private"),
                 "nrpe.json: actions[0].action: '_private' does not match", id="private-action"),
    pytest.param(mutate((*ACTION, "display"), "sometimes"),
                 "nrpe.json: actions[0].display: 'sometimes' is not one of", id="display"),
    pytest.param(mutate((*ACTION, "inputs"), {}),
                 "nrpe.json: actions[0].inputs: unknown key", id="typo-inputs"),
    pytest.param(mutate((*COMMAND, "type"), delete=True),
                 "nrpe.json: actions[0].input.properties.command: 'type' is a required property",
                 id="input-without-type"),
    pytest.param(mutate((*COMMAND, "description"), delete=True),
                 "nrpe.json: actions[0].input.properties.command: 'description' is a required property",
                 id="input-without-description"),
    pytest.param(mutate((*COMMAND, "type"), "strng"),
                 "nrpe.json: actions[0].input.properties.command.type: 'strng' is not a valid type",
                 id="input-bad-type"),
    pytest.param(mutate((*COMMAND, "format"), "shelsafe"),
                 "nrpe.json: actions[0].input.properties.command.format: unknown format 'shelsafe'",
                 id="unknown-format"),
    pytest.param(mutate((*COMMAND, "pattern"), "^(unclosed$"),
                 "nrpe.json: actions[0].input.properties.command.pattern: not a valid JSON Schema: "
                 "'^(unclosed$' is not a 'regex'",
                 id="bad-pattern"),
    pytest.param(mutate((*COMMAND, "minimum"), "zero"),
                 "nrpe.json: actions[0].input.properties.command.minimum: not a valid JSON Schema",
                 id="input-not-json-schema"),
    pytest.param(mutate((*COMMAND, "default"), "x; rm"),
                 "nrpe.json: actions[0].input.properties.command.default: 'x; rm' does not match",
                 id="default-fails-own-schema"),
    pytest.param(mutate((*COMMAND, "maxlength"), 50),
                 "nrpe.json: actions[0].input.properties.command.maxlength: unknown JSON Schema "
                 "keyword (did you mean 'maxLength'?)", id="mcollective-maxlength"),
    pytest.param(mutate((*COMMAND, "optional"), False),
                 "nrpe.json: actions[0].input.properties.command.optional: unknown JSON Schema keyword",
                 id="mcollective-optional"),
    pytest.param(mutate((*ACTION, "input", "requried"), ["command"]),
                 "nrpe.json: actions[0].input.requried: unknown JSON Schema keyword "
                 "(did you mean 'required'?)", id="typo-required"),
    pytest.param(mutate((*ACTION, "input", "required"), ["command", "args"]),
                 "nrpe.json: actions[0].input.required: 'args' is not an input of this action",
                 id="required-undeclared"),
    pytest.param(mutate((*ACTION, "input", "type"), "array"),
                 "nrpe.json: actions[0].input.type: 'object' was expected", id="input-not-object"),
    pytest.param(mutate((*ACTION, "input", "properties", "Bad Name"),
                        {"type": "string", "description": "x"}),
                 "nrpe.json: actions[0].input.properties: 'Bad Name' does not match",
                 id="input-name-grammar"),
    pytest.param(mutate((*ACTION, "output", "exitcode", "display_as"), delete=True),
                 "nrpe.json: actions[0].output.exitcode: 'display_as' is a required property",
                 id="output-without-display_as"),
    pytest.param(mutate((*ACTION, "output", "exitcode", "displayas"), "x"),
                 "nrpe.json: actions[0].output.exitcode.displayas: unknown key", id="output-typo"),
    pytest.param(mutate((*ACTION, "aggregate", 0, "args"), ["nosuch"]),
                 "nrpe.json: actions[0].aggregate[0].args[0]: 'nosuch' is not an output",
                 id="aggregate-unknown-output"),
    pytest.param(mutate(("$schema",), "https://choria.io/schemas/mcorpc/ddl/v1/agent.json"),
                 "nrpe.json: $schema: must be 'urn:collective:ddl:agent:v1'", id="foreign-schema"),
    pytest.param(mutate(("$schema",), delete=True),
                 "nrpe.json: $schema: must be 'urn:collective:ddl:agent:v1'", id="missing-schema"),
    pytest.param(mutate(("metadata", "name"), "other"),
                 "nrpe.json: metadata.name: 'other' does not match the file name", id="name-vs-file"),
    pytest.param(mutate(("actions",), [base_ddl()["actions"][0]] * 2),
                 "nrpe.json: actions[1].action: duplicate action 'runcommand'", id="duplicate-action"),
    pytest.param([1, 2], "nrpe.json: (top level): a DDL must be a JSON object", id="not-object"),
]


@pytest.mark.parametrize(("doc", "message"), BAD)
def test_bad_ddls_name_file_and_key(tmp_path, doc, message):
    with pytest.raises(DDLError) as info:
        load_file(tmp_path, doc)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("{", "nrpe.json: invalid JSON: line 1 column 2"),
    ('{"a": 1, "a": 2}', "nrpe.json: duplicate key 'a'"),
    ('{"a": NaN}', "nrpe.json: NaN is not valid JSON"),
])
def test_bad_json(tmp_path, text, message):
    with pytest.raises(DDLError, match="^" + message.replace("(", r"\(")):
        load_file(tmp_path, text)


def test_unreadable_file(tmp_path):
    with pytest.raises(DDLError, match="nope.json: cannot read"):
        AgentDDL.load(tmp_path / "nope.json")


def test_ddl_error_is_a_value_error():
    assert issubclass(DDLError, ValueError)


def test_custom_format_registry(tmp_path):
    doc = mutate((*COMMAND, "format"), "nrpe_command")
    with pytest.raises(DDLError, match="unknown format 'nrpe_command'"):
        load_file(tmp_path, doc)
    only_check = Format("nrpe_command", lambda v: v.startswith("check_"), "a check_* name")
    registry = {f.name: f for f in (*BUILTIN_FORMATS, only_check)}
    act = load_file(tmp_path, doc, formats=registry).actions["runcommand"]
    assert act.validate_input({"command": "check_load"}) == {"command": "check_load"}
    with pytest.raises(RequestError) as info:
        act.validate_input({"command": "load"})
    assert info.value.statuscode == 4
    assert str(info.value) == "Cannot validate input command: is not a valid nrpe_command (a check_* name)"
    # a list of formats works as well as a registry
    assert load_file(tmp_path, doc, formats=[only_check]).actions["runcommand"]


def test_format_nested_in_items_is_checked(tmp_path):
    doc = mutate((*ACTION, "input", "properties", "hosts"),
                 {"type": "array", "description": "hosts", "items": {"type": "string", "format": "nosuch"}})
    with pytest.raises(DDLError, match=r"actions\[0\]\.input\.properties\.hosts\.items\.format: unknown format"):
        load_file(tmp_path, doc)


def test_an_input_called_format_is_not_a_format_keyword(tmp_path):
    doc = mutate((*ACTION, "input", "properties", "format"),
                 {"type": "string", "description": "output format", "enum": ["json", "text"]})
    act = load_file(tmp_path, doc).actions["runcommand"]
    assert act.validate_input({"command": "x", "format": "json"})["format"] == "json"


# -- validate_input --------------------------------------------------------------------


@functools.cache
def typed_action():
    doc = base_ddl()
    doc["actions"][0]["input"] = {
        "type": "object",
        "required": ["service"],
        "properties": {
            "service": {"type": "string", "description": "d", "format": "service_name", "maxLength": 90},
            "mode": {"type": "string", "description": "d", "enum": ["all", "headers"], "default": "all"},
            "count": {"type": "integer", "description": "d", "minimum": 1, "maximum": 10},
            "ratio": {"type": "number", "description": "d"},
            "force": {"type": "boolean", "description": "d", "default": False},
            "tags": {"type": "array", "description": "d", "items": {"type": "string", "format": "shellsafe"},
                     "maxItems": 3},
            "options": {"type": "object", "description": "d"},
            "name": {"type": "string", "description": "d", "pattern": "^[a-z_]+$", "maxLength": 8},
            "digits": {"type": "string", "description": "d", "pattern": "^\\d+$"},
            "token": {"type": "string", "description": "d", "maxLength": 4, "x-sensitive": True},
            "maybe": {"type": ["integer", "null"], "description": "d"},
        },
    }
    return AgentDDL.load(doc).actions["runcommand"]


def test_valid_input_and_defaults_filled():
    act = typed_action()
    data = {"service": "nginx", "count": 3, "ratio": 0.5, "tags": ["a", "b"], "options": {"k": 1},
            "name": "abc", "digits": "123", "maybe": None}
    out = act.validate_input(data)
    assert out == {**data, "mode": "all", "force": False}
    assert "mode" not in data  # the caller's dict is not changed
    assert act.validate_input({"service": "nginx", "mode": "headers"})["mode"] == "headers"


def test_defaults_are_copies():
    doc = base_ddl()
    doc["actions"][0]["input"]["properties"]["opts"] = {"type": "array", "description": "d", "default": []}
    act = AgentDDL.load(doc).actions["runcommand"]
    first = act.validate_input({"command": "x"})
    first["opts"].append("mutated")
    assert act.validate_input({"command": "x"})["opts"] == []


def test_missing_required_is_status_3():
    with pytest.raises(RequestError) as info:
        typed_action().validate_input({"count": 1})
    assert (info.value.statuscode, str(info.value)) == (3, "Action runcommand needs a service argument")


def test_undeclared_input_is_status_4():
    with pytest.raises(RequestError) as info:
        typed_action().validate_input({"service": "nginx", "servce": "x"})
    assert info.value.statuscode == 4
    assert str(info.value) == "request contains an input 'servce' that is not declared in the DDL"


def test_undeclared_checked_before_missing():
    with pytest.raises(RequestError) as info:
        typed_action().validate_input({"servce": "nginx"})
    assert info.value.statuscode == 4


INVALID = [
    ({"service": 5}, "Cannot validate input service: should be a string, not integer"),
    ({"service": "x; touch /tmp/pwn"}, "Cannot validate input service: is not a valid service_name"),
    ({"service": "-oDpkg::Pre-Invoke::=touch /tmp/pwn"}, "Cannot validate input service: is not a valid service_name"),
    ({"service": "x" * 91}, "Cannot validate input service: is longer than 90 character(s)"),
    ({"mode": "some"}, "Cannot validate input mode: should be one of all, headers"),
    ({"count": "3"}, "Cannot validate input count: should be an integer, not string"),
    ({"count": 1.5}, "Cannot validate input count: should be an integer, not number"),
    ({"count": True}, "Cannot validate input count: should be an integer, not boolean"),
    ({"count": 0}, "Cannot validate input count: should be at least 1"),
    ({"count": 11}, "Cannot validate input count: should be at most 10"),
    ({"ratio": "0.5"}, "Cannot validate input ratio: should be a number, not string"),
    ({"force": "yes"}, "Cannot validate input force: should be a boolean, not string"),
    ({"force": 1}, "Cannot validate input force: should be a boolean, not integer"),
    ({"tags": "a,b"}, "Cannot validate input tags: should be an array, not string"),
    ({"tags": ["ok", "$(id)"]}, "Cannot validate input tags[1]: is not a valid shellsafe"),
    ({"tags": ["a", "b", "c", "d"]}, "Cannot validate input tags: should have at most 3 item(s)"),
    ({"options": []}, "Cannot validate input options: should be an object, not array"),
    ({"name": "ABC"}, "Cannot validate input name: should match ^[a-z_]+$"),
    ({"name": "abcdefghi"}, "Cannot validate input name: is longer than 8 character(s)"),
    # ECMA-262 semantics: "$" is the end of the string, "\d" is ASCII only
    ({"name": "abc\n"}, "Cannot validate input name: should match ^[a-z_]+$"),
    ({"digits": "\u0661\u0662"}, "Cannot validate input digits: should match ^\\d+$"),
    ({"maybe": "x"}, "Cannot validate input maybe: should be an integer or null, not string"),
    ({"service": None}, "Cannot validate input service: should be a string, not null"),
]


@pytest.mark.parametrize(("extra", "message"), INVALID)
def test_invalid_values_are_status_4(extra, message):
    with pytest.raises(RequestError) as info:
        typed_action().validate_input({"service": "nginx", **extra})
    assert info.value.statuscode == 4
    assert str(info.value).startswith(message), str(info.value)


def test_sensitive_values_are_not_echoed():
    secret = "hunter2-very-secret"
    with pytest.raises(RequestError) as info:
        typed_action().validate_input({"service": "nginx", "token": secret})
    assert secret not in str(info.value)


def test_long_values_are_not_echoed_in_full():
    with pytest.raises(RequestError) as info:
        typed_action().validate_input({"service": "nginx", "options": {"x" * 10240: 1}, "count": "y" * 10240})
    assert len(str(info.value)) < 300


def test_non_mapping_request_data():
    with pytest.raises(RequestError) as info:
        typed_action().validate_input(["service"])
    assert info.value.statuscode == 4


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["service", "mode", "count", "ratio", "force", "tags", "options",
                                        "name", "digits", "token", "maybe", "other"]), JSONISH))
def test_validate_input_only_raises_request_error(data):
    act = typed_action()
    try:
        out = act.validate_input(data)
    except RequestError as exc:
        assert exc.statuscode in (3, 4)
    else:
        assert set(out) >= set(data)


@pytest.mark.parametrize(("pattern", "python"), [
    ("^a$", r"^a\Z"),
    (r"^\$$", r"^\$\Z"),
    ("^[$]$", r"^[$]\Z"),
    ("^[]$]$", r"^[]$]\Z"),
    ("^[^]$]+$", r"^[^]$]+\Z"),
    ("a|b$", r"a|b\Z"),
])
def test_ecma_dollar_translation(pattern, python):
    assert _ecma_to_python(pattern) == python


def test_input_patterns_match_in_linear_time(tmp_path):
    """Inputs are validated before authorization: a backtracking pattern in a DDL must
    not let crafted data stall the node (docs/security.md S20)."""
    import time

    doc = base_ddl()
    doc["actions"][0]["input"]["properties"]["command"].update(pattern="^(a|aa)+$",
                                                               maxLength=10_000)
    act = load_file(tmp_path, doc).actions["runcommand"]
    started = time.monotonic()
    with pytest.raises(RequestError) as exc:
        act.validate_input({"command": "a" * 5000 + "!"})
    assert time.monotonic() - started < 1.0  # Python's re: hours
    assert exc.value.statuscode == 4 and "should match ^(a|aa)+$" in str(exc.value)
    assert act.validate_input({"command": "a" * 5000})["command"] == "a" * 5000


def test_a_timeout_over_a_day_is_a_ddl_error(tmp_path):
    doc = base_ddl()
    doc["metadata"]["timeout"] = 10**30  # would overflow the timed waits of dispatch
    with pytest.raises(DDLError, match=r"nrpe.json: metadata.timeout: .*86400"):
        load_file(tmp_path, doc)


def test_an_input_pattern_re2_cannot_run_is_a_ddl_error(tmp_path):
    doc = base_ddl()
    doc["actions"][0]["input"]["properties"]["command"]["pattern"] = r"^(a)\1$"
    with pytest.raises(DDLError, match=r"nrpe.json: .*command.pattern: invalid regular "
                                       r"expression: RE2, the linear-time engine"):
        load_file(tmp_path, doc)


# -- convert_cli -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "text", "value"), [
    *[("force", t, True) for t in ("true", "T", "yes", "Y", "1", "TRUE", " yes ")],
    *[("force", t, False) for t in ("false", "f", "No", "n", "0", "FALSE")],
    ("count", "3", 3),
    ("count", "-3", -3),
    ("ratio", "0.5", 0.5),
    ("ratio", "2", 2),
    ("ratio", "1e3", 1000.0),
    ("tags", '["a", "b"]', ["a", "b"]),
    ("options", '{"k": 1}', {"k": 1}),
    ("service", "nginx", "nginx"),
    ("service", "123", "123"),
    ("maybe", "7", 7),
    ("maybe", "null", None),
])
def test_convert_cli(key, text, value):
    out = typed_action().convert_cli({key: text})
    assert out == {key: value}
    assert type(out[key]) is type(value)


@pytest.mark.parametrize(("key", "text", "message"), [
    ("force", "maybe", "does not look like a boolean"),
    ("force", "", "does not look like a boolean"),
    ("count", "1.5", "does not look like a number"),
    ("count", "ten", "does not look like a number"),
    ("ratio", "nan", "does not look like a number"),
    ("ratio", "inf", "does not look like a number"),
    ("ratio", "1.2.3", "does not look like a number"),
    ("tags", "a,b", "does not look like a JSON array"),
    ("tags", '{"a": 1}', "does not look like a JSON array"),
    ("options", "[1]", "does not look like a JSON object"),
    ("nosuch", "x", "request contains an input 'nosuch' that is not declared in the DDL"),
])
def test_convert_cli_errors(key, text, message):
    with pytest.raises(RequestError) as info:
        typed_action().convert_cli({key: text})
    assert info.value.statuscode == 4
    assert message in str(info.value)


def test_convert_cli_passes_typed_values_and_leaves_validation_to_validate_input():
    act = typed_action()
    assert act.convert_cli({"count": 4, "service": "x; rm"}) == {"count": 4, "service": "x; rm"}


# -- outputs -----------------------------------------------------------------------------


def test_output_defaults():
    act = AgentDDL.load(base_ddl()).actions["runcommand"]
    assert act.output_defaults() == {"output": "", "exitcode": 3, "perfdata": None}
    doc = mutate((*ACTION, "output", "perfdata", "default"), {"nested": []})
    act = AgentDDL.load(doc).actions["runcommand"]
    first = act.output_defaults()
    first["perfdata"]["nested"].append(1)
    assert act.output_defaults()["perfdata"] == {"nested": []}


def test_validate_output():
    act = AgentDDL.load(base_ddl()).actions["runcommand"]
    assert act.validate_output({"output": "ok", "exitcode": 0, "perfdata": [1], "extra": 1}) == []
    assert act.validate_output({"output": None, "exitcode": None}) == []
    problems = act.validate_output({"output": 1, "exitcode": "0"})
    assert problems == [
        "nrpe#runcommand: output output should be string, not integer",
        "nrpe#runcommand: output exitcode should be integer, not string",
    ]
    assert act.validate_output({"exitcode": True}) == ["nrpe#runcommand: output exitcode should be integer, not boolean"]


def test_action_without_input_or_output():
    doc = base_ddl()
    doc["actions"] = [{"action": "noop", "description": "nothing"}]
    act = AgentDDL.load(doc).actions["noop"]
    assert act.inputs == {} and act.required == [] and act.outputs == {} and act.aggregates == []
    assert act.validate_input({}) == {}
    with pytest.raises(RequestError):
        act.validate_input({"x": 1})


def test_x_keys_are_allowed():
    doc = copy.deepcopy(base_ddl())
    doc["x-generator"] = "hand"
    doc["actions"][0]["x-note"] = "fine"
    assert AgentDDL.load(doc).name == "nrpe"
