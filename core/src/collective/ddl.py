"""Agent DDLs: JSON documents validated against ``urn:collective:ddl:agent:v1``.

A DDL describes an agent's metadata and, per action, its inputs (a JSON Schema
object), outputs and aggregates; see ``docs/contracts.md``. The client validates
requests with it before they leave, and the daemon validates them again before
authorization and dispatch (MCollective: "The server will validate incoming
requests prior to sending it to agents").

The meta-schema ships in ``collective/schemas/`` and is read with
:mod:`importlib.resources`; nothing is ever fetched over the network.

Input validation differs from plain JSON Schema on purpose:

- inputs not declared in the DDL are refused (Choria's behaviour, safer than
  MCollective's, which passed them to the agent);
- ``pattern`` follows ECMA-262 as JSON Schema says: ``$`` is the end of the
  string (Python's ``$`` also matches before a trailing newline, so
  ``^[a-z]+$`` would accept ``"check_load\\n"``) and ``\\d``, ``\\w`` are ASCII;
- every ``format`` must name a registered :class:`~collective.formats.Format`
  (JSON Schema silently ignores unknown formats, so a typo would disable a check).
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from importlib.resources import files
from os import PathLike
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker, ValidationError
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from .formats import Format, format_registry

log = logging.getLogger(__name__)

__all__ = [
    "DDL_SCHEMA_ID",
    "AgentDDL",
    "ActionDDL",
    "DDLError",
    "RequestError",
    "canonical_json",
    "ddl_digest",
    "format_checker",
    "meta_schema",
]

#: The ``$schema`` every agent DDL carries.
DDL_SCHEMA_ID = "urn:collective:ddl:agent:v1"
#: Local files for the meta-schemas we know, under ``collective/schemas/``.
_SCHEMA_FILES = {DDL_SCHEMA_ID: "ddl-agent-v1.json"}

_BOOL_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_BOOL_FALSE = frozenset({"false", "f", "no", "n", "0"})
_INT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
#: Draft 2020-12 keywords. Anything else in an input schema is refused (``x-`` keys
#: excepted): JSON Schema ignores unknown keywords, so MCollective's ``maxlength`` or
#: ``validation`` would silently remove a limit.
SCHEMA_KEYWORDS = frozenset({
    "$schema", "$id", "$ref", "$anchor", "$dynamicRef", "$dynamicAnchor", "$vocabulary",
    "$comment", "$defs", "definitions",
    "prefixItems", "items", "contains", "additionalProperties", "properties",
    "patternProperties", "dependentSchemas", "propertyNames", "if", "then", "else", "allOf",
    "anyOf", "oneOf", "not", "unevaluatedItems", "unevaluatedProperties",
    "type", "const", "enum", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "maxContains", "minContains", "maxProperties", "minProperties", "required",
    "dependentRequired",
    "title", "description", "default", "deprecated", "readOnly", "writeOnly", "examples",
    "format", "contentEncoding", "contentMediaType", "contentSchema",
})
#: Deepest nesting of objects and arrays in a DDL (the document itself is level 1); a
#: deeper one is refused before anything recurses into it.
MAX_DEPTH = 64
#: What compiling a regular expression may raise besides :class:`re.error`
#: (``a{99999999999}``: OverflowError; thousands of nested groups: RecursionError).
_REGEX_ERRORS = (OverflowError, RecursionError, ValueError)
_JSON_TYPE_NAMES = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
    "array": "an array", "object": "an object", "null": "null",
}


class DDLError(ValueError):
    """A DDL that cannot be used; the message names the file and the JSON path of the key."""


class RequestError(ValueError):
    """Request data the DDL refuses, with the reply status code it maps to.

    :param statuscode: 3 (missing data) or 4 (invalid data)
    :param message: shown to the caller as the status message
    """

    def __init__(self, statuscode: int, message: str) -> None:
        super().__init__(message)
        #: 3 missing data, 4 invalid data
        self.statuscode = statuscode
        #: the status message
        self.message = message

    def __str__(self) -> str:
        return self.message


# -- the meta-schema --------------------------------------------------------------


@functools.cache
def meta_schema(schema_id: str = DDL_SCHEMA_ID) -> dict[str, Any]:
    """The meta-schema for ``schema_id``, read from the package (never the network)."""
    resource = files("collective").joinpath("schemas", _SCHEMA_FILES[schema_id])
    return json.loads(resource.read_text(encoding="utf-8"))


@functools.cache
def _meta_validator(schema_id: str) -> Draft202012Validator:
    schema = meta_schema(schema_id)
    return Draft202012Validator(schema)


# -- ECMA-262 ``pattern`` -------------------------------------------------------------


def _ecma_to_python(pattern: str, end: str = r"\Z") -> str:
    """Translate ``$`` outside character classes to ``end`` (end of string only:
    ``\\Z`` for Python's :mod:`re`, ``\\z`` for RE2)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            j = i + 1
            if j < n and pattern[j] == "^":
                out.append("^")
                j += 1
            if j < n and pattern[j] == "]":  # a leading "]" is literal in Python
                out.append("]")
                j += 1
            i = j
            continue
        elif c == "$":
            out.append(end)
        else:
            out.append(c)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(_ecma_to_python(pattern), re.ASCII)


@functools.lru_cache(maxsize=1024)
def _linear_pattern(pattern: str) -> Any:
    """``pattern`` compiled with RE2: a node validates inputs before it authorizes the
    request, so matching must take linear time whatever the data (docs/security.md S20).
    :raises ValueError: RE2 cannot run it (a backreference, a lookaround)"""
    import re2

    options = re2.Options()
    options.log_errors = False
    options.never_capture = True
    options.max_mem = 8 << 20
    try:
        return re2.compile(_ecma_to_python(pattern, end=r"\z"), options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else str(exc)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"RE2, the linear-time engine inputs are matched with, cannot run "
                         f"it: {reason}") from None


def _pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _linear_pattern(pattern).search(instance):
        yield ValidationError(f"{_short(instance)} does not match {pattern!r}")


#: Draft 2020-12 with ECMA-like ``pattern`` semantics.
InputValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _pattern_keyword})


def format_checker(formats: Mapping[str, Format] | Iterable[Format] | None = None) -> FormatChecker:
    """A :class:`jsonschema.FormatChecker` that knows exactly the formats in the registry."""
    checker = FormatChecker(formats=())
    for fmt in format_registry(formats).values():
        # JSON Schema formats constrain strings only; the type keyword handles the rest.
        checker.checks(fmt.name)(lambda value, _f=fmt: not isinstance(value, str) or _f(value))
    return checker


def canonical_json(doc: Any) -> bytes:
    """The bytes a DDL digest is taken over: sorted keys, no spaces, ASCII only.

    The node and the client compute it alike, so a document that travelled as JSON
    has the same digest on both sides.
    """
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def ddl_digest(doc: Any) -> str:
    """The sha256 (hex) of a DDL document's :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def _unchecked_format(name: str) -> Format:
    return Format(name, lambda value: True, "not installed here: only the nodes check it")


def _formats_used(doc: Any) -> Iterator[tuple[str, str, str]]:
    """``(action, input, format)`` for every ``format`` in the inputs of a document
    that may not have passed the meta-schema yet."""
    actions = doc.get("actions") if isinstance(doc, dict) else None
    for spec in actions if isinstance(actions, list) else []:
        if not isinstance(spec, dict) or not isinstance(spec.get("input"), dict):
            continue
        properties = spec["input"].get("properties")
        for name, schema in (properties.items() if isinstance(properties, dict) else ()):
            for sub, _path in _walk_schemas(schema, []):
                fmt = sub.get("format")
                if isinstance(fmt, str):
                    yield str(spec.get("action")), str(name), fmt


# -- helpers -----------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path_key(parts: Iterable[Any]) -> list[tuple[int, Any]]:
    """Sort key for error paths: list indices numerically, keys alphabetically."""
    return [(0, p) if isinstance(p, int) else (1, str(p)) for p in parts]


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _strict_json(text: str, source: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise DDLError(f"{source}: duplicate key {key!r}")
            out[key] = value
        return out

    def constant(name: str) -> Any:
        raise DDLError(f"{source}: {name} is not valid JSON")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise DDLError(f"{source}: invalid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise DDLError(f"{source}: (top level): nested more than {MAX_DEPTH} levels deep") from None


def _json_data(doc: Mapping[str, Any], source: str) -> Any:
    """A document given as data, as JSON would give it (a deep copy); a value JSON
    cannot carry (NaN, a set, a non-string key, ...) is refused, naming its path."""
    stack: list[tuple[Any, list[Any]]] = [(doc, [])]
    while stack:
        item, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise DDLError(f"{source}: {_json_path(path[:4])}...: nested more than {MAX_DEPTH} "
                           "levels deep")
        if isinstance(item, Mapping):
            for key, value in item.items():
                if not isinstance(key, str):
                    raise DDLError(f"{source}: {_json_path([*path, repr(key)])}: a key must be "
                                   "a string")
                stack.append((value, [*path, key]))
        elif isinstance(item, list | tuple):
            stack.extend((value, [*path, i]) for i, value in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item) or not (
                item is None or isinstance(item, str | int | float)):
            raise DDLError(f"{source}: {_json_path(path)}: {_short(item)} is not JSON data")
    return json.loads(json.dumps(doc))


def _check_depth(doc: Any, source: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`, naming the path (no recursion)."""
    stack: list[tuple[Any, list[Any]]] = [(doc, [])]
    while stack:
        item, path = stack.pop()
        if len(path) >= MAX_DEPTH and isinstance(item, dict | list) and item:
            raise DDLError(f"{source}: {_json_path(path[:4])}...: nested more than {MAX_DEPTH} "
                           "levels deep")
        if isinstance(item, dict):
            stack.extend((value, [*path, key]) for key, value in item.items())
        elif isinstance(item, list):
            stack.extend((value, [*path, i]) for i, value in enumerate(item))


def _meta_error(err: ValidationError, source: str) -> DDLError:
    """One schema error as ``source: path: message``, naming the unknown key itself."""
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = set(err.schema.get("properties", {}))
        patterns = [re.compile(p) for p in err.schema.get("patternProperties", {})]
        extra = sorted(k for k in err.instance if k not in known and not any(p.search(k) for p in patterns))
        if extra:
            return DDLError(f"{source}: {_json_path([*path, extra[0]])}: unknown key")
    if err.validator == "oneOf" and err.context:  # the type_spec union: say what is allowed
        return DDLError(f"{source}: {_json_path(path)}: {_short(err.instance)} is not a valid type "
                        "(use string, integer, number, boolean, array, object, null or a list of them)")
    if err.validator == "type":  # jsonschema's message repeats the whole value
        wanted = " or ".join(repr(t) for t in _types(err.validator_value))
        return DDLError(f"{source}: {_json_path(path)}: {_short(err.instance)} is not of type {wanted}")
    message = err.message if len(err.message) <= 200 else err.message[:197] + "..."
    return DDLError(f"{source}: {_json_path(path)}: {message}")


def _walk_schemas(schema: Any, path: list[Any]) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """Yield every sub-schema of a JSON Schema with its path (keywords, not data keys)."""
    if not isinstance(schema, dict):
        return
    yield schema, path
    for key in ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            for name, value in sub.items():
                yield from _walk_schemas(value, [*path, key, name])
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains",
                "propertyNames", "unevaluatedItems", "unevaluatedProperties", "additionalItems"):
        if isinstance(schema.get(key), dict):
            yield from _walk_schemas(schema[key], [*path, key])
    for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
        sub = schema.get(key)
        if isinstance(sub, list):
            for i, value in enumerate(sub):
                yield from _walk_schemas(value, [*path, key, i])


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _types(spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, list):
        return [t for t in spec if isinstance(t, str)]
    return []


# -- the DDL -----------------------------------------------------------------------


class ActionDDL:
    """One action of an agent DDL: its inputs, outputs, display policy and aggregates."""

    def __init__(self, spec: Mapping[str, Any], agent: str, source: str, checker: FormatChecker,
                 formats: Mapping[str, Format]) -> None:
        #: the action name
        self.name: str = spec["action"]
        #: the agent it belongs to
        self.agent = agent
        #: the DDL file name, for messages
        self.source = source
        self.description: str = spec["description"]
        #: ``ok``, ``failed`` (default) or ``always``: which replies the CLI prints
        self.display: str = spec.get("display", "failed")
        schema = copy.deepcopy(dict(spec.get("input") or {"type": "object", "properties": {}}))
        schema.setdefault("properties", {})
        #: the input JSON Schema (an object schema)
        self.input_schema: dict[str, Any] = schema
        #: input name -> its JSON Schema
        self.inputs: dict[str, dict[str, Any]] = schema["properties"]
        #: names of the required inputs, in DDL order
        self.required: list[str] = list(schema.get("required", []))
        #: output name -> ``{description, display_as, type?, default?}``
        self.outputs: dict[str, dict[str, Any]] = copy.deepcopy(dict(spec.get("output") or {}))
        #: ``[{function, args, format?}]``
        self.aggregates: list[dict[str, Any]] = copy.deepcopy(list(spec.get("aggregate") or []))
        self._formats = formats
        self._validator = InputValidator(schema, format_checker=checker)

    def __repr__(self) -> str:
        return f"ActionDDL({self.agent}#{self.name})"

    # -- requests ------------------------------------------------------------------
    def validate_input(self, data: Mapping[str, Any], defaults: bool = True) -> dict[str, Any]:
        """Check request data and return a copy with declared defaults filled in.

        :param defaults: fill in the declared defaults of absent inputs (the client
            does not for a DDL fetched from the nodes: a node fills its own)
        :raises RequestError: 3 when a required input is missing, 4 when an input is
            not declared or its value is invalid
        """
        if not isinstance(data, Mapping):
            raise RequestError(4, f"Cannot validate request data for action {self.name}: "
                                  f"expected an object, got {_json_type(data)}")
        for key in sorted(data, key=str):
            if key not in self.inputs:
                raise RequestError(4, f"request contains an input {_short(key)} that is not "
                                      "declared in the DDL")
        for key in self.required:
            if key not in data:
                raise RequestError(3, f"Action {self.name} needs a {key} argument")
        out = copy.deepcopy(dict(data))
        for key, schema in self.inputs.items() if defaults else ():
            if key not in out and "default" in schema:
                out[key] = copy.deepcopy(schema["default"])
        try:
            errors = sorted(self._validator.iter_errors(out), key=lambda e: _path_key(e.absolute_path))
        except Unresolvable:  # only a $ref that AgentDDL.load could not follow (a nested $id)
            log.warning("%s: the input schema of %s has a reference that does not resolve",
                        self.source, self.name)
            raise RequestError(4, f"Cannot validate the input of action {self.name}: its DDL "
                                  "has a reference that does not resolve") from None
        if errors:
            raise RequestError(4, self._describe(errors[0]))
        return out

    def _describe(self, err: ValidationError) -> str:
        path = list(err.absolute_path)
        if not path:
            return f"Cannot validate the input of action {self.name}: {_short(err.message, 200)}"
        name = str(path[0])
        where = name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
        schema = self.inputs.get(name, {})
        sensitive = bool(schema.get("x-sensitive"))
        kw, arg = err.validator, err.validator_value
        if kw == "type":
            wanted = " or ".join(_JSON_TYPE_NAMES.get(t, t) for t in _types(arg))
            why = f"should be {wanted}, not {_json_type(err.instance)}"
        elif kw == "maxLength":
            why = f"is longer than {arg} character(s)"
        elif kw == "minLength":
            why = f"is shorter than {arg} character(s)"
        elif kw == "pattern":
            why = f"should match {arg}"
        elif kw == "enum":
            why = "should be one of " + ", ".join(str(v) for v in arg)
        elif kw == "const":
            why = f"should be {arg!r}"
        elif kw == "format":
            fmt = self._formats.get(arg)
            why = f"is not a valid {arg}" + (f" ({fmt.description})" if fmt and fmt.description else "")
        elif kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            relation = {"minimum": "at least", "maximum": "at most",
                        "exclusiveMinimum": "greater than", "exclusiveMaximum": "less than"}[kw]
            why = f"should be {relation} {arg}"
        elif kw in ("minItems", "maxItems"):
            why = f"should have {'at least' if kw == 'minItems' else 'at most'} {arg} item(s)"
        elif sensitive:
            why = f"is invalid ({kw})"
        else:
            why = _short(err.message, 200)
        return f"Cannot validate input {where}: {why}"

    def convert_cli(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Convert ``key=value`` strings from the command line to the DDL's input types.

        Booleans accept ``true t yes y 1`` / ``false f no n 0`` (any case), numbers
        are decimal, arrays and objects are JSON text. Values that are not strings
        are passed through. The result still needs :meth:`validate_input`.

        :raises RequestError: 4 for an undeclared input or an unconvertible value
        """
        out: dict[str, Any] = {}
        for key, value in args.items():
            if key not in self.inputs:
                raise RequestError(4, f"request contains an input {_short(key)} that is not "
                                      "declared in the DDL")
            out[key] = self._convert(key, value)
        return out

    def _convert(self, key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        types = _types(self.inputs[key].get("type"))
        if not types or "string" in types:
            return value
        first: RequestError | None = None
        for kind in types:
            try:
                return _convert_one(key, kind, value)
            except RequestError as exc:
                first = first or exc
        assert first is not None
        raise first

    # -- replies -------------------------------------------------------------------
    def output_defaults(self) -> dict[str, Any]:
        """Every declared output with its default (None when it has none), deep-copied."""
        return {name: copy.deepcopy(spec.get("default")) for name, spec in self.outputs.items()}

    def validate_output(self, data: Mapping[str, Any]) -> list[str]:
        """Problems with reply data: values whose JSON type differs from the declared
        output ``type`` (None is always allowed: it is the default default)."""
        problems = []
        checker = Draft202012Validator.TYPE_CHECKER
        for name, spec in self.outputs.items():
            types = _types(spec.get("type"))
            if not types or name not in data or data[name] is None:
                continue
            value = data[name]
            if not any(checker.is_type(value, t) or (t == "array" and isinstance(value, tuple))
                       for t in types):
                problems.append(f"{self.agent}#{self.name}: output {name} should be "
                                f"{' or '.join(types)}, not {_json_type(value)}")
        return problems


def _convert_one(key: str, kind: str, text: str) -> Any:
    stripped = text.strip()
    if kind == "boolean":
        low = stripped.lower()
        if low in _BOOL_TRUE:
            return True
        if low in _BOOL_FALSE:
            return False
        raise RequestError(4, f"Cannot convert input {key}: {_short(text)} does not look like a boolean argument")
    if kind == "integer":
        if _INT_RE.fullmatch(stripped):
            return int(stripped)
        raise RequestError(4, f"Cannot convert input {key}: {_short(text)} does not look like a number "
                              "(an integer is expected)")
    if kind == "number":
        if _INT_RE.fullmatch(stripped):
            return int(stripped)
        if _FLOAT_RE.fullmatch(stripped):
            number = float(stripped)
            if math.isfinite(number):
                return number
        raise RequestError(4, f"Cannot convert input {key}: {_short(text)} does not look like a number")
    if kind in ("array", "object"):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if kind == "array" and isinstance(value, list) or kind == "object" and isinstance(value, dict):
            return value
        raise RequestError(4, f"Cannot convert input {key}: {_short(text)} does not look like "
                              f"a JSON {kind}")
    if kind == "null":
        if stripped.lower() in ("", "null", "none"):
            return None
        raise RequestError(4, f"Cannot convert input {key}: {_short(text)} is not null")
    return text


class AgentDDL:
    """A validated agent DDL.

    Build it with :meth:`load`; the object is read-only afterwards and safe to
    share between threads.
    """

    def __init__(self, doc: dict[str, Any], source: str, formats: Mapping[str, Format],
                 unchecked_formats: Mapping[str, list[tuple[str, str]]] | None = None) -> None:
        self._doc = doc
        #: format name -> ``[(action, input), ...]`` for formats this side does not
        #: have (only with ``load(..., unknown_formats="skip")``): not checked here
        self.unchecked_formats: dict[str, list[tuple[str, str]]] = {
            name: list(uses) for name, uses in (unchecked_formats or {}).items()}
        #: the DDL file name, used in messages
        self.source = source
        #: ``{name, description, author, license, version, url, timeout}``
        self.metadata: dict[str, Any] = copy.deepcopy(doc["metadata"])
        #: the agent name
        self.name: str = self.metadata["name"]
        #: seconds the daemon lets an action run and the client waits for replies
        self.timeout: int = int(self.metadata["timeout"])
        #: the format registry used to check inputs
        self.formats = dict(formats)
        checker = format_checker(self.formats)
        #: action name -> :class:`ActionDDL`, in DDL order
        self.actions: dict[str, ActionDDL] = {
            spec["action"]: ActionDDL(spec, self.name, source, checker, self.formats)
            for spec in doc["actions"]
        }

    def __repr__(self) -> str:
        return f"AgentDDL({self.name!r}, source={self.source!r})"

    def to_dict(self) -> dict[str, Any]:
        """The DDL document, as loaded (a deep copy)."""
        return copy.deepcopy(self._doc)

    @functools.cached_property
    def sha256(self) -> str:
        """The document's digest (:func:`ddl_digest`): what ``rpcutil agent_ddl`` reports."""
        return ddl_digest(self._doc)

    def unchecked_inputs(self, action: str) -> dict[str, str]:
        """Inputs of ``action`` whose format this side cannot check: input -> format."""
        return {name: fmt for fmt, uses in self.unchecked_formats.items()
                for act, name in uses if act == action}

    def action(self, name: str) -> ActionDDL:
        """The action called ``name``.

        :raises KeyError: when the DDL does not declare it
        """
        return self.actions[name]

    @classmethod
    def load(cls, resource: Any, formats: Mapping[str, Format] | Iterable[Format] | None = None,
             source: str | None = None, unknown_formats: str = "error") -> AgentDDL:
        """Read and validate a DDL.

        :param resource: an :mod:`importlib.resources` Traversable, a path, or the
            document as a dict (a DDL that travelled as data)
        :param formats: the format registry (``PluginManager.formats()``, a list of
            :class:`~collective.formats.Format`, or None for the built-ins)
        :param source: the name used in error messages (default: the file name)
        :param unknown_formats: ``"error"`` (default) refuses a ``format`` that is not in
            the registry; ``"skip"`` accepts it unchecked and lists it in
            :attr:`unchecked_formats` (a client with a DDL fetched from the nodes lacks
            the formats the agent's plugin registers; the nodes check them)
        :raises DDLError: naming the file and the JSON path of the offending key
        """
        if unknown_formats not in ("error", "skip"):
            raise ValueError(f"unknown_formats must be 'error' or 'skip', not {unknown_formats!r}")
        registry = format_registry(formats)
        stem: str | None = None
        if isinstance(resource, Mapping):
            meta = resource.get("metadata")
            name = meta.get("name") if isinstance(meta, Mapping) else None
            source = source or (f"{name}.json" if isinstance(name, str) else "<ddl>")
            doc: Any = _json_data(resource, source)
        elif resource is None or isinstance(resource, list | bool | int | float):
            source = source or "<ddl>"  # a JSON value that is not an object: refused below
            doc = resource
        else:
            if isinstance(resource, str | PathLike):
                resource = Path(resource)
            file_name = str(getattr(resource, "name", "") or resource)
            source = source or file_name
            if file_name.endswith(".json"):
                stem = file_name[: -len(".json")]
            try:
                text = resource.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise DDLError(f"{source}: cannot read: {exc}") from None
            doc = _strict_json(text, source)
        _check_depth(doc, source)
        unchecked: dict[str, list[tuple[str, str]]] = {}
        if unknown_formats == "skip":
            for action, name, fmt in _formats_used(doc):
                if fmt not in registry or fmt in unchecked:
                    try:
                        registry.setdefault(fmt, _unchecked_format(fmt))
                    except ValueError:  # not a format name at all: _check_input refuses it
                        continue
                    unchecked.setdefault(fmt, [])
                    if (action, name) not in unchecked[fmt]:
                        unchecked[fmt].append((action, name))
        _check_document(doc, source, registry, stem)
        return cls(doc, source, registry, unchecked)


def _check_document(doc: Any, source: str, formats: Mapping[str, Format], stem: str | None) -> None:
    if not isinstance(doc, dict):
        raise DDLError(f"{source}: (top level): a DDL must be a JSON object")
    schema_id = doc.get("$schema")
    if not isinstance(schema_id, str) or schema_id not in _SCHEMA_FILES:
        raise DDLError(f"{source}: $schema: must be {DDL_SCHEMA_ID!r}, not {_short(schema_id)}")
    errors = sorted(_meta_validator(schema_id).iter_errors(doc),
                    key=lambda e: (_path_key(e.absolute_path), str(e.validator)))
    if errors:
        raise _meta_error(errors[0], source)
    name = doc["metadata"]["name"]
    if stem is not None and name != stem:
        raise DDLError(f"{source}: metadata.name: {name!r} does not match the file name "
                       f"(expected {stem!r})")
    seen: set[str] = set()
    for i, spec in enumerate(doc["actions"]):
        where = f"actions[{i}]"
        if spec["action"] in seen:
            raise DDLError(f"{source}: {where}.action: duplicate action {spec['action']!r}")
        seen.add(spec["action"])
        _check_input(spec.get("input"), f"{where}.input", source, formats)
        outputs = spec.get("output") or {}
        for j, agg in enumerate(spec.get("aggregate") or []):
            if agg["args"][0] not in outputs:
                raise DDLError(f"{source}: {where}.aggregate[{j}].args[0]: {agg['args'][0]!r} is not "
                               "an output of this action")


def _check_input(schema: Any, where: str, source: str, formats: Mapping[str, Format]) -> None:
    if schema is None:
        return
    _check_regexes(schema, where, source)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = _json_path(exc.absolute_path)
        raise DDLError(f"{source}: {where}{'' if path == '(top level)' else '.' + path}: "
                       f"not a valid JSON Schema: {exc.message}") from None
    except _REGEX_ERRORS as exc:  # a regex the walk below does not reach
        raise DDLError(f"{source}: {where}: not a valid JSON Schema: {type(exc).__name__}: "
                       f"{_short(str(exc), 200)}") from None
    resolver = Registry().resolver_with_root(DRAFT202012.create_resource(schema))
    for sub, path in _walk_schemas(schema, []):
        key = _json_path(path)
        at = where if key == "(top level)" else f"{where}.{key}"
        for word in sub:
            if word not in SCHEMA_KEYWORDS and not word.startswith("x-"):
                close = difflib.get_close_matches(word, SCHEMA_KEYWORDS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DDLError(f"{source}: {at}.{word}: unknown JSON Schema keyword{hint}")
        fmt = sub.get("format")
        if fmt is not None and fmt not in formats:
            known = ", ".join(sorted(formats)) or "none"
            raise DDLError(f"{source}: {at}.format: unknown format {fmt!r} (known: {known})")
        for word in ("$ref", "$dynamicRef"):
            ref = sub.get(word)
            if isinstance(ref, str):
                try:
                    resolver.lookup(ref)
                except Unresolvable as exc:
                    raise DDLError(f"{source}: {at}.{word}: {ref!r} does not resolve within this "
                                   f"input schema ({type(exc).__name__})") from None
        pattern = sub.get("pattern")
        if isinstance(pattern, str):
            try:
                _compile_pattern(pattern)
                _linear_pattern(pattern)
            except (re.error, ValueError) as exc:
                raise DDLError(f"{source}: {at}.pattern: invalid regular expression: {exc}") from None
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in properties:
            raise DDLError(f"{source}: {where}.required: {name!r} is not an input of this action")
    validator = InputValidator(schema, format_checker=format_checker(formats))
    for name, prop in properties.items():
        if "default" in prop:
            try:
                errors = list(validator.evolve(schema=prop).iter_errors(prop["default"]))
            except Unresolvable as exc:
                raise DDLError(f"{source}: {where}.properties.{name}: a reference does not "
                               f"resolve: {_short(str(exc), 200)}") from None
            if errors:
                raise DDLError(f"{source}: {where}.properties.{name}.default: {errors[0].message}")


def _check_regexes(schema: Any, where: str, source: str) -> None:
    """Compile every ``pattern`` and ``patternProperties`` key of an input schema, so
    that what :mod:`re` raises besides :class:`re.error` becomes a :class:`DDLError`
    naming the key (the JSON Schema check compiles them too and would let it escape;
    it reports :class:`re.error` itself)."""
    for sub, path in _walk_schemas(schema, []):
        key = _json_path(path)
        at = where if key == "(top level)" else f"{where}.{key}"
        pattern = sub.get("pattern")
        regexes = [(f"{at}.pattern", pattern)] if isinstance(pattern, str) else []
        props = sub.get("patternProperties")
        regexes += [(f"{at}.patternProperties.{name}", name)
                    for name in (props if isinstance(props, dict) else ())]
        for at_key, regex in regexes:
            try:
                _compile_pattern(regex)
            except re.error:
                continue
            except _REGEX_ERRORS as exc:
                raise DDLError(f"{source}: {at_key}: invalid regular expression: "
                               f"{_short(str(exc), 200)}") from None
