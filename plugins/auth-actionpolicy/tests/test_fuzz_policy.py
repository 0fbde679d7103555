"""Fuzzing policy and groups files: valid lines with fields swapped, separators changed and
pieces inserted. Properties: parsing raises only PolicyError (with a line and a column);
what parses is evaluated for any caller in bounded time, returning a Verdict. Bounded: a
few hundred examples and a deadline per example."""

from __future__ import annotations

import time
from datetime import timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collective_auth_actionpolicy.parser import PolicyError, parse_groups, parse_policy
from collective_auth_actionpolicy.policy import Request, Verdict, evaluate_policy

FUZZ = settings(max_examples=400, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow])

_LINES = [
    "policy default deny", "policy default allow",
    "allow\tcert=admin\t*\t*\t*",
    "allow\tcert=acme-devs /^cert=ops-/\tenable disable status\tcustomer=acme\t*",
    "deny\t*\trestart\tenvironment=production and not fstat('/etc/maint').present=true",
    "allow\tdevs\tstatus\t*\trole::web /^role::/",
    "allow\t/^cert=a/\t*\tcpus>=4 os.family=debian\t*",
    "deny\t*\t*\t(role=db or role=cache) and !location=us",
    "# a comment", "", "   ",
]
_PIECES = ["\t", "\t\t", " ", "*", "cert=a", "devs", "/", "/(a|a)*$/", "/(a+)+/", "/^c/",
           "/(?=x)/", "(", ")", " and ", " or ", "not ", "!", "=", "=~", ">=", "fstat('/x')",
           ".size>0", "#", "\r", "\x00", "é", "policy", " default ", "allow", "deny", "\n"]
_CALLERS = st.sampled_from(["cert=admin", "cert=acme-devs", "cert=ops-1", "cert=" + "a" * 128,
                            "cert=" + "a" * 60 + "-", "choria=x"]) | st.from_regex(
    r"[a-z0-9]{1,6}=[A-Za-z0-9._@-]{1,128}", fullmatch=True)


@st.composite
def mutated_policies(draw: st.DrawFn) -> str:
    lines = draw(st.lists(st.sampled_from(_LINES), min_size=1, max_size=6))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(lines) - 1))
        fields = lines[i].split("\t")
        kind = draw(st.sampled_from(["field", "insert", "sep", "drop"]))
        if kind == "field":
            fields[draw(st.integers(0, len(fields) - 1))] = draw(
                st.sampled_from(_PIECES) | st.text(max_size=6))
        elif kind == "insert":
            at = draw(st.integers(0, len(fields) - 1))
            fields[at] += draw(st.sampled_from(_PIECES))
        elif kind == "sep":
            lines[i] = draw(st.sampled_from([" ", "\t\t", "  "])).join(fields)
            continue
        elif len(fields) > 1:
            del fields[draw(st.integers(0, len(fields) - 1))]
        lines[i] = "\t".join(fields)
    return "\n".join(lines) + draw(st.sampled_from(["", "\n", "\r\n"]))


@FUZZ
@given(mutated_policies(), _CALLERS, st.sampled_from(["status", "restart", "enable", "x"]))
@example("allow\t/(a|a)*$/\t*\t*\t*\n", "cert=" + "a" * 60 + "-", "status")
@example("allow\t/(a+)+$/\t*\t*\t*\n", "cert=" + "a" * 60 + "-", "status")
@example("allow\t/(?=a)/\t*\t*\t*\n", "cert=a", "status")
def test_policy_parse_raises_only_policy_error_and_evaluates_in_bounded_time(text, caller, action):
    try:
        policy = parse_policy(text, "fuzz.policy")
    except PolicyError as exc:
        assert exc.line >= 1 and exc.column >= 1 and str(exc).startswith("fuzz.policy:")
        return
    groups = parse_groups("devs cert=acme-devs cert=ops-1\n", "groups")
    request = Request(caller=caller, action=action, identity="web-01",
                      facts={"customer": "acme", "cpus": 8, "os": {"family": "debian"},
                             "environment": "production", "role": "web"},
                      classes=["role::web", "base"],
                      data_resolver=lambda name, arg: {"present": False, "size": 0})
    started = time.monotonic()
    verdict = evaluate_policy(policy, request, groups, allow_unconfigured=False, trace=True)
    assert time.monotonic() - started < 1.0  # generous: linear-time regexes only
    assert isinstance(verdict, Verdict) and isinstance(verdict.allowed, bool)


@FUZZ
@given(st.lists(st.sampled_from(["devs", "cert=a", " ", "\t", "#", "é", "\x00", "\r", "a.b-c",
                                 "/", "=", "\n"]), max_size=30).map("".join))
def test_groups_parse_raises_only_policy_error(text):
    try:
        groups = parse_groups(text, "groups")
    except PolicyError as exc:
        assert exc.line >= 1 and exc.column >= 1
        return
    for name in groups.members:
        assert groups.has(name, "cert=a") in (True, False)
