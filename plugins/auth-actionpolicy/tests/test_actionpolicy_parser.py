"""The policy and groups file parsers: accepted forms, errors with line and column,
and hypothesis properties (only PolicyError escapes; render -> parse round-trips)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collective.compound import FuncCall, parse
from collective.filters import FactFilter
from collective_auth_actionpolicy.parser import (
    Callers,
    Classes,
    Compound,
    Default,
    Facts,
    Policy,
    PolicyError,
    Rule,
    parse_groups,
    parse_policy,
)


def rules(text: str) -> tuple[Rule, ...]:
    return parse_policy(text, "t.policy").rules


def test_comments_blank_lines_and_defaults():
    policy = parse_policy("# comment\n\n   \n  # indented comment\npolicy default allow\n"
                          "policy  default\tdeny\n", "t.policy")
    assert policy.rules == ()
    assert [d.word for d in policy.defaults] == ["allow", "deny"]
    assert policy.default.line == 6 and not policy.default.allow


@pytest.mark.parametrize(("line", "allow"), [
    ("policy default allow", True),
    ("policy default deny", False),
    ("policy default alow", False),           # anything but allow -> deny
    ("policy default allow # trailing", True),  # MCollective's regex ignores the rest
    ("policy default Allow", False),
])
def test_policy_default_words(line, allow):
    assert parse_policy(line + "\n").default.allow is allow


def test_five_field_rule_with_multiple_tabs_crlf_and_trailing_tab():
    (rule,) = rules("allow\t\tcert=a cert=b\t\t\tenable disable\t\tcustomer=acme cpus>=4\t\tone two\t\r\n")
    assert rule.effect == "allow" and rule.fields == 5
    assert rule.callers == Callers(("cert=a", "cert=b"), "ids")
    assert rule.actions == ("enable", "disable")
    assert rule.facts == Facts((FactFilter("customer", "==", "acme"), FactFilter("cpus", ">=", "4")))
    assert rule.classes == Classes(("one", "two"))
    assert rule.line == 1 and rule.text.endswith("one two\t")


def test_stars_are_none():
    (rule,) = rules("deny\t*\t*\t*\t*\n")
    assert (rule.callers, rule.actions, rule.facts, rule.classes) == (None, None, None, None)
    assert rule.matches_everything


def test_four_field_line_is_always_compound():
    (rule,) = rules("allow\tuid=700\trestart\t(puppet().enabled=false and environment=production) "
                    "or environment=development\n")
    assert rule.fields == 4 and isinstance(rule.facts, Compound)
    assert rule.facts.expr == parse("(puppet().enabled=false and environment=production) or "
                                    "environment=development")


@pytest.mark.parametrize("field", [
    "puppet().enabled=false",          # empty parentheses: MCollective's \(.+\) missed this
    "foo=bar and bar=foo",
    "!role=web",
    "not role=web",
    "(role=web)",
])
def test_compound_detected_in_facts_field_of_five_field_line(field):
    (rule,) = rules(f"allow\t*\t*\t{field}\t*\n")
    assert isinstance(rule.facts, Compound)
    assert rule.facts.expr == parse(field)


def test_empty_paren_function_is_a_call():
    (rule,) = rules("allow\t*\t*\tpuppet().enabled=false\t*\n")
    assert rule.facts.expr == FuncCall("puppet", (), "enabled", "==", "false")


def test_compound_in_classes_field():
    (rule,) = rules("allow\tuid=500\trspec\tfoo=bar\tone and two or three\n")
    assert rule.facts == Facts((FactFilter("foo", "==", "bar"),))
    assert rule.classes == Compound(parse("one and two or three"))


def test_regex_and_group_callers():
    (a, b) = rules("allow\t/^cert=sre-/ cert=x\t*\t*\t*\nallow\twebteam ops.team\t*\t*\t*\n")
    assert a.callers.kind == "ids" and a.callers.exact == {"cert=x"}
    assert a.callers.regexes == ("/^cert=sre-/",)
    assert b.callers == Callers(("webteam", "ops.team"), "groups")


# Each case: the text, then (line, column) of the first error and a word of its message.
ERRORS = [
    ("allow cert=a\t*\t*\t*\n", 1, 6, "hard tabs"),                        # example11
    ("policy default deny\nallow\tcert=a * * *\n", 2, 13, "tab"),
    ("deny\tcert=a\t*\t*\n", 1, 15, "4-field"),
    ("allow\tgrp cert=a\t*\t*\t*\n", 1, 11, "mix"),
    ("allow\t*\t*\tfoo\t*\n", 1, 11, "Could not parse fact"),
    ("allow\t*\t*\t*\tfoo=bar\n", 1, 13, "looks like a fact"),
    ("allow\t*\t*\t(a and\t*\n", 1, 17, "compound"),
    ("\n  foo\n", 2, 3, "cannot parse"),
    ("policy defualt allow\n", 1, 1, "policy default"),
    ("allow\t*\t*\t*\t*\t*\n", 1, 15, "too many"),
    ("allow\t*\t* x\t*\t*\n", 1, 9, "'*' must be"),
    ("allow\t/ab\t*\t*\t*\n", 1, 7, "does not end"),
    ("allow\t/(a+)+/\t*\t*\t*\n", 1, 7, "nested quantifiers"),
    ("allow\t*\tping,status\t*\t*\n", 1, 9, "not an action name"),
    ("Allow\t*\t*\t*\t*\n", 1, 1, "cannot parse"),
    ("allow\t*\t*\trole=web and (\t*\n", 1, 25, "compound"),
    ("allow\t \t*\t*\t*\n", 1, 7, "empty"),
    # fact regexes run on RE2 (linear time): (a+)+ is harmless there, a backreference
    # cannot run at all
    ("allow\t*\t*\tx=1\t*\nallow\t*\t*\tx=~/(a)\\1/\t*\n", 2, 14, "for RE2"),
]


@pytest.mark.parametrize(("text", "line", "column", "word"), ERRORS)
def test_errors_carry_file_line_and_column(text, line, column, word):
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "/etc/collective/policies/x.policy")
    err = info.value
    assert (err.path, err.line, err.column) == ("/etc/collective/policies/x.policy", line, column)
    assert word in err.message
    assert str(err).startswith(f"/etc/collective/policies/x.policy:{line}:{column}: ")


def test_every_error_of_a_file_is_listed():
    text = "policy default deny\nallow cert=a\t*\t*\t*\nallow\tcert=b\t*\t*\t*\nbogus\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p")
    assert [(e.line, e.column) for e in info.value.errors] == [(2, 6), (4, 1)]


def test_undecodable_bytes_are_located():
    with pytest.raises(PolicyError) as info:
        parse_policy(b"policy default deny\nallow\t\xff\t*\t*\t*\n", "p")
    assert (info.value.line, info.value.column) == (2, 7)


def test_groups_file():
    groups = parse_groups("# comment\nwebteam cert=alice cert=bob\n\nsre cert=carol\n"
                          "webteam cert=dave\nempty\n", "groups")
    assert groups.members["webteam"] == {"cert=dave"}   # a later line replaces (MCollective)
    assert groups.duplicates == {"webteam": (2, 5)}
    assert groups.has("sre", "cert=carol") and not groups.has("sre", "cert=caro")
    assert groups.members["empty"] == frozenset()
    with pytest.raises(PolicyError) as info:
        parse_groups("ok cert=a\nbad/name cert=b\n", "groups")
    assert (info.value.line, info.value.column) == (2, 1)


def test_render_is_canonical_with_single_tabs():
    (rule,) = rules("allow\t\t\tcert=a\t\tping\t\tcpus>=4 os=debian\t\t*\n")
    assert rule.render() == "allow\tcert=a\tping\tcpus>=4 os==debian\t*"


# -- properties ------------------------------------------------------------------------------

PIECES = ["allow", "deny", "policy", " default ", "\t", "\t\t", " ", "*", "cert=a", "grp",
          "/^c/", "/(a+)+/", "(", ")", "and", "or", "not", "!", "=", "==", ">=", "=~", "/",
          "fstat('/x').size>0", "puppet()", "a=b", "x>=4", "#", "\n", "\r", "'", '"', "\x00",
          "é", ".", "foo", "1"]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300),
                 st.lists(st.sampled_from(PIECES), max_size=40).map("".join)))
def test_parser_only_raises_policy_error(text):
    try:
        policy = parse_policy(text, "fuzz.policy")
    except PolicyError as exc:
        assert exc.line >= 1 and exc.column >= 1 and exc.errors
        return
    for rule in policy.rules:   # what parses renders and parses back to the same rules
        assert parse_policy(rule.render()).rules == (rule,)


@given(st.binary(max_size=200))
def test_parser_only_raises_policy_error_on_bytes(data):
    try:
        parse_policy(data, "fuzz.policy")
        parse_groups(data, "groups")
    except PolicyError:
        pass


_name = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
_value = st.from_regex(r"[A-Za-z0-9_.-]{1,8}", fullmatch=True)
_callers = st.one_of(
    st.none(),
    st.lists(st.one_of(st.from_regex(r"cert=[a-z0-9.-]{1,8}", fullmatch=True),
                       st.from_regex(r"/\^cert=[a-z]{1,4}/", fullmatch=True)),
             min_size=1, max_size=3).map(lambda t: Callers(tuple(t), "ids")),
    st.lists(st.from_regex(r"[a-z][a-z0-9_.-]{0,7}", fullmatch=True), min_size=1, max_size=3)
    .map(lambda t: Callers(tuple(t), "groups")),
)
_actions = st.one_of(st.none(), st.lists(_name, min_size=1, max_size=3).map(tuple))
_facts = st.lists(st.builds(FactFilter, st.from_regex(r"[a-z][a-z0-9_.]{0,7}", fullmatch=True),
                            st.sampled_from(["==", "!=", "<", ">", "<=", ">=", "=~"]), _value),
                  min_size=1, max_size=3).map(lambda items: Facts(tuple(items)))
_classes = st.lists(st.from_regex(r"[a-z][a-z0-9_:]{0,7}", fullmatch=True)
                    .filter(lambda c: c not in ("and", "or", "not")),
                    min_size=1, max_size=3).map(lambda items: Classes(tuple(items)))
#: compound expressions that a 5-field line recognises as compound
_DETECTED = ["role=web and location=uk", "(role=db or role=cache) and not location=us",
             "/^role::c/ and !location=us", "fact('role').value=cache",
             'fstat("/etc/hosts").size>0 and role=web', "puppet().enabled=false",
             "one and two or three", "not cpus>=4"]
_detected = st.sampled_from(_DETECTED).map(lambda t: Compound(parse(t)))
_any_compound = st.sampled_from([*_DETECTED, "role=web", "cpus>=4", "base"]) \
    .map(lambda t: Compound(parse(t)))
_rule5 = st.builds(Rule, st.sampled_from(["allow", "deny"]), _callers, _actions,
                   st.one_of(st.none(), _facts, _detected), st.one_of(st.none(), _classes, _detected),
                   st.just(5))
_rule4 = st.builds(Rule, st.sampled_from(["allow", "deny"]), _callers, _actions, _any_compound,
                   st.none(), st.just(4))
_default = st.one_of(st.none(), st.sampled_from(["allow", "deny"]).map(
    lambda w: Default(w, 1, f"policy default {w}")))


@settings(max_examples=300)
@given(st.lists(st.one_of(_rule5, _rule4), max_size=6), _default)
def test_render_then_parse_round_trips(generated, default):
    policy = Policy("gen.policy", tuple(generated), (default,) if default else ())
    parsed = parse_policy(policy.render(), "gen.policy")
    assert parsed.rules == policy.rules
    assert (parsed.default.word if parsed.default else None) == (default.word if default else None)
