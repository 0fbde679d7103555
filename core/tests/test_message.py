"""Wire format: canonical JSON, the strict parser (docs/security.md S12) and the envelopes."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collective.message import (
    MAX_DEPTH,
    MAX_REGISTRATION_BYTES,
    MalformedMessage,
    RegistrationMessage,
    ReplyMessage,
    RequestMessage,
    Wire,
    canonical_json,
    decode_wire,
    encode_wire,
    strict_loads,
)


def reason(excinfo):
    return excinfo.value.reason


def make_request(**over):
    fields = dict(sender="client1", caller="cert=alice", collective="mcollective", agent="rpcutil",
                  action="ping", data={"x": 1}, filter={"identity": ["node-001"]}, ttl=60,
                  reply_to="mcollective.reply.client1.abc", targets=None)
    fields.update(over)
    return RequestMessage.new(**fields)


# -- canonical JSON -------------------------------------------------------------------------
def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()


def test_canonical_json_refuses_nan():
    with pytest.raises(MalformedMessage) as exc:
        canonical_json({"a": float("nan")})
    assert reason(exc) == "nan"


def test_canonical_json_refuses_lone_surrogate():
    with pytest.raises(MalformedMessage) as exc:
        canonical_json({"a": "\ud800"})
    assert reason(exc) == "utf8"


# -- strict_loads ------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "why"), [
    (b"[" * 100_000, "depth"),
    (b"{\"a\":" * 100_000, "depth"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "depth"),
    (b"1" * 5000, "int_range"),
    (b"-" + b"9" * 5000, "int_range"),
    (str(2**53 + 1).encode(), "int_range"),
    (str(-(2**53) - 1).encode(), "int_range"),
    (b"NaN", "nan"),
    (b"[Infinity]", "nan"),
    (b"{\"a\":-Infinity}", "nan"),
    (b"1e400", "nan"),
    (b'{"a":1,"a":2}', "duplicate_key"),
    (b'{"x":{"a":1,"b":2,"a":1}}', "duplicate_key"),
    (b'"\xff"', "utf8"),
    (b'"\xed\xa0\x80"', "utf8"),  # an encoded surrogate is not UTF-8
    (b'"\xc0\xaf"', "utf8"),  # overlong encoding
    (b'"\\ud800"', "utf8"),  # a lone surrogate escape could never be re-encoded
    (b'{"\\udc00":1}', "utf8"),
    (b'{"a":1', "json"),
    (b"", "json"),
    (b"{'a':1}", "json"),
    (b"\xef\xbb\xbf{}", "json"),  # BOM
])
def test_strict_loads_rejects(data, why):
    with pytest.raises(MalformedMessage) as exc:
        strict_loads(data)
    assert reason(exc) == why
    assert why in str(exc.value)


@pytest.mark.parametrize(("data", "value"), [
    (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, None),
    (str(2**53).encode(), 2**53),
    (str(-(2**53)).encode(), -(2**53)),
    (b'"\\ud83d\\ude00"', "\U0001F600"),
    (b'{"a":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', None),
    (b'["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\\\"]', None),
    (b'{"a":1.5,"b":"\xc3\xa9"}', {"a": 1.5, "b": "é"}),
])
def test_strict_loads_accepts(data, value):
    parsed = strict_loads(data)
    if value is not None:
        assert parsed == value


def test_strict_loads_depth_counts_brackets_in_strings_correctly():
    inner = "[" * 40
    assert strict_loads(json.dumps({"s": inner, "t": ["\\\"" + inner]}).encode())["s"] == inner


def test_strict_loads_oversize_checked_before_parsing():
    # Not even valid UTF-8 or JSON: the size check must come first.
    with pytest.raises(MalformedMessage) as exc:
        strict_loads(b"\xff" * 2000, max_bytes=1024)
    assert reason(exc) == "oversize"


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20))
@settings(max_examples=200, deadline=None)
def test_canonical_round_trip(doc):
    assert strict_loads(canonical_json(doc)) == doc


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_strict_loads_never_raises_anything_else(data):
    try:
        strict_loads(data)
    except MalformedMessage:
        pass


# -- envelopes ------------------------------------------------------------------------------
def test_request_new_fills_id_and_time_and_round_trips():
    req = make_request()
    assert len(req.id) == 32 and int(req.id, 16) >= 0
    assert isinstance(req.time, int) and req.time > 1_600_000_000_000
    body = req.to_body()
    assert body == canonical_json(json.loads(body))
    assert json.loads(body)["type"] == "collective.request/1"
    assert RequestMessage.from_body(body) == req
    targeted = make_request(targets=["node-001", "node-002"])
    assert RequestMessage.from_body(targeted.to_body()).targets == ["node-001", "node-002"]


def test_reply_for_request_round_trips():
    req = make_request()
    body = req.to_body()
    reply = ReplyMessage.for_request(body, req, "node-001", 0, "OK", {"pong": 1})
    assert reply.request_id == req.id
    assert reply.request_sha256 == hashlib.sha256(body).hexdigest()
    assert (reply.agent, reply.action) == ("rpcutil", "ping")
    assert ReplyMessage.from_body(reply.to_body()) == reply


def _mutated(body: bytes, **changes) -> bytes:
    doc = json.loads(body)
    for key, value in changes.items():
        if value is _DELETE:
            del doc[key]
        else:
            doc[key] = value
    return canonical_json(doc)


_DELETE = object()


@pytest.mark.parametrize("changes", [
    {"type": "collective.reply/1"},
    {"type": _DELETE},
    {"extra": 1},
    {"id": "not-hex"},
    {"id": _DELETE},
    {"agent": "../../etc/passwd"},
    {"agent": "Rpcutil"},
    {"action": "a" * 65},
    {"collective": "..%2f.."},
    {"collective": "-x"},
    {"sender": "../x"},
    {"caller": "cert=../x"},
    {"caller": "cert=a/b"},
    {"caller": "alice"},
    {"caller": "cert=" + "a" * 129},
    {"time": 1.0},
    {"time": "1"},
    {"time": -1},
    {"ttl": 0},
    {"ttl": True},
    {"ttl": 60.0},
    {"data": []},
    {"filter": None},
    {"reply_to": "/queue/x"},
    {"reply_to": "a" * 300},
    {"targets": ["../x"]},
    {"targets": "node-001"},
])
def test_request_from_body_rejects(changes):
    body = _mutated(make_request().to_body(), **changes)
    with pytest.raises(MalformedMessage) as exc:
        RequestMessage.from_body(body)
    assert reason(exc) == "schema"


def test_request_from_body_rejects_a_reply_and_vice_versa():
    req = make_request()
    reply_body = ReplyMessage.for_request(req.to_body(), req, "node-001", 0, "OK", {}).to_body()
    with pytest.raises(MalformedMessage, match="type must be 'collective.request/1'"):
        RequestMessage.from_body(reply_body)
    with pytest.raises(MalformedMessage, match="type must be 'collective.reply/1'"):
        ReplyMessage.from_body(req.to_body())


@pytest.mark.parametrize("changes", [
    {"statuscode": 6}, {"statuscode": -1}, {"statuscode": 0.0}, {"request_sha256": "ab"},
    {"sender": "node/1"}, {"data": "x"}, {"statusmsg": None}, {"unknown": 1},
])
def test_reply_from_body_rejects(changes):
    req = make_request()
    body = ReplyMessage.for_request(req.to_body(), req, "node-001", 0, "OK", {}).to_body()
    with pytest.raises(MalformedMessage) as exc:
        ReplyMessage.from_body(_mutated(body, **changes))
    assert reason(exc) == "schema"


@pytest.mark.parametrize(("data", "why"), [
    ({"big": 2**60}, "int_range"),
    ({"nan": float("inf")}, "nan"),
    ({"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "depth"),
    ({"s": "\udc00"}, "utf8"),
])
def test_to_body_refuses_encodings_a_receiver_would_refuse(data, why):
    with pytest.raises(MalformedMessage) as exc:
        make_request(data=data).to_body()
    assert reason(exc) == why
    req = make_request()
    with pytest.raises(MalformedMessage) as exc:
        ReplyMessage.for_request(req.to_body(), req, "node-001", 0, "OK", data).to_body()
    assert reason(exc) == why


def test_validate_applies_the_schema_to_body_does_not():
    bad = make_request(agent="../x")
    body = bad.to_body()  # negative tests may build invalid envelopes
    with pytest.raises(MalformedMessage) as exc:
        bad.validate()
    assert reason(exc) == "schema"
    with pytest.raises(MalformedMessage):
        RequestMessage.from_body(body)
    make_request().validate()
    req = make_request()
    reply = ReplyMessage.for_request(req.to_body(), req, "node-001", 0, "OK", {})
    reply.validate()
    reply.statuscode = 9
    with pytest.raises(MalformedMessage):
        reply.validate()


def test_schema_error_message_is_bounded():
    body = _mutated(make_request().to_body(), agent="x" * 100_000)
    with pytest.raises(MalformedMessage) as exc:
        RequestMessage.from_body(body)
    assert len(str(exc.value)) < 500


# -- wire -------------------------------------------------------------------------------------
def test_wire_round_trip():
    wire = encode_wire("ed25519", "0123456789abcdef", b"\x01" * 64, b'{"a":1}')
    assert json.loads(wire) == {"v": 1, "alg": "ed25519", "kid": "0123456789abcdef",
                                "sig": base64.b64encode(b"\x01" * 64).decode(),
                                "body": base64.b64encode(b'{"a":1}').decode()}
    assert decode_wire(wire) == Wire(1, "ed25519", "0123456789abcdef", b"\x01" * 64, b'{"a":1}')


def _wire(**changes) -> bytes:
    doc = json.loads(encode_wire("ed25519", "k1", b"sig", b"{}"))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("wire", "why"), [
    (_wire(v=2), "version"),
    (_wire(v=True), "version"),
    (_wire(v="1"), "version"),
    (_wire(v=1.0), "version"),
    (_wire(extra=1), "wire"),
    (_wire(key="x"), "wire"),
    (_wire(alg="ED25519 "), "wire"),
    (_wire(kid="../x"), "wire"),
    (_wire(kid=1), "wire"),
    (_wire(sig="not base64!"), "base64"),
    (_wire(sig="c2ln"[:3]), "base64"),
    (_wire(body="e31="), "base64"),  # non-canonical padding bits
    (_wire(body="e30\n"), "base64"),
    (_wire(body="ë30="), "base64"),
    (_wire(body=None), "wire"),
    (b"[1]", "wire"),
    (b'{"v":1,"v":1,"alg":"x","kid":"k","sig":"","body":""}', "duplicate_key"),
    (b"\xff", "utf8"),
])
def test_decode_wire_rejects(wire, why):
    with pytest.raises(MalformedMessage) as exc:
        decode_wire(wire)
    assert reason(exc) == why


def test_decode_wire_size_check_comes_first(monkeypatch):
    import collective.message as message

    calls = []
    monkeypatch.setattr(message, "strict_loads", lambda *a, **k: calls.append(a))
    with pytest.raises(MalformedMessage) as exc:
        decode_wire(b"x" * 600 * 1024, max_bytes=512 * 1024)
    assert reason(exc) == "oversize"
    assert calls == []


def test_decode_wire_accepts_exactly_max_bytes():
    wire = encode_wire("ed25519", "k1", b"s", b"{}")
    assert decode_wire(wire, max_bytes=len(wire)).body == b"{}"
    with pytest.raises(MalformedMessage):
        decode_wire(wire, max_bytes=len(wire) - 1)


@pytest.mark.parametrize(("field", "value"), [
    ("agent", "rpcutil\n"), ("action", "ping\n"), ("caller", "cert=alice\n"),
    ("collective", "mcollective\n"), ("sender", "client1\n"), ("id", "0" * 32 + "\n"),
    ("targets", ["node-001\n"]), ("reply_to", "mcollective.reply.x\n"),
])
def test_trailing_newline_is_not_a_name(field, value):
    """JSON Schema ``pattern`` is ``re.search``, where ``$`` accepts a trailing newline."""
    body = _mutated(make_request().to_body(), **{field: value})
    with pytest.raises(MalformedMessage) as exc:
        RequestMessage.from_body(body)
    assert reason(exc) == "schema"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=70) | st.sampled_from(["node-001", "a" * 32, "cert=bob", "rpcutil", "x\n"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=5)


@given(st.dictionaries(st.sampled_from(["id", "sender", "caller", "collective", "agent", "action", "data",
                                        "filter", "time", "ttl", "reply_to", "targets", "statuscode",
                                        "statusmsg", "request_id", "request_sha256"]),
                       _json_values, max_size=4),
       st.booleans())
@settings(max_examples=400, deadline=None)
def test_accepted_envelopes_are_valid_per_json_schema(changes, is_request):
    """The fast envelope check never accepts what the JSON Schema refuses."""
    import jsonschema

    from collective.message import REPLY_SCHEMA, REQUEST_SCHEMA

    req = make_request()
    cls, schema = (RequestMessage, REQUEST_SCHEMA) if is_request else (ReplyMessage, REPLY_SCHEMA)
    base = req.to_body() if is_request else ReplyMessage.for_request(req.to_body(), req, "n1", 0, "",
                                                                      {}).to_body()
    doc = json.loads(base)
    doc.update({k: v for k, v in changes.items() if k in doc})
    body = canonical_json(doc)
    try:
        cls.from_body(body)
    except MalformedMessage as exc:
        assert exc.reason == "schema"
        return
    assert jsonschema.Draft202012Validator(schema).is_valid(json.loads(body))


# -- registrations -----------------------------------------------------------------------------
def make_registration(**over):
    fields = dict(identity="node-001", collective="mcollective", collectives=["mcollective", "uk"],
                  facts={"role": "web", "os": {"family": "Debian"}}, classes=["base", "role::web"],
                  agents=[{"name": "rpcutil", "version": "1.0.0"}, {"name": "nrpe", "version": None}],
                  interval=300)
    fields.update(over)
    return RegistrationMessage.new(**fields)


def test_registration_round_trips():
    reg = make_registration()
    body = reg.to_body()
    assert json.loads(body)["type"] == "collective.registration/1"
    back = RegistrationMessage.from_body(body)
    assert back == reg
    assert back.agent_names == ["rpcutil", "nrpe"]
    reg.validate()


def test_registration_is_not_a_request_or_reply():
    body = make_registration().to_body()
    with pytest.raises(MalformedMessage):
        RequestMessage.from_body(body)
    with pytest.raises(MalformedMessage):
        ReplyMessage.from_body(body)
    with pytest.raises(MalformedMessage):
        RegistrationMessage.from_body(make_request().to_body())


@pytest.mark.parametrize("changes", [
    {"identity": "../etc"}, {"identity": "node-001\n"}, {"collective": "de"},
    {"collectives": "mcollective"}, {"interval": 0}, {"interval": 1.5}, {"interval": True},
    {"facts": []}, {"classes": [1]}, {"classes": [""]}, {"classes": ["a\nb"]},
    {"classes": ["x" * 257]},
    {"agents": [{"name": "Bad-Name", "version": None}]},
    {"agents": [{"name": "nrpe"}]},
    {"agents": [{"name": "nrpe", "version": None, "extra": 1}]},
    {"agents": [{"name": "nrpe", "version": "1 0"}]},
    {"agents": [{"name": "nrpe", "version": 1}]},
    {"agents": [{"name": "nrpe", "version": None}, {"name": "nrpe", "version": None}]},
    {"agents": ["nrpe"]},
    {"time": -1}, {"extra": 1},
])
def test_registration_from_body_rejects(changes):
    doc = make_registration().to_dict()
    doc.update(changes)
    with pytest.raises(MalformedMessage) as exc:
        RegistrationMessage.from_body(canonical_json(doc))
    assert reason(exc) == "schema"


def test_registration_missing_key_rejected():
    doc = make_registration().to_dict()
    del doc["interval"]
    with pytest.raises(MalformedMessage, match="interval"):
        RegistrationMessage.from_body(canonical_json(doc))


def test_registration_size_cap():
    facts = {"blob": "x" * (MAX_REGISTRATION_BYTES - 1000)}
    assert len(make_registration(facts=facts).to_body()) <= MAX_REGISTRATION_BYTES
    big = make_registration(facts={"blob": "x" * MAX_REGISTRATION_BYTES})
    with pytest.raises(MalformedMessage) as exc:
        big.to_body()
    assert reason(exc) == "oversize"
    # a receiver checks the size before parsing
    with pytest.raises(MalformedMessage) as exc:
        RegistrationMessage.from_body(canonical_json(big.to_dict()))
    assert reason(exc) == "oversize"


def test_registration_facts_that_json_cannot_carry():
    import datetime

    with pytest.raises(MalformedMessage) as exc:
        make_registration(facts={"when": datetime.date(2024, 1, 1)}).to_body()
    assert reason(exc) == "json"
    with pytest.raises(MalformedMessage) as exc:
        make_registration(facts={"x": float("nan")}).to_body()
    assert reason(exc) == "nan"
