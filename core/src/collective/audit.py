"""The audit log: one JSON line per request that reaches authorization (docs/security.md S17).

Records are built with :func:`audit_record` and written by :class:`AuditLog` to
every configured sink (hook ``collective_audit_sinks``, config ``audit.sinks``).
Unlike MCollective, which audited only allowed requests and carried on when the
write failed, denied and refused requests are audited too, and
:meth:`AuditLog.record` reports failure so the daemon can refuse side-effecting
requests when ``audit.fail_closed`` is set.

The request data itself is never written, only ``data_sha256``: the SHA-256 of
its canonical JSON (sorted keys, compact separators, UTF-8), which lets an
operator check a suspected input without the log holding secrets.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .auditchain import GENESIS, last_line_hash, line_hash

__all__ = ["DECISIONS", "AuditLog", "JsonlAuditSink", "SyslogAuditSink", "audit_record",
           "canonical_json", "data_sha256", "parse_syslog_address"]

log = logging.getLogger(__name__)

#: ``allow``: authorized and run; ``deny``: refused by authorization or validation;
#: ``refused``: rejected before authorization (bad signature, replay, expired, oversize).
DECISIONS = ("allow", "deny", "refused")

#: Seconds between two log lines about the same failing sink.
FAILURE_LOG_INTERVAL = 60.0


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes :func:`data_sha256` hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8")


def data_sha256(data: Any) -> str:
    """The hex SHA-256 of ``data``'s canonical JSON."""
    return hashlib.sha256(canonical_json(data)).hexdigest()


def _iso_utc(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def audit_record(*, decision: str, reason: str = "", request_id: str | None = None,
                 caller: str | None = None, agent: str | None = None,
                 action: str | None = None, node: str | None = None,
                 statuscode: int | None = None, data: Any = None,
                 collective: str | None = None, sender: str | None = None,
                 time: float | str | None = None, **extra: Any) -> dict[str, Any]:
    """The standard audit record.

    ``time`` defaults to now and is written as ISO 8601 UTC with milliseconds
    (``2024-05-01T12:00:00.123Z``); an epoch float is converted. ``data`` is the
    request data: only its :func:`data_sha256` is kept (``None`` when there is
    no data). ``extra`` fields (for example a key fingerprint) are added as given.
    """
    if decision not in DECISIONS:
        raise ValueError(f"audit decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    if time is None:
        time = _now()
    stamp = time if isinstance(time, str) else _iso_utc(float(time))
    record: dict[str, Any] = {
        "time": stamp,
        "request_id": request_id,
        "caller": caller,
        "agent": agent,
        "action": action,
        "node": node,
        "decision": decision,
        "reason": reason,
        "statuscode": statuscode,
        "data_sha256": None if data is None else data_sha256(data),
        "collective": collective,
        "sender": sender,
    }
    clash = sorted(set(extra) & set(record))
    if clash:  # pragma: no cover - impossible through keyword arguments
        raise ValueError(f"duplicate audit fields: {clash}")
    record.update(extra)
    return record


def _now() -> float:
    return time.time()


class RateLimit:
    """A token bucket: at most ``rate`` events a second, in bursts of ``burst``.

    Used for audit lines of discovery pings, which anyone with a trusted key may send
    as often as it likes: :meth:`take` says whether this one is written, and how many
    were left out since the last one written (that line records the number).
    """

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Any = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate * 10))
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._skipped = 0
        self._lock = threading.Lock()

    def take(self) -> tuple[bool, int]:
        """``(write it, events left out before it)``; never blocks."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self.rate <= 0 or self._tokens < 1.0:
                self._skipped += 1
                return False, self._skipped
            self._tokens -= 1.0
            skipped, self._skipped = self._skipped, 0
            return True, skipped


class JsonlAuditSink:
    """Appends one JSON line per record to ``audit.file``.

    The file is opened with ``O_WRONLY|O_APPEND|O_CREAT`` and mode ``0600``
    (created that way, so no chmod race; a umask can only remove bits), and an
    existing file we own that is group- or world-accessible is tightened to
    0600 with a warning. Each line is written with unbuffered ``os.write``, so
    it has reached the kernel when :meth:`write` returns.

    Each line carries ``prev_sha256``, the hash of the line before it
    (:mod:`collective.auditchain`), so an edited, inserted or removed line is found
    by ``mco audit verify``; the chain goes on from the last line of an existing file,
    and across a reopen into a new, empty file (log rotation). One writer per file.

    A node writes ``/var/log/collective/audit.jsonl`` unless ``audit.file`` says
    otherwise; with ``audit.file: null`` the sink writes nothing (``write`` is a
    no-op that succeeds, and a warning says so at start).

    A file that cannot be opened at start is logged, not fatal: the daemon must
    still answer ``rpcutil ping``. Every :meth:`write` then retries the open and
    raises :class:`OSError` while it fails.
    """

    name = "jsonl"

    def __init__(self, config: Any) -> None:
        path = config.get("audit.file") if config is not None else None
        self.path: str | None = os.fspath(path) if path else None
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._closed = False
        self._reopen_wanted = False
        #: the hash the next line is chained to (None until a file was opened)
        self._prev: str | None = None
        if self.path is None:
            log.warning("audit.file is null: the jsonl audit sink writes no audit log")
            return
        try:
            self._open()
        except OSError as exc:
            log.error("cannot open audit file %s: %s", self.path, exc.strerror or exc)

    # -- file handling -------------------------------------------------------------
    def _open(self) -> None:
        assert self.path is not None
        parent = os.path.dirname(self.path)
        if parent and not os.path.isdir(parent):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        # read-write, to find the hash of the last line the chain goes on from
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                log.warning("audit file %s had mode %o; setting 0600", self.path,
                            st.st_mode & 0o777)
                os.fchmod(fd, 0o600)
            tail = last_line_hash(fd)
        except OSError:
            os.close(fd)
            raise
        if tail is not None:
            self._prev = tail
        elif self._prev is None:
            self._prev = GENESIS
        self._fd = fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:  # pragma: no cover - close rarely fails
                log.warning("closing audit file %s: %s", self.path, exc)

    # -- sink API --------------------------------------------------------------------
    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line; raise :class:`OSError` if it cannot be written."""
        if self.path is None:
            return
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "audit sink is closed", self.path)
            if self._reopen_wanted:
                self._reopen_wanted = False
                self._close_fd()
            if self._fd is None:
                self._open()
            assert self._fd is not None and self._prev is not None
            body = _json_line({**record, "prev_sha256": self._prev}).encode("utf-8")
            line = body + b"\n"
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                if written <= 0:  # pragma: no cover - defensive
                    raise OSError(errno.EIO, "short write to audit file", self.path)
                view = view[written:]
            self._prev = line_hash(body)

    def reopen(self) -> None:
        """Close and reopen the path (log rotation: SIGHUP or SIGUSR1).

        Safe to call from a signal handler: if a write holds the lock, the
        reopen happens at the start of the next write instead of blocking.
        """
        if self.path is None:
            return
        self._reopen_wanted = True
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._closed = False
            self._reopen_wanted = False
            self._close_fd()
            try:
                self._open()
            except OSError as exc:
                log.error("cannot reopen audit file %s: %s", self.path, exc.strerror or exc)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close_fd()


def _json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(dict(record), sort_keys=True, separators=(",", ":"), default=str)


def parse_syslog_address(text: str) -> str | tuple[str, int]:
    """``/dev/log`` (a unix socket path) or ``host:port`` (UDP; ``[::1]:514`` for IPv6)."""
    if text.startswith("/"):
        return text
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"audit.syslog_address {text!r}: expected a unix socket path such as "
                         "/dev/log, or host:port for UDP")
    return host, int(port)


def _reraise(record: logging.LogRecord) -> None:
    """``SysLogHandler.handleError`` replacement: the sink reports failures, it does not
    print them to stderr, so ``fail_closed`` can act on them."""
    exc = sys.exc_info()[1]
    if isinstance(exc, OSError):
        raise exc
    raise OSError(errno.EIO, f"syslog write failed: {exc}") from exc


class SyslogAuditSink:
    """Sends one syslog message per record through :class:`logging.handlers.SysLogHandler`.

    The message is ``collective-audit: `` followed by the same JSON line the jsonl
    sink writes, at priority ``info`` for ``allow`` and ``warning`` for ``deny``
    and ``refused``, with facility ``audit.syslog_facility`` (default ``authpriv``,
    which stock syslog configurations keep in a root-only file). The address is
    ``audit.syslog_address``: a unix socket path (default ``/dev/log``) or
    ``host:port`` for UDP.

    :meth:`write` raises :class:`OSError` when the message cannot be sent (no
    syslog listening on the socket, an unresolvable host, a message too large),
    so ``audit.fail_closed`` works with this sink too. UDP to a live address
    cannot report a lost datagram. A handler that cannot be created at start is
    logged, not fatal, and every write retries. :meth:`reopen` re-creates the
    handler (a restarted syslogd gets a fresh connection).
    """

    name = "syslog"
    #: What each message starts with (the syslog tag).
    PREFIX = "collective-audit: "

    def __init__(self, config: Any) -> None:
        get = config.get if config is not None else (lambda key, default=None: default)
        self.address = parse_syslog_address(str(get("audit.syslog_address") or "/dev/log"))
        self.facility = str(get("audit.syslog_facility") or "authpriv")
        from logging.handlers import SysLogHandler

        if self.facility not in SysLogHandler.facility_names:
            raise ValueError(f"audit.syslog_facility {self.facility!r}: expected one of "
                             f"{', '.join(sorted(SysLogHandler.facility_names))}")
        self._lock = threading.Lock()
        self._handler: Any = None
        self._closed = False
        self._reopen_wanted = False
        try:
            self._handler = self._make_handler()
        except OSError as exc:
            log.error("cannot open syslog audit sink %s: %s", self._where, exc.strerror or exc)

    @property
    def _where(self) -> str:
        address = self.address
        return address if isinstance(address, str) else f"{address[0]}:{address[1]} (udp)"

    def _make_handler(self) -> Any:
        from logging.handlers import SysLogHandler

        handler = SysLogHandler(address=self.address, facility=self.facility)
        handler.ident = self.PREFIX
        handler.append_nul = False
        handler.handleError = _reraise  # type: ignore[method-assign]
        return handler

    def _drop_handler(self) -> None:
        handler, self._handler = self._handler, None
        if handler is not None:
            try:
                handler.close()
            except OSError as exc:  # pragma: no cover - close rarely fails
                log.warning("closing syslog audit sink %s: %s", self._where, exc)

    # -- sink API --------------------------------------------------------------------
    def write(self, record: Mapping[str, Any]) -> None:
        """Send ``record``; raise :class:`OSError` if it cannot be sent."""
        level = logging.INFO if record.get("decision") == "allow" else logging.WARNING
        entry = logging.LogRecord("collective.audit", level, __file__, 0, _json_line(record),
                                  None, None)
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "audit sink is closed", self._where)
            if self._reopen_wanted:
                self._reopen_wanted = False
                self._drop_handler()
            if self._handler is None:
                self._handler = self._make_handler()
            self._handler.emit(entry)

    def reopen(self) -> None:
        """Re-create the handler (SIGHUP or SIGUSR1); deferred to the next write when a
        write holds the lock, as in :meth:`JsonlAuditSink.reopen`."""
        self._reopen_wanted = True
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._closed = False
            self._reopen_wanted = False
            self._drop_handler()
            try:
                self._handler = self._make_handler()
            except OSError as exc:
                log.error("cannot reopen syslog audit sink %s: %s", self._where,
                          exc.strerror or exc)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_handler()


class AuditLog:
    """Fans records out to ``sinks``; :meth:`record` says whether all of them wrote.

    ``fail_closed`` is only carried here for the daemon, which refuses
    side-effecting requests when it is set and :meth:`record` returns False.
    Sink failures are logged at most once per :data:`FAILURE_LOG_INTERVAL`
    seconds per sink, with a count of the failures not logged.
    """

    def __init__(self, sinks: Sequence[Any], fail_closed: bool = False,
                 clock: Any = time.monotonic) -> None:
        self.sinks = list(sinks)
        self.fail_closed = bool(fail_closed)
        self.clock = clock
        self.failures = 0
        self._lock = threading.Lock()
        self._last_logged: dict[int, float] = {}
        self._suppressed: dict[int, int] = {}

    def record(self, record: Mapping[str, Any] | None = None, /, **fields: Any) -> bool:
        """Write one record (a mapping, keyword fields, or both) to every sink.

        Returns False if any sink raised; the others are still written.
        """
        rec = {**(record or {}), **fields}
        ok = True
        for sink in self.sinks:
            try:
                sink.write(rec)
            except Exception as exc:
                ok = False
                self._failed(sink, exc)
        return ok

    def _failed(self, sink: Any, exc: Exception) -> None:
        key = id(sink)
        now = self.clock()
        with self._lock:
            self.failures += 1
            last = self._last_logged.get(key)
            if last is not None and now - last < FAILURE_LOG_INTERVAL:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last_logged[key] = now
            suppressed = self._suppressed.pop(key, 0)
        more = f" ({suppressed} more failures not logged)" if suppressed else ""
        name = getattr(sink, "name", type(sink).__name__)
        log.error("audit sink %s failed to write: %s%s", name, exc, more)

    def reopen(self) -> None:
        for sink in self.sinks:
            try:
                sink.reopen()
            except Exception as exc:
                log.error("audit sink %s failed to reopen: %s",
                          getattr(sink, "name", type(sink).__name__), exc)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.error("audit sink %s failed to close: %s",
                          getattr(sink, "name", type(sink).__name__), exc)
