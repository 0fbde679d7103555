"""Reading NRPE's configuration: command lines, includes, directories and what cannot run."""

from __future__ import annotations

import pytest

from collective_agent_nrpe.nrpecfg import load, parse_command, shell_syntax


def test_commands_from_the_file_its_includes_and_the_conf_dir_later_wins(tmp_path):
    (tmp_path / "extra.cfg").write_text("command[check_b]=/bin/b from-include\n")
    (tmp_path / "inc.d" / "sub").mkdir(parents=True)
    (tmp_path / "inc.d" / "sub" / "c.cfg").write_text("command[check_c]=/bin/c\n")
    (tmp_path / "inc.d" / "ignored.txt").write_text("command[check_txt]=/bin/txt\n")
    main = tmp_path / "nrpe.cfg"
    main.write_text(
        "# NRPE settings collective ignores\n"
        "server_port=5666\n"
        "dont_blame_nrpe=1\n"
        "command[check_a]=/bin/a -w 1\n"
        "include=extra.cfg\n"              # relative to the including file
        f"include_dir={tmp_path / 'inc.d'}\n"
        "command[check_b]=/bin/b from-main\n"
    )
    confd = tmp_path / "nrpe.d"
    confd.mkdir()
    (confd / "a.cfg").write_text("command[check_a]=/bin/a -w 2\n")
    config = load(str(main), str(confd))
    assert sorted(config.commands) == ["check_a", "check_b", "check_c"]
    assert config.commands["check_a"].argv == ("/bin/a", "-w", "2")
    assert config.commands["check_a"].source == f"{confd / 'a.cfg'}:1"
    assert config.commands["check_b"].argv == ("/bin/b", "from-main")
    assert config.files == [str(main), str(tmp_path / "extra.cfg"),
                            str(tmp_path / "inc.d" / "sub" / "c.cfg"), str(confd / "a.cfg")]
    assert config.warnings == []


def test_include_loops_are_read_once(tmp_path):
    (tmp_path / "a.cfg").write_text("include=b.cfg\ncommand[one]=/bin/one\n")
    (tmp_path / "b.cfg").write_text("include=a.cfg\ncommand[two]=/bin/two\n")
    config = load(str(tmp_path / "a.cfg"), [])
    assert sorted(config.commands) == ["one", "two"]
    assert config.files == [str(tmp_path / "a.cfg"), str(tmp_path / "b.cfg")]


def test_missing_default_locations_are_quiet_but_named_ones_warn(tmp_path):
    assert load(str(tmp_path / "absent.cfg"), str(tmp_path / "absent.d")).warnings == [
        f"{tmp_path / 'absent.cfg'}: no such file", f"{tmp_path / 'absent.d'}: no such directory"]
    main = tmp_path / "nrpe.cfg"
    main.write_text("include=gone.cfg\ninclude_dir=gone.d\n")
    warnings = load(str(main), []).warnings
    assert warnings == [f"{tmp_path / 'gone.cfg'}: no such file",
                        f"{tmp_path / 'gone.d'}: no such directory"]


def test_bad_lines_and_names_are_skipped_with_a_warning(tmp_path):
    main = tmp_path / "nrpe.cfg"
    main.write_text("this is not a setting\n"
                    "command[bad name]=/bin/x\n"
                    "command[-h]=/bin/x\n"
                    "command[check_ok]=/bin/ok\n")
    config = load(str(main), [])
    assert list(config.commands) == ["check_ok"]
    assert [w.split(": ", 1)[0] for w in config.warnings] == [f"{main}:1", f"{main}:2", f"{main}:3"]


def test_an_oversized_file_is_not_read(tmp_path):
    main = tmp_path / "nrpe.cfg"
    main.write_text("command[check_x]=/bin/x\n" + "#" * (1 << 20))
    config = load(str(main), [])
    assert config.commands == {} and "larger than" in config.warnings[0]


@pytest.mark.parametrize(("line", "argv"), [
    ('/usr/lib/nagios/plugins/check_disk -w 20% -p "/var lib"',
     ("/usr/lib/nagios/plugins/check_disk", "-w", "20%", "-p", "/var lib")),
    ("/bin/sh -c 'sleep 1 & wait'", ("/bin/sh", "-c", "sleep 1 & wait")),
    (r"/bin/echo a\;b", ("/bin/echo", "a;b")),
    ("/bin/check -a 'foo$' -b $ARG1$ -c x$ARG2$y", ("/bin/check", "-a", "foo$", "-b", "$ARG1$",
                                                      "-c", "x$ARG2$y")),
])
def test_command_lines_split_as_a_shell_would_quote_them(line, argv):
    command = parse_command("check_x", line, "f:1")
    assert command.problem is None and command.argv == argv


@pytest.mark.parametrize(("line", "bad"), [
    ("/bin/echo hi | grep h", "|"),
    ("/bin/a && /bin/b", "&"),
    ("/bin/a; /bin/b", ";"),
    ("/bin/a > /tmp/out", ">"),
    ("/bin/a `id`", "`"),
    ('/bin/a "$(id)"', "$("),
    ("/bin/a ${HOME}", "${"),
    ("/bin/a $HOME/x", "$HOME"),
    ("(/bin/a)", "("),
])
def test_shell_syntax_is_found_outside_single_quotes_only(line, bad):
    assert shell_syntax(line) == bad
    command = parse_command("check_x", line, "f:1")
    assert command.argv == () and f"shell syntax ({bad})" in command.problem


@pytest.mark.parametrize(("line", "problem"), [
    ("", "empty"),
    ('/bin/a "unterminated', "cannot be split"),
    ("LANG=C /bin/a", "variable assignment"),
    ("$ARG1$ -x", "cannot be an $ARGn$"),
])
def test_lines_that_cannot_run_say_why(line, problem):
    assert problem in parse_command("check_x", line, "f:1").problem


def test_arguments_are_the_highest_macro_used():
    assert parse_command("c", "/bin/c -w $ARG2$ -c $ARG1$", "f:1").arguments == 2
    assert parse_command("c", "/bin/c -w 1", "f:1").arguments == 0
