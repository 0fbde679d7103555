"""Fuzzing what arrives from the network: STOMP frames (the parser and a real embedded
broker), wire documents and request, reply and registration envelopes (mutated from valid
ones, and signed by a trusted key so that the body parser is reached).

Properties: the parser raises :class:`~collective.broker.frames.FrameError` only and cuts
the stream alike wherever it is split; the broker answers every connection with CONNECTED
or ERROR (or closes it) and keeps serving; decoding raises
:class:`~collective.message.MalformedMessage` or
:class:`~collective.security.SecurityError` only. Bounded: a few hundred examples and a
deadline per example (docs/security.md)."""

from __future__ import annotations

import copy
import json
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collective.broker import EmbeddedBroker
from collective.broker.frames import (
    ALL_COMMANDS,
    CLIENT_COMMANDS,
    Frame,
    FrameError,
    FrameParser,
    serialize,
)
from collective.config import Config
from collective.message import (
    MalformedMessage,
    RegistrationMessage,
    ReplyMessage,
    RequestMessage,
    canonical_json,
    decode_wire,
)
from collective.security import SecurityError
from collective.security.ed25519 import Ed25519Provider
from collective.security.keys import generate_keypair

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
REJECTED = (MalformedMessage, SecurityError)

# -- STOMP frames ------------------------------------------------------------------------------

_VALID_FRAMES = [
    Frame("CONNECT", {"accept-version": "1.2", "host": "collective", "heart-beat": "0,0"}, b""),
    Frame("SUBSCRIBE", {"destination": "/queue/COLL.node.n1", "id": "1", "ack": "client"}, b""),
    Frame("SEND", {"destination": "/topic/COLL.broadcast.agent.rpcutil",
                   "content-length": "7", "expires": "0"}, b'{"v":1}'),
    Frame("SEND", {"destination": "/queue/a", "x:y": "a\\b\nc"}, b"no length"),
    Frame("ACK", {"id": "m-1"}, b""),
    Frame("MESSAGE", {"destination": "/queue/a", "message-id": "1", "subscription": "1",
                      "content-length": "3"}, b"a\x00b"),
    Frame("DISCONNECT", {"receipt": "77"}, b""),
]
_NOISE = [b"\n", b"\r\n", b"\r", b"\x00", b":", b"\\", b"\\c", b"\\x", b"\xff\xfe", b"\x80",
          b"content-length:", b"content-length:99999999999999999999", b"content-length:-1",
          b"content-length: 3", b"SEND", b"CONNECT", b"\n\n", b"\t", b"A" * 40]


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """Valid frames, serialized, with bytes flipped, inserted, deleted or repeated."""
    frames = draw(st.lists(st.sampled_from(_VALID_FRAMES), min_size=1, max_size=4))
    data = bytearray(b"".join(serialize(f) for f in frames))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(_NOISE) | st.binary(max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 40))]
    return bytes(data)


def _parse(data: bytes, chunks: list[int]) -> tuple[list[Frame], str | None, int]:
    """Feed ``data`` cut at ``chunks``: the frames, the error (if any), bytes left."""
    parser = FrameParser(max_body=256, max_headers=8, max_header_line=128, commands=ALL_COMMANDS)
    got: list[Frame] = []
    prev = 0
    try:
        for cut in [*sorted(chunks), len(data)]:
            got.extend(parser.feed(data[prev:cut]))
            prev = cut
    except FrameError as exc:
        got.extend(exc.frames)
        with pytest.raises(FrameError):  # poisoned: the stream can no longer be trusted
            parser.feed(b"\n")
        return got, exc.message, 0
    return got, None, parser.buffered


@settings(FUZZ, max_examples=1000)
@given(mutated_streams(), st.lists(st.integers(0, 2000), max_size=8))
@example(b"SEND\ncontent-length:99999999999999999999\n\n\x00", [])
@example(b"CONNECT\nlogin:\xff\n\n\x00", [7])
def test_frame_parser_raises_only_frame_error_and_ignores_where_the_stream_is_cut(data, cuts):
    whole, error, left = _parse(data, [])
    split, split_error, split_left = _parse(data, [c for c in cuts if c <= len(data)])
    assert split == whole and (split_error is None) == (error is None) and split_left == left
    for frame in whole:
        assert frame.command in ALL_COMMANDS
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in frame.headers.items())
        assert len(frame.body) <= 256 and len(frame.headers) <= 8


# -- a real embedded broker, fed mutated streams over TCP ----------------------------------------

@pytest.fixture(scope="module")
def broker():
    server = EmbeddedBroker(host="127.0.0.1", port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data``, half-close, read until the broker closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the broker refused and closed while we were still sending
            pass
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


_CONNECT = serialize(Frame("CONNECT", {"accept-version": "1.2", "host": "collective"}, b""))


@settings(FUZZ, max_examples=200)
@given(st.booleans(), mutated_streams())
@example(True, b"SUBSCRIBE\ndestination:/queue/\xff\nid:1\n\n\x00")
@example(True, b"SEND\ndestination:/queue/a\ncontent-length:5\n\nab")
def test_broker_survives_mutated_frames_and_keeps_serving(broker, connect_first, data):
    out = _exchange(broker.port, (_CONNECT if connect_first else b"") + data)
    parsed = FrameParser(commands=ALL_COMMANDS, max_body=1 << 20).feed(out) if out else []
    assert all(f.command in ("CONNECTED", "ERROR", "RECEIPT", "MESSAGE") for f in parsed)
    fresh = FrameParser(commands=ALL_COMMANDS).feed(_exchange(broker.port, _CONNECT))
    assert [f.command for f in fresh] == ["CONNECTED"]  # the next client is served


# -- wire documents and envelopes -----------------------------------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["", "collective.request/1", "collective.reply/1", "cert=admin", "n1",
                     "mcollective", "rpcutil", "ping", "0" * 32, "a" * 64, "x\n", "é", "\ud800"]),
)
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


def _request() -> dict[str, Any]:
    return RequestMessage.new(sender="client1", caller="cert=alice", collective="mcollective",
                              agent="rpcutil", action="ping", ttl=60,
                              reply_to="mcollective.reply.client1.1", targets=None).to_dict()


def _reply() -> dict[str, Any]:
    return ReplyMessage(request_id="0" * 32, request_sha256="a" * 64, sender="node-001",
                        agent="rpcutil", action="ping", statuscode=0, statusmsg="OK",
                        data={"pong": 1}, time=1).to_dict()


def _registration() -> dict[str, Any]:
    return RegistrationMessage.new(identity="node-001", collective="mcollective",
                                   collectives=["mcollective"], facts={"os": "linux"},
                                   classes=["base"], agents=[{"name": "rpcutil", "version": "1.0"}],
                                   interval=300).to_dict()


_ENVELOPES = {"request": (_request, RequestMessage), "reply": (_reply, ReplyMessage),
              "registration": (_registration, RegistrationMessage)}


@st.composite
def mutated_envelopes(draw: st.DrawFn) -> tuple[str, Any]:
    """A valid envelope with a top-level or nested value replaced, dropped or added."""
    kind = draw(st.sampled_from(sorted(_ENVELOPES)))
    doc: Any = _ENVELOPES[kind][0]()
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(doc))) if isinstance(doc, dict) and doc else None
        how = draw(st.sampled_from(["replace", "drop", "add", "nest", "whole"]))
        if how == "whole" or key is None:
            doc = draw(_json)
            break
        if how == "replace":
            doc[key] = draw(_json)
        elif how == "drop":
            del doc[key]
        elif how == "add":
            doc[draw(st.text(max_size=6))] = draw(_json)
        elif isinstance(doc[key], dict | list) and doc[key]:
            inner = doc[key]
            at = draw(st.sampled_from(sorted(inner) if isinstance(inner, dict) else range(len(inner))))
            inner[at] = draw(_json)
    return kind, doc


def _body(doc: Any) -> bytes:
    try:
        return canonical_json(doc)
    except MalformedMessage:  # a lone surrogate: send what a sender would have to send
        return json.dumps(doc).encode()


@settings(FUZZ, max_examples=600)
@given(mutated_envelopes())
@example(("request", {**_request(), "targets": [1]}))
@example(("registration", {**_registration(), "agents": [{"name": "x", "version": ["1"]}]}))
def test_envelope_decoding_raises_only_malformed_message(case):
    kind, doc = case
    cls = _ENVELOPES[kind][1]
    try:
        message = cls.from_body(_body(doc))
    except MalformedMessage:
        return
    assert cls.from_body(message.to_body()) == message  # what is accepted re-encodes alike


@FUZZ
@given(st.binary(max_size=400) | _json.map(lambda d: json.dumps(d).encode()))
@example(b'{"v":1,"alg":"ed25519","kid":"x","sig":"","body":"===="}')
@example(b"[" * 50_000)
def test_decode_wire_raises_only_malformed_message(raw):
    try:
        wire = decode_wire(raw, max_bytes=64 * 1024)
    except MalformedMessage:
        return
    assert isinstance(wire.body, bytes) and isinstance(wire.sig, bytes)


class _Pair:
    """A trusted client (alice) and node (node-001), each with an Ed25519 provider."""

    def __init__(self, root: Path) -> None:
        keys, trust = root / "keys", root / "trust"
        for name, kind in (("alice", "clients"), ("node-001", "nodes")):
            (trust / kind).mkdir(parents=True, exist_ok=True)
            generate_keypair(name, keys)
            shutil.copy(keys / f"{name}.pub", trust / kind / f"{name}.pub")

        def config(kind: str, key: str) -> Config:
            sec = {"provider": "ed25519", "private_key": str(keys / f"{key}.key"),
                   "trust_dir": str(trust)}
            data: dict[str, Any] = {"security": sec, "identity": key}
            if kind == "client":
                sec["identity"] = key
                data["identity"] = "client1"
            return Config(data, path=None, kind=kind, env={})

        self.client = Ed25519Provider(config("client", "alice"), "client")
        self.node = Ed25519Provider(config("server", "node-001"), "node")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _Pair(tmp_path_factory.mktemp("pki"))


@FUZZ
@given(mutated_envelopes())
@example(("request", {**_request(), "caller": "cert=bob"}))
@example(("reply", {**_reply(), "statuscode": 9}))
def test_signed_mutated_bodies_raise_only_malformed_or_security_errors(pair, case):
    """A trusted key signing garbage: the node and the client reach the body parser."""
    kind, doc = case
    body = _body(doc)
    try:
        if kind == "request":
            pair.node.verify_request(pair.client.sign(body, "request"))
        elif kind == "reply":
            pair.client.verify_reply(pair.node.sign(body, "reply"))
        else:
            pair.client.verify_registration(pair.node.sign(body, "registration"))
    except REJECTED:
        pass


@FUZZ
@given(st.sampled_from(["v", "alg", "kid", "sig", "body", "extra"]), _json)
@example("body", "e30=")
@example("v", True)
def test_mutated_wire_documents_raise_only_rejections(pair, key, value):
    wire = json.loads(pair.client.sign(canonical_json(_request()), "request"))
    original = dict(wire)
    wire[key] = value
    try:
        pair.node.verify_request(json.dumps(wire).encode())
    except REJECTED:
        return
    assert key in original and value == original[key]  # only an unchanged wire verifies


def test_the_valid_cases_the_mutations_start_from_are_accepted(pair):
    for make, cls in _ENVELOPES.values():
        doc = make()
        assert cls.from_body(canonical_json(doc)).to_dict() == doc
    _verified, request = pair.node.verify_request(pair.client.sign(canonical_json(_request()),
                                                                   "request"))
    assert request.caller == "cert=alice"
    assert [f.command for f in FrameParser(commands=CLIENT_COMMANDS).feed(_CONNECT)] == ["CONNECT"]
    assert copy.deepcopy(_VALID_FRAMES) == FrameParser(commands=ALL_COMMANDS).feed(
        b"".join(serialize(f) for f in _VALID_FRAMES))
