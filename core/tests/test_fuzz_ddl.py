"""Fuzzing the DDL loader: every shipped DDL, with values swapped for random JSON of any
type, keys dropped or added, as a file, as data and as a DDL fetched from a node. Only
:class:`~collective.ddl.DDLError` (naming the file) may come out; what loads validates
requests raising only :class:`~collective.ddl.RequestError`.

Bounded: a few hundred examples per target, a deadline per example (docs/security.md)."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collective.client.remote_ddl import load_untrusted
from collective.ddl import AgentDDL, DDLError, RequestError

ROOT = Path(__file__).resolve().parents[2]


def _shipped() -> list[dict[str, Any]]:
    paths = sorted(ROOT.glob("plugins/*/src/*/*.json")) + sorted(
        (ROOT / "tests" / "canary" / "src" / "collective_test_canary").glob("*.json"))
    docs = [json.loads(path.read_text()) for path in paths]
    docs.append(json.loads((files("collective.agents.rpcutil") / "rpcutil.json").read_text()))
    return [doc for doc in docs if isinstance(doc, dict) and "actions" in doc]


DOCS = _shipped()
SETTINGS = settings(max_examples=150, deadline=timedelta(seconds=2), database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

#: JSON values of every type, with the awkward ones hypothesis would rarely find alone
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from(["", "$", "urn:collective:ddl:agent:v1", "string", "object", "array",
                     "#/nope", "a{99999999999}", "(" * 300, "[", "\\", "x-", "failed",
                     "1.0.0", "run", "-rf", "\n", "\x00"]),
)
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8),
                              st.sampled_from(["type", "$ref", "pattern", "format", "default",
                                               "properties", "items", "required", "x-prompt",
                                               "patternProperties", "enum", "maxLength"])),
                    inner, max_size=4)), max_leaves=12)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated_ddls(draw: st.DrawFn) -> dict[str, Any]:
    """A shipped DDL with one to three mutations: a value replaced by random JSON, a key
    removed, a key added, or a container turned into the other kind."""
    doc = copy.deepcopy(draw(st.sampled_from(DOCS)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        kind = draw(st.sampled_from(["replace", "replace", "drop", "add", "flip"]))
        if not path:
            if kind in ("replace", "flip"):
                return draw(_json)
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        if kind == "replace":
            parent[key] = draw(_json)
        elif kind == "drop":
            del parent[key]
        elif kind == "add" and isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=8))] = draw(_json)
        elif kind == "add" and isinstance(parent[key], list):
            parent[key].append(draw(_json))
        elif kind == "flip":
            value = parent[key]
            parent[key] = (list(value.values()) if isinstance(value, dict) else
                           {str(i): v for i, v in enumerate(value)} if isinstance(value, list)
                           else [value])
    return doc


def _name(doc: Any) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name.isidentifier() else "fuzz"


def _check_loaded(ddl: AgentDDL, data: Any) -> None:
    for act in ddl.actions.values():
        try:
            act.validate_input(data)
        except RequestError as exc:
            assert exc.statuscode in (3, 4)
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            try:
                act.convert_cli(data)
            except RequestError as exc:
                assert exc.statuscode == 4
        act.output_defaults()
        act.validate_output(data if isinstance(data, dict) else {})
    assert len(ddl.sha256) == 64


# the crashes this fuzzer found (each was a TypeError, a referencing error, an
# OverflowError or a RecursionError instead of a DDLError)
_BASE = next(doc for doc in DOCS if doc["metadata"]["name"] == "rpcutil")


def _with(change) -> dict[str, Any]:
    doc = copy.deepcopy(_BASE)
    change(doc)
    return doc


def _nested(depth: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(depth):
        out = [out]
    return out


def _first_input(doc: dict[str, Any]) -> dict[str, Any]:
    spec = next(a for a in doc["actions"] if a.get("input", {}).get("properties"))
    return next(iter(spec["input"]["properties"].values()))


@SETTINGS
@given(mutated_ddls(), _json)
@example(_with(lambda d: d.update({"$schema": [d["$schema"]]})), {})
@example(_with(lambda d: d.update({"$schema": {"id": d["$schema"]}})), {})
@example(_with(lambda d: _first_input(d).update({"$ref": "#/nope", "default": "x"})), {})
@example(_with(lambda d: _first_input(d).update({"$ref": "https://example.com/s.json"})), {})
@example(_with(lambda d: _first_input(d).update({"pattern": "a{99999999999}"})), {})
@example(_with(lambda d: _first_input(d).update({"pattern": "(" * 2000 + ")" * 2000})), {})
@example(_with(lambda d: d.update({"x-deep": _nested(100)})), {})
def test_mutated_ddl_raises_only_ddl_error(tmp_path, doc, data):
    name = _name(doc)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    for how in ("file", "data", "untrusted"):
        try:
            if how == "file":
                ddl = AgentDDL.load(path)
            elif how == "data":
                ddl = AgentDDL.load(doc, source=f"{name}.json")
            else:
                ddl = load_untrusted(doc, name, source=f"{name}.json")
        except DDLError as exc:
            assert str(exc).startswith(f"{name}.json: "), str(exc)  # the file, then the key
            continue
        _check_loaded(ddl, data)


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b'{"$schema": ["urn:collective:ddl:agent:v1"]}')
def test_arbitrary_ddl_bytes_raise_only_ddl_error(tmp_path, raw):
    path = tmp_path / "fuzz.json"
    path.write_bytes(raw)
    with pytest.raises(DDLError, match=r"^fuzz\.json: "):
        AgentDDL.load(path)


def test_a_ref_that_resolves_still_works(tmp_path):
    doc = copy.deepcopy(_BASE)
    spec = next(a for a in doc["actions"] if a["action"] == "get_fact")
    spec["input"]["$defs"] = {"fact": {"type": "string", "maxLength": 3}}
    spec["input"]["properties"]["fact"]["$ref"] = "#/$defs/fact"
    act = AgentDDL.load(doc).action("get_fact")
    assert act.validate_input({"fact": "os"}) == {"fact": "os"}
    with pytest.raises(RequestError, match="longer than 3"):
        act.validate_input({"fact": "kernel"})


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update({"$schema": ["urn:collective:ddl:agent:v1"]}), "rpcutil.json: $schema: must be"),
    (lambda d: d["metadata"].update(timeout="10"), "rpcutil.json: metadata.timeout: '10' is not of type"),
    (lambda d: d.update(actions={}), "rpcutil.json: actions: {} is not of type 'array'"),
    (lambda d: d["actions"][0].update(output=[]), "rpcutil.json: actions[0].output: [] is not of type"),
    (lambda d: d["actions"][0].update(aggregate={}), "rpcutil.json: actions[0].aggregate: {} is not"),
    (lambda d: d["actions"][0].update(display=1), "rpcutil.json: actions[0].display: 1 is not one of"),
    (lambda d: d["metadata"].update(name=5), "rpcutil.json: metadata.name: 5 is not of type 'string'"),
    (lambda d: d.update({"x-nan": float("nan")}), "rpcutil.json: x-nan: nan is not JSON data"),
    (lambda d: d.update({"x-set": {1}}), "rpcutil.json: x-set: {1} is not JSON data"),
])
def test_wrong_json_types_name_file_and_key(change, message):
    doc = copy.deepcopy(_BASE)
    change(doc)
    with pytest.raises(DDLError) as info:
        AgentDDL.load(doc, source="rpcutil.json")
    assert str(info.value).startswith(message), str(info.value)
    assert len(str(info.value)) < 400  # one line, not the whole document
