"""Log lines that cannot be forged: request text never brings its own newline or
terminal control characters into a log.

:class:`SafeFormatter` escapes, in the message of every record (not in tracebacks),
C0 and C1 control characters (newline, carriage return, ESC, ...), DEL and the Unicode
bidi and line/paragraph separators, as ``\\n``, ``\\x1b`` or ``\\u202e``. A caller who
puts ``"x\\nINFO ... allowed"`` into an identity, a filter or a status message thus
shows up as one line that says what it is.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

__all__ = ["SafeFormatter", "escape_controls"]

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control, bidi or line-separator character escaped."""
    return _UNSAFE.sub(_escape, text)


class SafeFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose messages are one line of printable text.

    A traceback keeps its own line breaks; the exception's message is escaped like a
    record's message.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        parts = []
        for chunk in traceback.TracebackException(*ei).format():
            if chunk.startswith(("Traceback", "  ", "\n")):  # the traceback's own lines
                parts.append("\n".join(escape_controls(line) for line in chunk.split("\n")))
            else:  # "ValueError: <message>": the message may be request text
                parts.append(escape_controls(chunk.rstrip("\n")) + "\n")
        return "".join(parts).rstrip("\n")


def configure(level: str | int = "WARNING", stream: object = None, path: str | None = None,
              fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> logging.Handler:
    """Send the root logger's records to ``path`` (or ``stream``, default stderr) through a
    :class:`SafeFormatter`; returns the handler."""
    handler: logging.Handler = (logging.FileHandler(path) if path
                                else logging.StreamHandler(stream))  # type: ignore[arg-type]
    handler.setFormatter(SafeFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
