"""Pure pieces: the Nagios plugin output format, argument substitution, states, the aggregate."""

from __future__ import annotations

import pytest

from collective.aggregates import render
from collective_agent_nrpe.agent import status_message
from collective_agent_nrpe.nrpecfg import parse_command
from collective_agent_nrpe.runner import CheckError, CheckResult, build_argv, parse_output
from collective_agent_nrpe.states import (
    arguments_ok,
    nagios_states,
    split_args,
    state_name,
    worst,
)


@pytest.mark.parametrize(("text", "output", "perfdata"), [
    ("DISK OK - free space: / 100 MB\n", "DISK OK - free space: / 100 MB", ""),
    ("LOAD OK - load 0.1|load1=0.1;5;10;0 load5=0.2;4;6;0\n", "LOAD OK - load 0.1",
     "load1=0.1;5;10;0 load5=0.2;4;6;0"),
    # the plugin API's long form: long text until a line with '|', then perfdata lines
    ("DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968\n"
     "/ 15272 MB (77%);\n"
     "/boot 68 MB (69%);\n"
     "/home 69357 MB (27%);\n"
     "/var/log 819 MB (84%); | /boot=68MB;88;93;0;98\n"
     "/home=69357MB;253404;253409;0;253414\n"
     "/var/log=818MB;970;975;0;980\n",
     "DISK OK - free space: / 3326 MB (56%);\n/ 15272 MB (77%);\n/boot 68 MB (69%);\n"
     "/home 69357 MB (27%);\n/var/log 819 MB (84%);",
     "/=2643MB;5948;5958;0;5968 /boot=68MB;88;93;0;98 /home=69357MB;253404;253409;0;253414 "
     "/var/log=818MB;970;975;0;980"),
    ("a|b|c\n", "a", "b|c"),            # split at the first '|'
    ("OK\r\nmore\r\n", "OK\nmore", ""),
    ("", "", ""),
    ("\n\n", "", ""),
])
def test_output_and_perfdata_as_the_plugin_api_defines(text, output, perfdata):
    assert parse_output(text) == (output, perfdata)


def test_arguments_are_substituted_each_inside_its_own_token():
    command = parse_command("check_x", "/bin/check -w $ARG1$ -c=$ARG2$ '$ARG1$ again'", "f:1")
    argv = build_argv(command, ["10 %", "x;y"])
    assert argv == ["/bin/check", "-w", "10 %", "-c=x;y", "10 % again"]


@pytest.mark.parametrize(("line", "args", "message"), [
    ("/bin/c", ["1"], "takes no arguments, got 1"),
    ("/bin/c $ARG1$", ["1", "2"], "takes 1 argument(s), got 2"),
    ("/bin/c $ARG1$ $ARG3$", ["1"], "needs 3 argument(s)"),
])
def test_argument_counts_must_match(line, args, message):
    with pytest.raises(CheckError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_argv(parse_command("c", line, "f:1"), args)


@pytest.mark.parametrize(("value", "ok"), [
    ("", True), ("20%", True), ("20%!10%", True), ("/var/log", True), ("10:20!@5:~", True),
    ("a b c", True), ("x" * 128, True), ("!".join(["a"] * 16), True),
    ("x" * 129, False), ("!".join(["a"] * 17), False), ("-w", False), (" a", False),
    ("a;b", False), ("a|b", False), ("$(id)", False), ("`id`", False), ("a\nb", False),
    ("a'b", False), ('a"b', False), ("a&b", False), ("a>b", False), ("é", False), ("a!!b", False),
])
def test_the_arguments_allow_list(value, ok):
    assert arguments_ok(value) is ok


def test_split_args():
    assert split_args(None) == [] and split_args("") == [] and split_args("a!b") == ["a", "b"]


@pytest.mark.parametrize(("codes", "expected"), [
    ([], 0), ([0, 0], 0), ([0, 1], 1), ([1, 3], 3), ([3, 2, 1], 2), ([0, 7], 3), ([0, None], 3),
])
def test_the_worst_state_is_critical_then_unknown_then_warning(codes, expected):
    assert worst(codes) == expected


def test_state_names():
    assert [state_name(c) for c in (0, 1, 2, 3, 4, -1, None, True, "0")] == [
        "OK", "WARNING", "CRITICAL", "UNKNOWN", "UNKNOWN", "UNKNOWN", "UNKNOWN", "UNKNOWN", "UNKNOWN"]


def test_nagios_states_counts_every_state_in_order():
    result = nagios_states([0, 2, 2, 1, None, 9], [])
    assert list(result.value.items()) == [("OK", 1), ("WARNING", 1), ("CRITICAL", 2),
                                          ("UNKNOWN", 2)]
    assert render("Exit Code", result).splitlines()[2:] == [
        "           OK : 1", "      WARNING : 1", "     CRITICAL : 2", "      UNKNOWN : 2"]


@pytest.mark.parametrize(("exitcode", "output", "message"), [
    (1, "LOAD WARNING - load average: 9.1", "LOAD WARNING - load average: 9.1"),
    (2, "it is broken\nlong text", "CRITICAL: it is broken"),
    (3, "", "UNKNOWN"),
])
def test_status_messages_name_the_state_once(exitcode, output, message):
    assert status_message(CheckResult(exitcode, output, "")) == message
