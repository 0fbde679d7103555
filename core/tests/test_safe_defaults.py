"""Safe by default: bounds on the clock settings, a node's audit file, default deny
without a policy, and log lines that request text cannot forge."""

from __future__ import annotations

import io
import logging
import os
import stat

import pytest

from collective.audit import JsonlAuditSink
from collective.authz import AuthzContext, CallerAllowList, DenyUnconfigured
from collective.config import (
    DEFAULT_AUDIT_FILE,
    MAX_SKEW_BOUND,
    MAX_TTL_BOUND,
    Config,
    ConfigError,
)
from collective.safelog import configure, escape_controls


def server(data):
    return Config({"identity": "n1", **data}, kind="server", env={})


@pytest.mark.parametrize(("key", "value"), [
    ("skew", MAX_SKEW_BOUND + 1), ("max_ttl", MAX_TTL_BOUND + 1), ("ttl", MAX_TTL_BOUND + 1),
    ("skew", 10**9),
])
def test_the_clock_settings_have_upper_bounds(key, value):
    with pytest.raises(ConfigError) as exc:
        server({"security": {key: value}})
    assert f"security.{key}" in str(exc.value) or key in str(exc.value)
    server({"security": {key: MAX_SKEW_BOUND if key == "skew" else MAX_TTL_BOUND}})


def test_a_node_writes_an_audit_file_unless_told_not_to():
    assert server({})["audit"]["file"] == DEFAULT_AUDIT_FILE
    assert server({"audit": {"file": None}})["audit"]["file"] is None
    assert server({"audit": {"sinks": ["jsonl"]}})["audit"]["file"] == DEFAULT_AUDIT_FILE


def test_the_audit_directory_is_created_private(tmp_path):
    path = tmp_path / "var" / "log" / "collective" / "audit.jsonl"
    sink = JsonlAuditSink(server({"audit": {"file": str(path)}}))
    sink.write({"decision": "allow"})
    sink.close()
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def context(caller):
    return AuthzContext(caller=caller, agent="service", action="restart", data={}, facts={},
                        classes=(), identity="n1")


def test_without_a_provider_everything_is_denied_and_the_reason_says_how_to_allow():
    decision = DenyUnconfigured().authorize(context("cert=admin"))
    assert not decision.allowed
    assert "authorization.provider" in decision.reason
    assert "allow_unconfigured" in decision.reason


def test_the_callers_provider_allows_exactly_its_callers():
    authz = CallerAllowList(server({"authorization": {"provider": "callers",
                                                      "callers": ["cert=admin"]}}))
    assert authz.authorize(context("cert=admin")).allowed
    for other in ("cert=admin2", "cert=Admin", "cert=adm", "admin", ""):
        assert not authz.authorize(context(other)).allowed


def test_the_authorization_section_is_checked():
    with pytest.raises(ConfigError):
        server({"authorization": {"allow_unconfigured": "yes please"}})
    with pytest.raises(ConfigError):
        server({"authorization": {"callers": "cert=admin"}})


@pytest.mark.parametrize(("raw", "escaped"), [
    ("a\nb", "a\\nb"), ("a\r\nb", "a\\r\\nb"), ("\x1b[31mred", "\\x1b[31mred"),
    ("\x00\x07\x7f\x9b", "\\x00\\x07\\x7f\\x9b"), ("a\u202eb", "a\\u202eb"),
    ("a\u2028b", "a\\u2028b"), ("plain: café ✓", "plain: café ✓"),
])
def test_controls_are_escaped(raw, escaped):
    assert escape_controls(raw) == escaped


def test_a_log_line_cannot_be_forged_by_request_text():
    buf = io.StringIO()
    handler = configure("INFO", stream=buf, fmt="%(levelname)s %(message)s")
    try:
        logging.getLogger("collective.test").info(
            "refused message from %s", "cert=x\nINFO allowed cert=root \x1b[2J")
        try:
            raise ValueError("bad\x1b[31m value\nINFO forged")
        except ValueError:
            logging.getLogger("collective.test").exception("failed for %s", "a\nb")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "INFO refused message from cert=x\\nINFO allowed cert=root \\x1b[2J"
    assert lines[1] == "ERROR failed for a\\nb"
    assert "\x1b" not in buf.getvalue()
    assert not any(line.startswith(("INFO allowed", "INFO forged")) for line in lines)
    assert lines[-1] == "ValueError: bad\\x1b[31m value\\nINFO forged"
