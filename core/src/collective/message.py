"""Wire format: canonical JSON bodies, the signed wire wrapper and a strict parser.

Every message on the broker is a *wire* document (``docs/contracts.md``)::

    {"v":1, "alg":"ed25519"|"hmac-sha256", "kid":"<key id>", "sig":"<base64>", "body":"<base64>"}

The body is canonical JSON of a request or a reply envelope. Signatures are made
over the body *bytes*; verification never re-encodes.

Everything received from the network goes through :func:`strict_loads`, which turns
every surprise of :mod:`json` into one :class:`MalformedMessage`: invalid UTF-8,
NaN/Infinity (and float literals that overflow to infinity), duplicate keys,
nesting deeper than :data:`MAX_DEPTH`, integers beyond ±2**53, and lone UTF-16
surrogates (which could never be re-encoded as UTF-8).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from .names import (
    ACTION_PATTERN,
    AGENT_PATTERN,
    AGENT_RE,
    CALLER_PATTERN,
    COLLECTIVE_PATTERN,
    IDENTITY_PATTERN,
)

# Re-exported: code and plugins import these from here.
from .names import CALLER_RE as CALLER_RE
from .names import IDENTITY_RE as IDENTITY_RE

log = logging.getLogger(__name__)

#: Deepest nesting of arrays/objects accepted (the top-level object counts as 1).
MAX_DEPTH = 32
#: Largest magnitude of an integer accepted (JSON numbers that survive a double).
MAX_INT = 2**53
#: Longest integer literal (in characters, sign included) worth handing to ``int()``.
_MAX_INT_DIGITS = len(str(MAX_INT)) + 1

REQUEST_TYPE = "collective.request/1"
REPLY_TYPE = "collective.reply/1"
REGISTRATION_TYPE = "collective.registration/1"
WIRE_VERSION = 1
WIRE_KEYS = frozenset({"v", "alg", "kid", "sig", "body"})

#: ``reply_to`` of a fire-and-forget request (``mco rpc --no-results``): nodes act but
#: do not reply.
NO_REPLY = "none"

# The name grammars (agent, action, identity, collective, caller) are defined in
# collective.names and used by the envelope schemas below. The other fields' grammars:
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
#: A logical destination (``COLL.reply.ID``); parsed strictly by the connector layer.
REPLY_TO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"
ALG_PATTERN = r"^[a-z0-9-]{1,32}$"
KID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

_ALG_RE = re.compile(ALG_PATTERN)
#: A DDL version string in a registration (``"1.2.0"``, ``"0.1.0.dev3+g1a2b"``).
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
_VERSION_RE = re.compile(VERSION_PATTERN)

#: Largest registration *body* a node publishes or a collector accepts (facts can be
#: large). Over the cap the node logs and skips that registration.
MAX_REGISTRATION_BYTES = 256 * 1024
#: The largest wire document that can carry a body of :data:`MAX_REGISTRATION_BYTES`
#: (base64 grows it by 4/3; the rest of the wrapper is well under 1 KiB).
MAX_REGISTRATION_WIRE_BYTES = (MAX_REGISTRATION_BYTES + 2) // 3 * 4 + 1024
#: Longest class name, and most classes / agents, a registration may list.
MAX_CLASS_CHARS = 256
MAX_REGISTRATION_ITEMS = 10_000
_KID_RE = re.compile(KID_PATTERN)

# The characters that matter for nesting: brackets, quotes, and an escape with the
# character it escapes (so an escaped quote never toggles the string state). One
# linear pass, no backtracking, no recursion.
_DEPTH_TOKEN = re.compile(r'[\[\]{}"]|\\.', re.DOTALL)
# A \uD800-\uDFFF escape: the only way a surrogate can enter a decoded document.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class MalformedMessage(ValueError):
    """A message that is not well-formed; ``reason`` is a short counter/audit code.

    Reasons: ``json``, ``depth``, ``duplicate_key``, ``nan``, ``int_range``, ``utf8``,
    ``schema``, ``oversize``, ``base64``, ``version``, ``wire``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"malformed message ({reason}): {detail}" if detail else f"malformed message ({reason})")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- encoding ---------------------------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, no whitespace, no NaN/Infinity, no ASCII escaping."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except ValueError as exc:  # NaN / Infinity (allow_nan=False)
        raise MalformedMessage("nan", str(exc)) from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedMessage("utf8", f"string cannot be encoded as UTF-8: {exc.reason}") from None


# -- strict parsing -----------------------------------------------------------------------
def _check_depth(text: str) -> None:
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # cannot be deeper than the number of openers
    depth = 0
    in_string = False
    for match in _DEPTH_TOKEN.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue
        elif token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise MalformedMessage("depth", f"nesting deeper than {MAX_DEPTH} at offset {match.start()}")
        else:
            depth -= 1


def _parse_int(literal: str) -> int:
    if len(literal) > _MAX_INT_DIGITS:
        raise MalformedMessage("int_range", f"integer literal of {len(literal)} characters (limit ±2**53)")
    value = int(literal)
    if not -MAX_INT <= value <= MAX_INT:
        raise MalformedMessage("int_range", f"integer {literal} is beyond ±2**53")
    return value


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise MalformedMessage("nan", f"number {_short(literal)} overflows to infinity")
    return value


def _parse_constant(name: str) -> Any:
    raise MalformedMessage("nan", f"{name} is not valid JSON")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedMessage("duplicate_key", f"duplicate key {_short(key)}")
            seen.add(key)
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(s: str) -> bool:
    return _SURROGATE.search(s) is not None


def _check_surrogates(doc: Any) -> None:
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                raise MalformedMessage("utf8", "string contains a lone UTF-16 surrogate")
        elif isinstance(item, dict):
            for key, value in item.items():
                if _has_surrogate(key):
                    raise MalformedMessage("utf8", "key contains a lone UTF-16 surrogate")
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)


def strict_loads(data: bytes | bytearray | memoryview | str, max_bytes: int | None = None) -> Any:
    """Parse untrusted JSON strictly; raise :class:`MalformedMessage` on anything odd.

    With ``max_bytes`` the size is checked before anything else is looked at.
    """
    if isinstance(data, str):
        try:
            raw_len = len(data.encode("utf-8"))
        except UnicodeEncodeError:
            raise MalformedMessage("utf8", "text contains a lone UTF-16 surrogate") from None
        if max_bytes is not None and raw_len > max_bytes:
            raise MalformedMessage("oversize", f"{raw_len} bytes, limit {max_bytes}")
        text = data
    else:
        if max_bytes is not None and len(data) > max_bytes:
            raise MalformedMessage("oversize", f"{len(data)} bytes, limit {max_bytes}")
        try:
            text = bytes(data).decode("utf-8")  # strict: also refuses encoded surrogates
        except UnicodeDecodeError as exc:
            raise MalformedMessage("utf8", f"invalid UTF-8 at byte {exc.start}") from None
    _check_depth(text)
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int,
                         parse_float=_parse_float, parse_constant=_parse_constant)
    except MalformedMessage:
        raise
    except RecursionError:  # belt and braces: _check_depth should have caught it
        raise MalformedMessage("depth", f"nesting deeper than {MAX_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise MalformedMessage("json", f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise MalformedMessage("json", _short(str(exc), 120)) from None
    if _SURROGATE_ESCAPE.search(text):
        _check_surrogates(doc)
    return doc


# -- envelope schemas ----------------------------------------------------------------------
_identity = {"type": "string", "pattern": IDENTITY_PATTERN}
_agent = {"type": "string", "pattern": AGENT_PATTERN}
_action = {"type": "string", "pattern": ACTION_PATTERN}
_collective = {"type": "string", "pattern": COLLECTIVE_PATTERN}
_time = {"type": "integer", "minimum": 0, "maximum": MAX_INT}

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "id", "sender", "caller", "collective", "agent", "action", "data",
                 "filter", "time", "ttl", "reply_to", "targets"],
    "properties": {
        "type": {"const": REQUEST_TYPE},
        "id": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        "sender": _identity,
        "caller": {"type": "string", "pattern": CALLER_PATTERN},
        "collective": _collective,
        "agent": _agent,
        "action": _action,
        "data": {"type": "object"},
        "filter": {"type": "object"},
        "time": _time,
        "ttl": {"type": "integer", "minimum": 1, "maximum": MAX_INT},
        "reply_to": {"type": "string", "pattern": REPLY_TO_PATTERN},
        "targets": {"oneOf": [{"type": "null"}, {"type": "array", "items": _identity}]},
    },
}

REPLY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "request_id", "request_sha256", "sender", "agent", "action",
                 "statuscode", "statusmsg", "data", "time"],
    "properties": {
        "type": {"const": REPLY_TYPE},
        "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        "request_sha256": {"type": "string", "pattern": SHA256_PATTERN},
        "sender": _identity,
        "agent": _agent,
        "action": _action,
        "statuscode": {"type": "integer", "minimum": 0, "maximum": 5},
        "statusmsg": {"type": "string"},
        "data": {"type": "object"},
        "time": _time,
    },
}

REGISTRATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "identity", "collective", "collectives", "facts", "classes", "agents",
                 "interval", "time"],
    "properties": {
        "type": {"const": REGISTRATION_TYPE},
        "identity": _identity,
        "collective": _collective,
        "collectives": {"type": "array", "items": _collective},
        "facts": {"type": "object"},
        "classes": {"type": "array", "items": {"type": "string"}},
        # each {"name": <agent>, "version": <DDL version> | null}; checked in from_body
        "agents": {"type": "array", "items": {"type": "object"}},
        "interval": {"type": "integer", "minimum": 1, "maximum": 86_400 * 7},
        "time": _time,
    },
}

_validators: dict[str, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    key = schema["properties"]["type"]["const"]
    if key not in _validators:
        import jsonschema

        _validators[key] = jsonschema.Draft202012Validator(schema)
    return _validators[key]


_compiled: dict[str, re.Pattern[str]] = {}


def _pattern(pattern: str) -> re.Pattern[str]:
    if pattern not in _compiled:
        _compiled[pattern] = re.compile(pattern)
    return _compiled[pattern]


def _rule_problem(value: Any, rule: dict[str, Any]) -> str | None:
    """Check ``value`` against the subset of JSON Schema the envelopes use.

    Stricter than JSON Schema where that matters: patterns must match the whole
    string (``re.search`` with ``$`` would accept a trailing newline) and integers
    must be JSON integers (JSON Schema counts ``1.0``; Python counts ``True``).
    """
    if "const" in rule:
        return None if value == rule["const"] and type(value) is type(rule["const"]) else "wrong value"
    if "oneOf" in rule:
        problems = [_rule_problem(value, sub) for sub in rule["oneOf"]]
        return None if problems.count(None) == 1 else "matches none of the allowed forms"
    kind = rule["type"]
    if kind == "null":
        return None if value is None else "must be null"
    if kind == "object":
        return None if isinstance(value, dict) else "must be an object"
    if kind == "array":
        if not isinstance(value, list):
            return "must be an array"
        for item in value:
            problem = _rule_problem(item, rule["items"])
            if problem:
                return f"item {_short(item)}: {problem}"
        return None
    if kind == "integer":
        if type(value) is not int:
            return "must be an integer"
        if value < rule.get("minimum", -MAX_INT) or value > rule.get("maximum", MAX_INT):
            return f"must be between {rule.get('minimum', -MAX_INT)} and {rule.get('maximum', MAX_INT)}"
        return None
    if kind == "string":
        if not isinstance(value, str):
            return "must be a string"
        if "pattern" in rule and not _pattern(rule["pattern"]).fullmatch(value):
            return f"must match {rule['pattern']}"
        return None
    raise AssertionError(f"unsupported schema rule {rule}")  # pragma: no cover


def _validate_envelope(doc: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """Validate an envelope; the fast path interprets ``schema`` itself, and
    :mod:`jsonschema` is consulted for the error message when it fails."""
    props = schema["properties"]
    expected = props["type"]["const"]
    if not isinstance(doc, dict):
        raise MalformedMessage("schema", f"body must be a JSON object, not {type(doc).__name__}")
    if doc.get("type") != expected:
        raise MalformedMessage("schema", f"type must be {expected!r}, got {_short(doc.get('type'))}")
    unknown = sorted(set(doc) - set(props))
    if unknown:
        raise MalformedMessage("schema", f"unknown key {_short(unknown[0])}")
    missing = [name for name in schema["required"] if name not in doc]
    if missing:
        raise MalformedMessage("schema", f"missing key {missing[0]!r}")
    for name, rule in props.items():
        problem = _rule_problem(doc[name], rule)
        if problem:
            break
    else:
        return doc
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(doc))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "(body)"
        raise MalformedMessage("schema", f"{where}: value {_short(error.instance)} fails "
                                         f"{error.validator} {_short(error.validator_value)}")
    raise MalformedMessage("schema", f"{name}: value {_short(doc[name])} {problem}")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RequestMessage:
    """A request envelope (``collective.request/1``)."""

    TYPE: ClassVar[str] = REQUEST_TYPE

    id: str
    sender: str
    caller: str
    collective: str
    agent: str
    action: str
    data: dict[str, Any]
    filter: dict[str, Any]
    time: int
    ttl: int
    reply_to: str
    targets: list[str] | None = None

    @classmethod
    def new(cls, **fields: Any) -> RequestMessage:
        """A new request; ``id`` (uuid4 hex) and ``time`` (now, unix ms) are filled in."""
        fields.setdefault("id", uuid.uuid4().hex)
        fields.setdefault("time", _now_ms())
        fields.setdefault("data", {})
        fields.setdefault("filter", {})
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["type"] = REQUEST_TYPE
        if out["targets"] is not None:
            out["targets"] = list(out["targets"])
        return out

    def to_body(self) -> bytes:
        """Canonical body bytes.

        Raises :class:`MalformedMessage` when the *encoding* would be refused by a
        receiver (NaN, integers beyond ±2**53, nesting deeper than 32). The envelope
        schema is not applied here (negative tests build invalid envelopes on
        purpose); call :meth:`validate` for that.
        """
        body = canonical_json(self.to_dict())
        strict_loads(body)
        return body

    def validate(self) -> None:
        """Raise :class:`MalformedMessage` unless a receiver would accept this envelope."""
        _validate_envelope(strict_loads(canonical_json(self.to_dict())), REQUEST_SCHEMA)

    @classmethod
    def from_body(cls, body: bytes) -> RequestMessage:
        doc = _validate_envelope(strict_loads(body), REQUEST_SCHEMA)
        doc = dict(doc)
        del doc["type"]
        return cls(**doc)


@dataclass
class ReplyMessage:
    """A reply envelope (``collective.reply/1``), bound to its request by id and body hash."""

    TYPE: ClassVar[str] = REPLY_TYPE

    request_id: str
    request_sha256: str
    sender: str
    agent: str
    action: str
    statuscode: int
    statusmsg: str
    data: dict[str, Any]
    time: int

    @classmethod
    def for_request(cls, request_body: bytes, request: RequestMessage, sender: str,
                    statuscode: int, statusmsg: str, data: Mapping[str, Any] | None,
                    time_ms: int | None = None) -> ReplyMessage:
        """The reply to ``request`` (whose received body bytes are ``request_body``)."""
        return cls(
            request_id=request.id,
            request_sha256=hashlib.sha256(request_body).hexdigest(),
            sender=sender,
            agent=request.agent,
            action=request.action,
            statuscode=statuscode,
            statusmsg=statusmsg,
            data=dict(data or {}),
            time=_now_ms() if time_ms is None else time_ms,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["type"] = REPLY_TYPE
        return out

    def to_body(self) -> bytes:
        """Canonical body bytes (encoding checked as in :meth:`RequestMessage.to_body`)."""
        body = canonical_json(self.to_dict())
        strict_loads(body)
        return body

    def validate(self) -> None:
        """Raise :class:`MalformedMessage` unless a receiver would accept this envelope."""
        _validate_envelope(strict_loads(canonical_json(self.to_dict())), REPLY_SCHEMA)

    @classmethod
    def from_body(cls, body: bytes) -> ReplyMessage:
        doc = _validate_envelope(strict_loads(body), REPLY_SCHEMA)
        doc = dict(doc)
        del doc["type"]
        return cls(**doc)


@dataclass
class RegistrationMessage:
    """A node's periodic registration (``collective.registration/1``).

    Published by :class:`collective.server.registration.RegistrationPublisher` to
    ``C.registration`` for each collective ``C`` of the node, signed by the *node* key
    for the purpose ``registration`` (its own signature domain), and recorded by
    :class:`collective.inventory.Collector`. ``agents`` lists
    ``{"name": AGENT, "version": DDL_VERSION_OR_NULL}``; ``interval`` is the node's
    registration interval in seconds (the collector uses it to decide staleness);
    ``time`` is the node's clock in unix ms.
    """

    TYPE: ClassVar[str] = REGISTRATION_TYPE

    identity: str
    collective: str
    collectives: list[str]
    facts: dict[str, Any]
    classes: list[str]
    agents: list[dict[str, Any]]
    interval: int
    time: int

    @classmethod
    def new(cls, **fields: Any) -> RegistrationMessage:
        """A new registration; ``time`` (now, unix ms) is filled in."""
        fields.setdefault("time", _now_ms())
        return cls(**fields)

    @property
    def agent_names(self) -> list[str]:
        return [str(agent["name"]) for agent in self.agents]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["type"] = REGISTRATION_TYPE
        return out

    def to_body(self) -> bytes:
        """Canonical body bytes; :class:`MalformedMessage` (reason ``oversize``) over
        :data:`MAX_REGISTRATION_BYTES`, or when a receiver would refuse the encoding."""
        try:
            body = canonical_json(self.to_dict())
        except TypeError as exc:  # a fact value JSON cannot carry (a date, a set ...)
            raise MalformedMessage("json", f"facts cannot be encoded as JSON: {exc}") from None
        if len(body) > MAX_REGISTRATION_BYTES:
            raise MalformedMessage("oversize", f"registration body is {len(body)} bytes, limit "
                                               f"{MAX_REGISTRATION_BYTES}")
        strict_loads(body)
        return body

    def validate(self) -> None:
        """Raise :class:`MalformedMessage` unless a receiver would accept this envelope."""
        type(self).from_body(self.to_body())

    @classmethod
    def from_body(cls, body: bytes) -> RegistrationMessage:
        """Strict parse: size cap first, then the envelope schema, then each agent and class."""
        doc = _validate_envelope(strict_loads(body, max_bytes=MAX_REGISTRATION_BYTES),
                                 REGISTRATION_SCHEMA)
        if len(doc["classes"]) > MAX_REGISTRATION_ITEMS or len(doc["agents"]) > MAX_REGISTRATION_ITEMS:
            raise MalformedMessage("schema", f"more than {MAX_REGISTRATION_ITEMS} classes or agents")
        for klass in doc["classes"]:
            if not klass or len(klass) > MAX_CLASS_CHARS or any(c in klass for c in "\x00\n\r"):
                raise MalformedMessage("schema", f"classes: invalid class name {_short(klass)}")
        seen: set[str] = set()
        for agent in doc["agents"]:
            if set(agent) != {"name", "version"}:
                raise MalformedMessage("schema", f"agents: each entry must have exactly name and "
                                                 f"version, got {_short(sorted(agent))}")
            name, version = agent["name"], agent["version"]
            if not isinstance(name, str) or not AGENT_RE.fullmatch(name):
                raise MalformedMessage("schema", f"agents: invalid agent name {_short(name)}")
            if version is not None and (not isinstance(version, str)
                                        or not _VERSION_RE.fullmatch(version)):
                raise MalformedMessage("schema", f"agents: {name}: invalid version {_short(version)}")
            if name in seen:
                raise MalformedMessage("schema", f"agents: {name} listed twice")
            seen.add(name)
        if doc["collective"] not in doc["collectives"]:
            raise MalformedMessage("schema", f"collective {doc['collective']!r} is not one of the "
                                             f"node's collectives")
        doc = dict(doc)
        del doc["type"]
        return cls(**doc)


# -- the signed wrapper ----------------------------------------------------------------------
@dataclass(frozen=True)
class Wire:
    """A decoded wire document; ``sig`` and ``body`` are raw bytes."""

    v: int
    alg: str
    kid: str
    sig: bytes = field(repr=False)
    body: bytes = field(repr=False)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise MalformedMessage("wire", f"{what} must be a base64 string")
    try:
        raw = text.encode("ascii")
        data = base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise MalformedMessage("base64", f"{what} is not valid base64") from None
    if base64.b64encode(data) != raw:  # one encoding per byte string: no malleable padding bits
        raise MalformedMessage("base64", f"{what} is not canonical base64")
    return data


def encode_wire(alg: str, kid: str, sig: bytes, body: bytes) -> bytes:
    """The wire document carrying ``body`` and its signature."""
    return canonical_json({"v": WIRE_VERSION, "alg": alg, "kid": kid, "sig": _b64encode(sig),
                           "body": _b64encode(body)})


def decode_wire(wire: bytes, max_bytes: int | None = None) -> Wire:
    """Decode a wire document: size first, then a strict parse, then each field.

    The signature is *not* checked here (see :mod:`collective.security`).
    """
    if not isinstance(wire, bytes | bytearray | memoryview):
        raise MalformedMessage("wire", f"wire must be bytes, not {type(wire).__name__}")
    if max_bytes is not None and len(wire) > max_bytes:
        raise MalformedMessage("oversize", f"{len(wire)} bytes, limit {max_bytes}")
    doc = strict_loads(wire)
    if not isinstance(doc, dict):
        raise MalformedMessage("wire", f"wire must be a JSON object, not {type(doc).__name__}")
    if set(doc) != WIRE_KEYS:
        extra, missing = sorted(set(doc) - WIRE_KEYS), sorted(WIRE_KEYS - set(doc))
        detail = f"unknown key {_short(extra[0])}" if extra else f"missing key {missing[0]!r}"
        raise MalformedMessage("wire", detail)
    if type(doc["v"]) is not int or doc["v"] != WIRE_VERSION:
        raise MalformedMessage("version", f"unsupported wire version {_short(doc['v'])}")
    alg, kid = doc["alg"], doc["kid"]
    if not isinstance(alg, str) or not _ALG_RE.fullmatch(alg):
        raise MalformedMessage("wire", f"invalid alg {_short(alg)}")
    if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
        raise MalformedMessage("wire", f"invalid kid {_short(kid)}")
    return Wire(WIRE_VERSION, alg, kid, _b64decode(doc["sig"], "sig"), _b64decode(doc["body"], "body"))
