"""Unit and property tests of the STOMP frame parser/serializer (collective.broker.frames)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collective.broker.frames import (
    ALL_COMMANDS,
    CLIENT_COMMANDS,
    UNESCAPED_COMMANDS,
    Frame,
    FrameError,
    FrameParser,
    escape_header,
    parse_frames,
    serialize,
    unescape_header,
)


def feed_bytewise(data: bytes, **kw: object) -> list[Frame]:
    parser = FrameParser(**kw)  # type: ignore[arg-type]
    out: list[Frame] = []
    for i in range(len(data)):
        out.extend(parser.feed(data[i:i + 1]))
    return out


# -- well-formed input -------------------------------------------------------------------


def test_simple_send_and_heartbeats() -> None:
    data = b"\n\r\n\nSEND\ndestination:/queue/a\n\nhello\x00\n\n"
    parser = FrameParser()
    frames = parser.feed(data)
    assert frames == [Frame("SEND", {"destination": "/queue/a"}, b"hello")]
    assert parser.heartbeats == 5
    assert parser.buffered == 0


def test_crlf_line_endings() -> None:
    data = b"SEND\r\ndestination:/topic/x\r\nfoo:bar\r\n\r\nbody\x00"
    assert parse_frames(data) == [Frame("SEND", {"destination": "/topic/x", "foo": "bar"}, b"body")]


def test_content_length_binary_body_with_nul() -> None:
    body = b"\x00\x01\x00\xff\n\n\x00"
    data = b"SEND\ndestination:/queue/a\ncontent-length:%d\n\n" % len(body) + body + b"\x00"
    assert parse_frames(data)[0].body == body
    assert feed_bytewise(data)[0].body == body


def test_incremental_equals_whole() -> None:
    frame_bytes = (b"SEND\ndestination:/queue/a\ncontent-length:3\n\na\x00b\x00"
                   b"\nSUBSCRIBE\nid:1\ndestination:/topic/t\nack:client\n\n\x00"
                   b"DISCONNECT\nreceipt:r\n\n\x00")
    assert feed_bytewise(frame_bytes) == parse_frames(frame_bytes)
    assert [f.command for f in parse_frames(frame_bytes)] == ["SEND", "SUBSCRIBE", "DISCONNECT"]


def test_header_escaping() -> None:
    data = b"SEND\ndestination:/queue/a\nk\\cey:v\\na\\\\l\\cue\\r\n\n\x00"
    f = parse_frames(data)[0]
    assert f.headers["k:ey"] == "v\na\\l:ue\r"
    assert parse_frames(serialize(f)) == [f]


def test_connect_headers_not_unescaped() -> None:
    data = b"CONNECT\naccept-version:1.2\nlogin:a\\nb\npasscode:x:y\n\n\x00"
    f = parse_frames(data)[0]
    assert f.headers["login"] == "a\\nb"
    assert f.headers["passcode"] == "x:y"


def test_repeated_header_first_wins() -> None:
    f = parse_frames(b"SEND\ndestination:/queue/a\nfoo:1\nfoo:2\n\n\x00")[0]
    assert f.headers["foo"] == "1"


def test_empty_value_and_colon_in_value() -> None:
    f = parse_frames(b"CONNECT\nhost:\nx:a:b\n\n\x00")[0]
    assert f.headers == {"host": "", "x": "a:b"}


def test_escape_unescape_roundtrip_simple() -> None:
    for s in ["", "plain", "a:b", "a\nb\r\nc\\d", "\\c\\n"]:
        assert unescape_header(escape_header(s)) == s


def test_serialize_content_length_option() -> None:
    f = Frame("MESSAGE", {"destination": "/topic/a"}, b"x\x00y")
    with pytest.raises(ValueError):
        serialize(f)
    data = serialize(f, content_length=True)
    back = parse_frames(data, commands=ALL_COMMANDS)[0]
    assert back.body == b"x\x00y"
    assert back.headers["content-length"] == "3"


def test_serialize_refuses_unrepresentable_connect() -> None:
    with pytest.raises(ValueError):
        serialize(Frame("CONNECT", {"login": "a\nb"}))
    with pytest.raises(ValueError):
        serialize(Frame("SEND", {"a": "b\x00"}))


# -- malformed input ---------------------------------------------------------------------

MALFORMED = [
    (b"FOO\n\n\x00", "unknown command"),
    (b"send\n\n\x00", "unknown command"),
    (b"SEND\ndestination\n\n\x00", "header without colon"),
    (b"SEND\ndestination:/queue/\xff\xfe\n\n\x00", "non-UTF-8 header"),
    (b"SEND\ndestination:/queue/a\ncontent-length:2\n\nabc\x00", "content-length does not match"),
    (b"SEND\ndestination:/queue/a\ncontent-length:x\n\nabc\x00", "invalid content-length"),
    (b"SEND\ndestination:/queue/a\ncontent-length:-1\n\nabc\x00", "invalid content-length"),
    (b"SEND\ndestination:/queue/a\ncontent-length:99999999\n\n", "content-length exceeds"),
    (b"SEND\nbad:\\t\n\n\x00", "invalid escape"),
    (b"SEND\nbad:x\\\n\n\x00", "invalid escape"),
    (b"SEND\n:x\n\n\x00", "empty header name"),
    (b"SEND\ndest:a\x00b\n\n\x00", "NUL byte in header"),
    (b"A" * 40 + b"\n\n\x00", "frame command too long"),
    (b"\rSEND\n\n\x00", "carriage return"),
]


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_frames(data)
    assert reason in info.value.message


@pytest.mark.parametrize(("data", "reason"), MALFORMED)
def test_malformed_bytewise(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        feed_bytewise(data)
    assert reason in info.value.message


def test_too_many_headers_detected_early() -> None:
    parser = FrameParser(max_headers=64)
    data = b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(100_000))
    with pytest.raises(FrameError) as info:
        parser.feed(data)
    assert info.value.message == "too many headers"


def test_header_line_too_long_without_newline() -> None:
    parser = FrameParser(max_header_line=100)
    parser.feed(b"SEND\n")
    with pytest.raises(FrameError) as info:
        parser.feed(b"x" * 200)
    assert info.value.message == "header line too long"


def test_command_too_long_without_newline() -> None:
    with pytest.raises(FrameError) as info:
        FrameParser().feed(b"S" * 100)
    assert info.value.message == "frame command too long"


def test_oversize_body_without_content_length() -> None:
    parser = FrameParser(max_body=1000)
    parser.feed(b"SEND\ndestination:/queue/a\n\n")
    parser.feed(b"x" * 1000)
    with pytest.raises(FrameError) as info:
        parser.feed(b"x")
    assert info.value.message == "body exceeds maximum size"


def test_body_at_limit_accepted() -> None:
    parser = FrameParser(max_body=1000)
    frames = parser.feed(b"SEND\ndestination:/queue/a\n\n" + b"x" * 1000 + b"\x00")
    assert len(frames[0].body) == 1000


def test_parser_poisoned_after_error_and_keeps_earlier_frames() -> None:
    parser = FrameParser()
    with pytest.raises(FrameError) as info:
        parser.feed(b"SEND\ndestination:/queue/a\n\nok\x00BOGUS\n\n\x00")
    assert [f.body for f in info.value.frames] == [b"ok"]
    with pytest.raises(FrameError):
        parser.feed(b"SEND\n\n\x00")


def test_server_commands_rejected_by_default() -> None:
    with pytest.raises(FrameError):
        parse_frames(b"MESSAGE\n\n\x00")
    assert parse_frames(b"MESSAGE\n\n\x00", commands=ALL_COMMANDS)[0].command == "MESSAGE"


def test_incomplete_frame_reported_by_parse_frames() -> None:
    with pytest.raises(FrameError):
        parse_frames(b"SEND\ndestination:/queue/a\n\nno nul")


# -- property tests ----------------------------------------------------------------------

header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=20)
header_name = header_text.filter(bool)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    command = draw(st.sampled_from(sorted(ALL_COMMANDS)))
    if command in UNESCAPED_COMMANDS:
        name = header_name.filter(lambda s: not any(c in s for c in ":\r\n"))
        value = header_text.filter(lambda s: not any(c in s for c in "\r\n"))
    else:
        name, value = header_name, header_text
    headers = draw(st.dictionaries(name.filter(lambda s: s != "content-length"), value,
                                   max_size=8))
    body = draw(st.binary(max_size=200))
    if b"\x00" in body or draw(st.booleans()):
        headers["content-length"] = str(len(body))
    return Frame(command, headers, body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_roundtrip(frame: Frame) -> None:
    data = serialize(frame)
    assert parse_frames(data, commands=ALL_COMMANDS) == [frame]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=1, max_size=5), st.data())
def test_roundtrip_stream_split_anywhere(batch: list[Frame], data: st.DataObject) -> None:
    stream = b"\n".join(serialize(f) for f in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser = FrameParser(commands=ALL_COMMANDS)
    got: list[Frame] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got.extend(parser.feed(stream[prev:cut]))
        prev = cut
    assert got == batch


# bytes biased towards STOMP-looking input so the fuzzer reaches deep states
stompish = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b"\n", b"\r\n", b"\x00", b":", b"\\", b"\\c", b"\\x", b"\xff",
                         b"content-length:", b"content-length:5", b"content-length:-3",
                         b"content-length:9999999999999999999999", b"SEND", b"CONNECT",
                         b"MESSAGE", b"destination:/queue/a", b"\n\n"]),
        st.sampled_from(sorted(CLIENT_COMMANDS)).map(str.encode),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), stompish), st.integers(1, 64))
def test_arbitrary_bytes_only_frame_error(data: bytes, chunk: int) -> None:
    parser = FrameParser(max_body=64, max_headers=4, max_header_line=40, commands=ALL_COMMANDS)
    try:
        for i in range(0, len(data), chunk):
            for frame in parser.feed(data[i:i + chunk]):
                assert isinstance(frame, Frame)
                assert len(frame.body) <= 64
                assert len(frame.headers) <= 4
    except FrameError:
        pass
