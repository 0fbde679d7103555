"""Audit: JSON lines, file mode 0600, append, rotation, failure reporting (docs/security.md S16, S17)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from collective.audit import (
    AuditLog,
    JsonlAuditSink,
    SyslogAuditSink,
    audit_record,
    canonical_json,
    data_sha256,
    parse_syslog_address,
)
from collective.config import Config, ConfigError


def make_config(path):
    audit = {"file": str(path)} if path is not None else {}
    return Config({"identity": "n1", "audit": audit}, kind="server", env={})


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def sample(**over):
    fields = dict(request_id="r1", caller="cert=alice", agent="service", action="restart",
                  node="n1", decision="allow", reason="authorized", statuscode=None,
                  data={"service": "nginx", "password": "hunter2"}, collective="mcollective",
                  sender="client-1", time=0.0)
    fields.update(over)
    return audit_record(**fields)


# -- records ----------------------------------------------------------------------

def test_audit_record_fields():
    rec = sample()
    assert rec == {
        "time": "1970-01-01T00:00:00.000Z",
        "request_id": "r1", "caller": "cert=alice", "agent": "service", "action": "restart",
        "node": "n1", "decision": "allow", "reason": "authorized", "statuscode": None,
        "data_sha256": hashlib.sha256(
            b'{"password":"hunter2","service":"nginx"}').hexdigest(),
        "collective": "mcollective", "sender": "client-1",
    }
    assert "hunter2" not in json.dumps(rec)


def test_audit_record_time_now_is_iso_utc_ms():
    rec = audit_record(decision="refused", reason="replayed")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
    assert rec["data_sha256"] is None and rec["request_id"] is None


def test_audit_record_epoch_ms():
    assert sample(time=1714564800.1234)["time"] == "2024-05-01T12:00:00.123Z"


def test_audit_record_extra_fields_and_bad_decision():
    assert sample(key_fingerprint="SHA256:x")["key_fingerprint"] == "SHA256:x"
    with pytest.raises(ValueError, match="allow, deny, refused"):
        sample(decision="maybe")


def test_data_hash_is_canonical():
    assert data_sha256({"b": 1, "a": "é"}) == data_sha256({"a": "é", "b": 1})
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


# -- the jsonl sink ---------------------------------------------------------------

def test_writes_one_sorted_compact_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = JsonlAuditSink(make_config(path))
    rec = sample(reason="line\nbreak")
    sink.write(rec)
    sink.close()
    text = path.read_text()
    assert text.count("\n") == 1 and text.endswith("\n")
    chained = {**rec, "prev_sha256": "0" * 64}  # the first line of a chain
    assert text == json.dumps(chained, sort_keys=True, separators=(",", ":")) + "\n"
    assert lines(path) == [chained]


def test_mode_0600_under_umask_0(tmp_path):
    path = tmp_path / "audit.jsonl"
    old = os.umask(0)
    try:
        sink = JsonlAuditSink(make_config(path))
        sink.write(sample())
    finally:
        os.umask(old)
    sink.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_existing_loose_file_is_tightened(tmp_path, caplog):
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="collective.audit"):
        JsonlAuditSink(make_config(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "had mode 644" in caplog.text


def test_appends_to_existing_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old":1}\n')
    os.chmod(path, 0o600)
    sink = JsonlAuditSink(make_config(path))
    sink.write(sample(request_id="r2"))
    sink.close()
    sink = JsonlAuditSink(make_config(path))
    sink.write(sample(request_id="r3"))
    sink.close()
    assert [r.get("request_id", "old") for r in lines(path)] == ["old", "r2", "r3"]


def test_appends_even_when_another_writer_appends(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = JsonlAuditSink(make_config(path))
    sink.write(sample(request_id="a"))
    with open(path, "a") as other:
        other.write('{"request_id":"b"}\n')
    sink.write(sample(request_id="c"))
    sink.close()
    assert [r["request_id"] for r in lines(path)] == ["a", "b", "c"]


def test_reopen_after_rename(tmp_path):
    path = tmp_path / "audit.jsonl"
    rotated = tmp_path / "audit.jsonl.1"
    sink = JsonlAuditSink(make_config(path))
    sink.write(sample(request_id="before"))
    os.rename(path, rotated)
    sink.write(sample(request_id="still-old"))  # the open descriptor follows the rename
    sink.reopen()
    sink.write(sample(request_id="after"))
    sink.close()
    assert [r["request_id"] for r in lines(rotated)] == ["before", "still-old"]
    assert [r["request_id"] for r in lines(path)] == ["after"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_reopen_while_a_write_holds_the_lock_is_deferred(tmp_path):
    path = tmp_path / "audit.jsonl"
    rotated = tmp_path / "audit.jsonl.1"
    sink = JsonlAuditSink(make_config(path))
    sink.write(sample(request_id="before"))
    os.rename(path, rotated)
    with sink._lock:  # a writer is busy (for example a signal arrived mid-write)
        sink.reopen()  # must not block
    sink.write(sample(request_id="after"))
    sink.close()
    assert [r["request_id"] for r in lines(path)] == ["after"]


def test_no_file_is_a_no_op(tmp_path):
    sink = JsonlAuditSink(make_config(None))
    sink.write(sample())
    sink.reopen()
    sink.close()
    assert list(tmp_path.iterdir()) == []


def test_unwritable_path_raises_and_recovers(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the audit directory should be\n")
    path = blocker / "audit.jsonl"
    with caplog.at_level(logging.ERROR, logger="collective.audit"):
        sink = JsonlAuditSink(make_config(path))  # does not stop the daemon from starting
    assert "cannot open audit file" in caplog.text
    with pytest.raises(OSError):
        sink.write(sample())
    blocker.unlink()  # the directory is created on the next write
    sink.write(sample(request_id="later"))  # retried on the next write
    sink.close()
    assert [r["request_id"] for r in lines(path)] == ["later"]


def test_directory_path_raises(tmp_path):
    sink = JsonlAuditSink(make_config(tmp_path))
    with pytest.raises(OSError):
        sink.write(sample())


def test_write_after_close_raises(tmp_path):
    sink = JsonlAuditSink(make_config(tmp_path / "audit.jsonl"))
    sink.close()
    with pytest.raises(OSError, match="closed"):
        sink.write(sample())


def test_thread_safe(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = JsonlAuditSink(make_config(path))
    big = "x" * 5000

    def work(n):
        for i in range(50):
            sink.write(sample(request_id=f"{n}-{i}", reason=big))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    ids = [r["request_id"] for r in lines(path)]
    assert sorted(ids) == sorted(f"{n}-{i}" for n in range(8) for i in range(50))


# -- the fan-out ------------------------------------------------------------------

class Memory:
    name = "memory"

    def __init__(self):
        self.records = []
        self.reopened = self.closed = 0

    def write(self, record):
        self.records.append(record)

    def reopen(self):
        self.reopened += 1

    def close(self):
        self.closed += 1


class Failing(Memory):
    name = "failing"

    def write(self, record):
        raise OSError(28, "No space left on device")

    def reopen(self):
        raise RuntimeError("cannot reopen")


def test_audit_log_fans_out():
    a, b = Memory(), Memory()
    log = AuditLog([a, b], fail_closed=True)
    assert log.fail_closed is True
    assert log.record(sample()) is True
    assert log.record(**sample(request_id="kw")) is True
    assert [r["request_id"] for r in a.records] == ["r1", "kw"] == [r["request_id"] for r in b.records]
    log.reopen()
    log.close()
    assert a.reopened == b.closed == 1


def test_audit_log_reports_failure_and_still_writes_others(caplog):
    good = Memory()
    log = AuditLog([Failing(), good], fail_closed=False)
    with caplog.at_level(logging.ERROR, logger="collective.audit"):
        assert log.record(sample()) is False
    assert len(good.records) == 1
    assert "audit sink failing failed to write" in caplog.text
    log.reopen()  # a failing reopen is logged, not raised
    assert "failed to reopen" in caplog.text


def test_audit_log_with_unwritable_jsonl_sink(tmp_path):
    (tmp_path / "file").write_text("")
    sink = JsonlAuditSink(make_config(tmp_path / "file" / "audit.jsonl"))
    log = AuditLog([sink], fail_closed=True)
    assert log.record(sample()) is False
    assert log.failures == 1


def test_failure_logging_is_rate_limited(caplog):
    now = [0.0]
    log = AuditLog([Failing()], clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="collective.audit"):
        for _ in range(10):
            log.record(sample())
        now[0] = 61.0
        log.record(sample())
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "9 more failures not logged" in messages[1]
    assert log.failures == 11


def test_empty_audit_log_succeeds():
    assert AuditLog([], fail_closed=True).record(sample()) is True


# -- the syslog sink (real sockets) -----------------------------------------------

def syslog_config(address, **audit):
    return Config({"identity": "n1", "audit": {"sinks": ["syslog"], "syslog_address": address,
                                               **audit}}, kind="server", env={})


@pytest.fixture
def udp_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to about 100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="cl-audit-") as name:
        yield Path(name)


def unix_listener(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    return sock


def parse_syslog(datagram):
    match = re.fullmatch(rb"<(\d+)>collective-audit: (\{.*\})", datagram)
    assert match, datagram
    return int(match[1]), match[2].decode()


def test_syslog_sink_sends_the_jsonl_line_with_prefix_facility_and_priority(udp_listener, tmp_path):
    port = udp_listener.getsockname()[1]
    sink = SyslogAuditSink(syslog_config(f"127.0.0.1:{port}", syslog_facility="local3"))
    allow, deny = sample(), sample(decision="deny", reason="policy", statuscode=1)
    sink.write(allow)
    sink.write(deny)
    sink.close()
    expected = [json.dumps(r, sort_keys=True, separators=(",", ":")) for r in (allow, deny)]
    first, second = (parse_syslog(udp_listener.recv(65536)) for _ in range(2))
    local3 = 19
    assert first == (local3 * 8 + 6, expected[0])  # info
    assert second == (local3 * 8 + 4, expected[1])  # warning
    assert json.loads(first[1]) == allow


def test_syslog_default_facility_is_authpriv(udp_listener):
    port = udp_listener.getsockname()[1]
    sink = SyslogAuditSink(syslog_config(f"127.0.0.1:{port}"))
    sink.write(sample(decision="refused", reason="replayed"))
    sink.close()
    pri, line = parse_syslog(udp_listener.recv(65536))
    assert pri == 10 * 8 + 4 and json.loads(line)["decision"] == "refused"


def test_syslog_sink_over_a_unix_socket_fails_loudly_and_recovers(short_dir, caplog):
    path = short_dir / "log"
    listener = unix_listener(path)
    sink = SyslogAuditSink(syslog_config(str(path)))
    audit = AuditLog([sink], fail_closed=True)
    assert audit.record(sample(request_id="one")) is True
    assert json.loads(parse_syslog(listener.recv(65536))[1])["request_id"] == "one"

    listener.close()  # syslogd went away
    path.unlink()
    with pytest.raises(OSError):
        sink.write(sample(request_id="lost"))
    with caplog.at_level(logging.ERROR, logger="collective.audit"):
        assert audit.record(sample(request_id="lost")) is False  # what fail_closed acts on
    assert "audit sink syslog failed to write" in caplog.text

    listener = unix_listener(path)  # syslogd is back: the next write reconnects
    try:
        assert audit.record(sample(request_id="two")) is True
        assert json.loads(parse_syslog(listener.recv(65536))[1])["request_id"] == "two"
    finally:
        listener.close()
        sink.close()


def test_syslog_sink_without_a_listener_starts_and_raises_on_write(short_dir, caplog):
    with caplog.at_level(logging.ERROR, logger="collective.audit"):
        sink = SyslogAuditSink(syslog_config(str(short_dir / "nosuch")))  # not fatal
    with pytest.raises(OSError):
        sink.write(sample())
    assert AuditLog([sink], fail_closed=True).record(sample()) is False


def test_syslog_reopen_recreates_the_handler(udp_listener):
    port = udp_listener.getsockname()[1]
    sink = SyslogAuditSink(syslog_config(f"127.0.0.1:{port}"))
    old = sink._handler
    sink.reopen()
    assert sink._handler is not None and sink._handler is not old
    with sink._lock:  # a writer is busy: reopen is deferred, never blocks
        sink.reopen()
        deferred = sink._handler
    sink.write(sample(request_id="after"))
    assert sink._handler is not deferred
    assert json.loads(parse_syslog(udp_listener.recv(65536))[1])["request_id"] == "after"
    sink.close()
    with pytest.raises(OSError, match="closed"):
        sink.write(sample())


def test_syslog_address_forms():
    assert parse_syslog_address("/dev/log") == "/dev/log"
    assert parse_syslog_address("logs.example.com:514") == ("logs.example.com", 514)
    assert parse_syslog_address("[::1]:5514") == ("::1", 5514)
    for bad in ("dev/log", "host", "host:0", "host:port", ":514", "host:70000"):
        with pytest.raises(ValueError, match="audit.syslog_address"):
            parse_syslog_address(bad)


def test_syslog_config_keys_are_validated_and_the_sink_is_built_in():
    from collective.plugins import get_plugin_manager

    with pytest.raises(ConfigError, match="audit.syslog_facility"):
        syslog_config("/dev/log", syslog_facility="nosuch")
    defaults = Config({"identity": "n1"}, kind="server", env={})
    assert defaults.get("audit.syslog_address") == "/dev/log"
    assert defaults.get("audit.syslog_facility") == "authpriv"
    assert get_plugin_manager(load_entrypoints=False).audit_sinks()["syslog"] is SyslogAuditSink
