"""STOMP 1.2 frames: an incremental parser and a serializer. Pure, no I/O.

The parser is fed raw bytes as they arrive (:meth:`FrameParser.feed`) and returns
every complete frame. Anything malformed raises :class:`FrameError` (and only
that); the parser is then poisoned and raises the same error on every later
call, since the byte stream can no longer be trusted.

Rules implemented (STOMP 1.2):

- EOL is ``\\n`` or ``\\r\\n``; EOLs between frames are heart-beats and skipped.
- Header escaping ``\\n \\c \\\\ \\r`` except in CONNECT / CONNECTED frames; an
  undefined escape is a fatal error. The first occurrence of a repeated header wins.
- ``content-length`` gives the body size (the body may contain NUL and must be
  followed by NUL); without it the body ends at the first NUL.
- Limits: command length, number of headers, bytes per header line, body size
  (checked before the bytes are buffered, so memory per connection is bounded).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

__all__ = [
    "CLIENT_COMMANDS",
    "SERVER_COMMANDS",
    "ALL_COMMANDS",
    "Frame",
    "FrameError",
    "FrameParser",
    "escape_header",
    "unescape_header",
    "serialize",
    "encode_frame",
    "parse_frames",
]

CLIENT_COMMANDS = frozenset({
    "CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK",
    "BEGIN", "COMMIT", "ABORT", "DISCONNECT",
})
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
ALL_COMMANDS = CLIENT_COMMANDS | SERVER_COMMANDS
#: Frames whose headers are not escaped (STOMP 1.2 §"Value Encoding").
UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED"})

DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_MAX_HEADERS = 64
DEFAULT_MAX_HEADER_LINE = 8 * 1024
DEFAULT_MAX_COMMAND = 32


class FrameError(Exception):
    """A malformed or over-limit frame. ``message`` is a short reason suitable for the
    ``message`` header of an ERROR frame."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message if not detail else f"{message}: {detail}")
        self.message = message
        self.detail = detail
        #: complete frames that preceded the error in the same ``feed`` call
        self.frames: list[Frame] = []


@dataclass(slots=True)
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


_ESCAPE_TABLE = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})
_UNESCAPE_RE = re.compile(r"\\(.?)", re.S)
_UNESCAPE_MAP = {"n": "\n", "c": ":", "\\": "\\", "r": "\r"}


def escape_header(text: str) -> str:
    """Escape a header name or value for any frame except CONNECT/CONNECTED."""
    return text.translate(_ESCAPE_TABLE)


def _unescape_sub(match: re.Match[str]) -> str:
    try:
        return _UNESCAPE_MAP[match.group(1)]
    except KeyError:
        raise FrameError("invalid escape sequence in header", repr(match.group(0))) from None


def unescape_header(text: str) -> str:
    """Undo :func:`escape_header`; raises :class:`FrameError` on undefined escapes."""
    if "\\" not in text:
        return text
    return _UNESCAPE_RE.sub(_unescape_sub, text)


def _check_raw_header(name: str, value: str, command: str) -> None:
    if not name:
        raise ValueError("empty header name")
    if "\0" in name or "\0" in value:
        raise ValueError("NUL in header")
    if command in UNESCAPED_COMMANDS:
        if ":" in name or any(c in name or c in value for c in "\r\n"):
            raise ValueError(f"header {name!r} cannot be represented in a {command} frame")


def encode_frame(command: str, headers: Iterable[tuple[str, str]] | Mapping[str, str],
                 body: bytes = b"") -> bytes:
    """Serialize a frame from parts, writing headers exactly as given (in order).

    Raises :class:`ValueError` for headers that cannot be represented (NUL, or
    newline/colon in CONNECT/CONNECTED frames)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    escape = command not in UNESCAPED_COMMANDS
    parts = [command]
    for name, value in items:
        name = str(name)
        value = str(value)
        _check_raw_header(name, value, command)
        if escape:
            parts.append(f"{name.translate(_ESCAPE_TABLE)}:{value.translate(_ESCAPE_TABLE)}")
        else:
            parts.append(f"{name}:{value}")
    parts.append("")
    parts.append("")
    return "\n".join(parts).encode("utf-8") + bytes(body) + b"\0"


def serialize(frame: Frame, *, content_length: bool = False) -> bytes:
    """Serialize ``frame``. With ``content_length=True`` a ``content-length`` header
    matching the body is set (replacing any given one); otherwise headers are written
    as they are, and a body containing NUL without ``content-length`` is refused."""
    headers = frame.headers
    if content_length:
        headers = {k: v for k, v in headers.items() if k != "content-length"}
        headers["content-length"] = str(len(frame.body))
    elif b"\0" in frame.body and "content-length" not in headers:
        raise ValueError("body contains NUL but the frame has no content-length")
    return encode_frame(frame.command, headers, frame.body)


_HEAD, _HEADERS, _BODY = 0, 1, 2


class FrameParser:
    """Incremental STOMP frame parser.

    ``feed(data)`` returns the list of complete frames found so far. ``commands`` is
    the set of acceptable commands (client commands for a broker, server commands
    for a client, :data:`ALL_COMMANDS` for tests)."""

    __slots__ = (
        "max_body", "max_headers", "max_header_line", "max_command", "commands",
        "_buf", "_state", "_scan", "_lines", "_command", "_headers", "_clen",
        "_body_start", "_error", "heartbeats", "bytes_in",
    )

    def __init__(self, *, max_body: int = DEFAULT_MAX_BODY, max_headers: int = DEFAULT_MAX_HEADERS,
                 max_header_line: int = DEFAULT_MAX_HEADER_LINE,
                 max_command: int = DEFAULT_MAX_COMMAND,
                 commands: frozenset[str] | set[str] = CLIENT_COMMANDS) -> None:
        self.max_body = max_body
        self.max_headers = max_headers
        self.max_header_line = max_header_line
        self.max_command = max_command
        self.commands = frozenset(commands)
        self._buf = bytearray()
        self._state = _HEAD
        self._scan = 0             # where the next search starts (relative to _buf)
        self._lines: list[bytes] = []
        self._command = ""
        self._headers: dict[str, str] = {}
        self._clen: int | None = None
        self._body_start = 0
        self._error: FrameError | None = None
        #: number of heart-beat EOLs seen between frames
        self.heartbeats = 0
        self.bytes_in = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        self.bytes_in += len(data)
        self._buf += data
        frames: list[Frame] = []
        try:
            self._run(frames)
        except FrameError as exc:
            exc.frames = frames
            self._error = FrameError(exc.message, exc.detail)
            self._buf = bytearray()
            raise
        return frames

    # -- internals ---------------------------------------------------------------------

    def _fail(self, message: str, detail: str = "") -> NoReturn:
        raise FrameError(message, detail)

    def _run(self, frames: list[Frame]) -> None:
        buf = self._buf
        pos = 0  # start of unconsumed data
        n = len(buf)
        try:
            while True:
                state = self._state
                if state == _HEAD:
                    # skip heart-beat EOLs between frames
                    while pos < n:
                        c = buf[pos]
                        if c == 10:
                            pos += 1
                            self.heartbeats += 1
                        elif c == 13:
                            if pos + 1 >= n:
                                return
                            if buf[pos + 1] != 10:
                                self._fail("carriage return without line feed")
                            pos += 2
                            self.heartbeats += 1
                        else:
                            break
                    if pos >= n:
                        return
                    self._state = _HEADERS
                    self._scan = pos
                    self._lines = []
                elif state == _HEADERS:
                    if not self._scan_headers(buf, n):
                        return
                    self._state = _BODY
                else:
                    frame = self._scan_body(buf, n)
                    if frame is None:
                        return
                    frames.append(frame)
                    pos = self._scan
                    self._state = _HEAD
        finally:
            # drop consumed bytes; indexes kept in self are relative to the buffer start
            if pos:
                del buf[:pos]
                self._scan -= pos
                if self._state == _BODY:
                    self._body_start -= pos
                if self._scan < 0:
                    self._scan = 0

    def _scan_headers(self, buf: bytearray, n: int) -> bool:
        lines = self._lines
        scan = self._scan
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                pending = n - scan
                if not lines:
                    if pending > self.max_command + 1:
                        self._fail("frame command too long",
                                   f"more than {self.max_command} bytes")
                    partial = bytes(buf[scan:n])
                    if partial.endswith(b"\r"):
                        partial = partial[:-1]
                    if partial and not (partial.isalpha() and partial.isupper()):
                        self._fail("unknown command", repr(partial[:self.max_command]))
                elif pending > self.max_header_line + 1:
                    self._fail("header line too long", f"more than {self.max_header_line} bytes")
                self._scan = scan
                return False
            end = nl
            if end > scan and buf[end - 1] == 13:
                end -= 1
            line = bytes(buf[scan:end])
            scan = nl + 1
            if not lines:
                self._command = self._check_command(line)
                lines.append(line)
                continue
            if not line:
                self._scan = scan
                self._parse_headers()
                return True
            if len(lines) > self.max_headers:
                self._fail("too many headers", f"more than {self.max_headers}")
            if len(line) > self.max_header_line:
                self._fail("header line too long", f"more than {self.max_header_line} bytes")
            lines.append(line)

    def _check_command(self, line: bytes) -> str:
        if len(line) > self.max_command:
            self._fail("frame command too long", f"more than {self.max_command} bytes")
        try:
            command = line.decode("ascii")
        except UnicodeDecodeError:
            self._fail("unknown command", repr(line[:self.max_command]))
        if command not in self.commands:
            self._fail("unknown command", repr(command[:self.max_command]))
        return command

    def _parse_headers(self) -> None:
        command = self._command
        escaped = command not in UNESCAPED_COMMANDS
        headers: dict[str, str] = {}
        for raw in self._lines[1:]:
            if b"\0" in raw:
                self._fail("NUL byte in header")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._fail("non-UTF-8 header", repr(raw[:64]))
            name, sep, value = line.partition(":")
            if not sep:
                self._fail("header without colon", repr(line[:64]))
            if escaped:
                name = unescape_header(name)
                value = unescape_header(value)
            if not name:
                self._fail("empty header name")
            if name not in headers:  # first occurrence wins (STOMP 1.2)
                headers[name] = value
        self._lines = []
        clen: int | None = None
        raw_len = headers.get("content-length")
        if raw_len is not None:
            stripped = raw_len.strip()
            if not stripped.isdigit() or not stripped.isascii() or len(stripped) > 18:
                self._fail("invalid content-length", repr(raw_len[:32]))
            clen = int(stripped)
            if clen > self.max_body:
                self._fail("content-length exceeds maximum body size",
                           f"{clen} > {self.max_body}")
        self._headers = headers
        self._clen = clen
        self._body_start = self._scan

    def _scan_body(self, buf: bytearray, n: int) -> Frame | None:
        start = self._body_start
        clen = self._clen
        if clen is not None:
            end = start + clen
            if n <= end:
                return None
            if buf[end] != 0:
                self._fail("content-length does not match body",
                           "no NUL after content-length bytes")
            body = bytes(buf[start:end])
        else:
            end = buf.find(b"\0", self._scan)
            if end < 0:
                if n - start > self.max_body:
                    self._fail("body exceeds maximum size", f"more than {self.max_body} bytes")
                self._scan = n
                return None
            if end - start > self.max_body:
                self._fail("body exceeds maximum size", f"more than {self.max_body} bytes")
            body = bytes(buf[start:end])
        self._scan = end + 1
        frame = Frame(self._command, self._headers, body)
        self._headers = {}
        self._clen = None
        return frame


def parse_frames(data: bytes, **kwargs: object) -> list[Frame]:
    """Parse a complete byte string; raises :class:`FrameError` on malformed input or
    when ``data`` ends in the middle of a frame."""
    parser = FrameParser(**kwargs)  # type: ignore[arg-type]
    frames = parser.feed(data)
    if parser.buffered:
        raise FrameError("incomplete frame", f"{parser.buffered} bytes left over")
    return frames
