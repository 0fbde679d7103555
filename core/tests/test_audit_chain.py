"""The audit log's hash chain: every line names the hash of the one before it, so
``mco audit verify`` finds an edited, inserted or removed line, across rotations too."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from collective.audit import JsonlAuditSink
from collective.auditchain import GENESIS, line_hash, verify
from collective.cli.main import cli
from collective.config import Config


def sink_for(path):
    return JsonlAuditSink(Config({"identity": "n1", "audit": {"file": str(path)}}, kind="server",
                                 env={}))


def write(path, count, start=0):
    sink = sink_for(path)
    for n in range(start, start + count):
        sink.write({"decision": "allow", "request_id": f"r{n}", "reason": "authorized"})
    sink.close()


def raw_lines(path):
    return path.read_bytes().split(b"\n")[:-1]


def test_each_line_names_the_hash_of_the_line_before(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    lines = raw_lines(path)
    prevs = [json.loads(line)["prev_sha256"] for line in lines]
    assert prevs == [GENESIS, line_hash(lines[0]), line_hash(lines[1])]
    assert verify([path]).ok and verify([path]).lines == 3


def test_a_restarted_daemon_goes_on_with_the_same_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    write(path, 2, start=2)  # a new sink, as after a restart
    lines = raw_lines(path)
    assert json.loads(lines[2])["prev_sha256"] == line_hash(lines[1])
    assert verify([path]).ok


@pytest.mark.parametrize("tamper", ["edit", "insert", "remove", "swap"])
def test_tampering_is_found_at_the_line_after_it(tmp_path, tamper):
    path = tmp_path / "audit.jsonl"
    write(path, 5)
    lines = raw_lines(path)
    if tamper == "edit":
        lines[2] = lines[2].replace(b'"allow"', b'"deny"')
    elif tamper == "insert":
        lines.insert(2, lines[1])
    elif tamper == "remove":
        del lines[2]
    else:
        lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify([path])
    assert not report.ok
    expected = {"edit": 4, "insert": 3, "remove": 3, "swap": 2}[tamper]
    assert report.broken[:2] == (str(path), expected)
    assert "edited, inserted or removed" in report.broken[2]


def test_a_rotated_log_continues_into_the_new_file(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = sink_for(path)
    sink.write({"request_id": "before"})
    os.rename(path, tmp_path / "audit.jsonl.1")
    sink.reopen()  # SIGUSR1 after logrotate moved the file
    sink.write({"request_id": "after"})
    sink.close()
    old, new = tmp_path / "audit.jsonl.1", path
    assert json.loads(raw_lines(new)[0])["prev_sha256"] == line_hash(raw_lines(old)[0])
    assert verify([old, new]).ok
    alone = verify([new])
    assert alone.ok and "continues a chain from an earlier file" in alone.notes[0]
    assert not verify([new, old]).ok  # in the wrong order the link does not hold


def test_lines_written_before_chaining_or_cut_short(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"decision":"allow"}\n')
    assert "not a chained audit record" in verify([path]).broken[2]
    write(path := tmp_path / "cut.jsonl", 2)
    path.write_bytes(path.read_bytes()[:-10])
    report = verify([path])
    assert "has no newline" in report.notes[0]


def test_mco_audit_verify(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 4)
    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", str(path)])
    assert ok.exit_code == 0 and f"{path}: 4 line(s), chain intact" in ok.output
    lines = raw_lines(path)
    lines[1] = lines[1].replace(b"r1", b"r9")
    path.write_bytes(b"\n".join(lines) + b"\n")
    broken = runner.invoke(cli, ["audit", "verify", str(path)])
    assert broken.exit_code == 1
    assert broken.output.startswith(f"{path}:3: chain broken: prev_sha256 does not match")
    missing = runner.invoke(cli, ["audit", "verify", str(tmp_path / "nope")])
    assert missing.exit_code == 2
