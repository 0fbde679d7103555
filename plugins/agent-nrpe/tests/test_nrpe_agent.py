"""The nrpe agent in an in-process node (real DDL validation, authorization and dispatch)
running the real Nagios plugins of Debian's monitoring-plugins-basic."""

from __future__ import annotations

import os
import socket
import time
import uuid

import psutil
import pytest

from collective.data import DataResolver
from collective_agent_nrpe.data import NrpeData
from collective_agent_nrpe.testing import plugin, write_nrpe_cfg

DUMMY = plugin("check_dummy")


@pytest.mark.parametrize(("code", "state", "statuscode"), [
    (0, "OK", 0), (1, "WARNING", 1), (2, "CRITICAL", 1), (3, "UNKNOWN", 1)])
def test_check_dummy_in_each_state(nrpe_node, code, state, statuscode):
    node = nrpe_node({"check_state": f'{DUMMY} {code} "state {code} from check_dummy"'})
    outcome = node.call("nrpe", "runcommand", command="check_state")
    assert outcome.statuscode == statuscode
    assert outcome.data == {"command": "check_state", "exitcode": code,
                            "output": f"{state}: state {code} from check_dummy", "perfdata": ""}
    assert outcome.statusmsg == ("OK" if code == 0 else f"{state}: state {code} from check_dummy")


def test_check_load_reports_its_perfdata(nrpe_node):
    node = nrpe_node({"check_load": f"{plugin('check_load')} -w 1000,1000,1000 -c 2000,2000,2000"})
    outcome = node.call("nrpe", "runcommand", command="check_load")
    assert outcome.statuscode == 0, outcome.statusmsg
    assert outcome.data["output"].startswith("LOAD OK - total load average: ")
    assert "|" not in outcome.data["output"]
    fields = dict(item.split("=", 1) for item in outcome.data["perfdata"].split())
    assert set(fields) == {"load1", "load5", "load15"}
    assert fields["load1"].split(";")[1:3] == ["1000.000", "2000.000"]


def test_check_disk_ok_and_critical(nrpe_node):
    node = nrpe_node({"disk_ok": f"{plugin('check_disk')} -w 0% -c 0% -p /",
                      "disk_full": f"{plugin('check_disk')} -w 100% -c 100% -p /"})
    ok = node.call("nrpe", "runcommand", command="disk_ok")
    full = node.call("nrpe", "runcommand", command="disk_full")
    assert (ok.statuscode, ok.data["exitcode"]) == (0, 0), ok.data
    assert ok.data["output"].startswith("DISK OK") and ok.data["perfdata"].startswith("/=")
    assert (full.statuscode, full.data["exitcode"]) == (1, 2)
    assert full.statusmsg.startswith("DISK CRITICAL - free space: /")


def test_check_procs_counts_real_processes(nrpe_node):
    node = nrpe_node({"procs": f"{plugin('check_procs')} -w 1000000 -c 2000000",
                      "ghost": f"{plugin('check_procs')} -C no-such-proc-{uuid.uuid4().hex[:8]} -c 1:"})
    procs = node.call("nrpe", "runcommand", command="procs")
    assert procs.statuscode == 0
    count = int(procs.data["output"].split()[2])
    assert abs(count - len(psutil.pids())) < 50
    assert procs.data["perfdata"].startswith(f"procs={count};1000000;2000000")
    ghost = node.call("nrpe", "runcommand", command="ghost")
    assert (ghost.statuscode, ghost.data["exitcode"]) == (1, 2)
    assert ghost.data["output"].startswith("PROCS CRITICAL: 0 processes")


def test_an_unknown_command_is_unknown_with_status_1(nrpe_node):
    outcome = nrpe_node({"check_x": f"{DUMMY} 0"}).call("nrpe", "runcommand", command="check_nope")
    assert outcome.statuscode == 1
    assert (outcome.data["exitcode"], outcome.data["output"]) == (3, "No such command: check_nope")
    assert outcome.statusmsg.startswith("UNKNOWN: No such command: check_nope (read: ")


def test_a_hanging_check_is_killed_with_its_process_group(nrpe_node, tmp_path):
    marker = f"300.{uuid.uuid4().int % 10**9:09d}"  # a sleep nobody else runs
    # the check and a child it started both sleep; both must be gone afterwards
    node = nrpe_node({"check_hang": f'/bin/sh -c "sleep {marker} & exec sleep {marker}"'},
                     command_timeout=1)
    started = time.monotonic()
    outcome = node.call("nrpe", "runcommand", command="check_hang")
    elapsed = time.monotonic() - started
    assert outcome.statuscode == 1 and outcome.data["exitcode"] == 3
    assert outcome.data["output"] == ("UNKNOWN: check check_hang timed out after 1 s and was "
                                      "killed with its process group")
    assert elapsed < 5
    time.sleep(0.2)
    left = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert left == []


def test_a_real_plugin_that_hangs_is_killed_at_the_timeout(nrpe_node):
    with socket.socket() as server:  # accepts, never answers: check_tcp waits for "never"
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        node = nrpe_node({"check_tcp": f"{plugin('check_tcp')} -H 127.0.0.1 -p {port} -s hello "
                                       "-e never -t 60"}, command_timeout=1.5)
        started = time.monotonic()
        outcome = node.call("nrpe", "runcommand", command="check_tcp")
        assert time.monotonic() - started < 6
    assert (outcome.statuscode, outcome.data["exitcode"]) == (1, 3)
    assert "timed out after 1.5 s and was killed" in outcome.data["output"]


def test_a_check_that_leaves_a_child_behind_does_not_stall_or_leak(nrpe_node):
    marker = f"300.{uuid.uuid4().int % 10**9:09d}"
    node = nrpe_node({"check_bg": f"/bin/sh -c 'sleep {marker} & echo started'"},
                     command_timeout=5)
    started = time.monotonic()
    outcome = node.call("nrpe", "runcommand", command="check_bg")
    assert time.monotonic() - started < 3  # the child keeps no pipe open: output is a file
    assert (outcome.statuscode, outcome.data["output"]) == (0, "started")
    time.sleep(0.2)
    assert not [p for p in psutil.process_iter(["cmdline"])
                if marker in " ".join(p.info["cmdline"] or [])]


@pytest.mark.parametrize(("line", "exitcode", "output"), [
    ('/bin/sh -c "exit 7"', 3, "(check check_odd exited with status 7, which is out of bounds: "
                               "UNKNOWN)"),
    ('/bin/sh -c "echo partial; kill -9 $$"', 3, "partial (check check_odd was killed by signal "
                                                 "9, which is out of bounds: UNKNOWN)"),
    ("/bin/true", 0, "(No output returned from plugin)"),
    ("/no/such/plugin -w 1", 3, "UNKNOWN: /no/such/plugin not found on this node"),
    ("no-such-plugin-anywhere", 3, "UNKNOWN: no-such-plugin-anywhere not found on this node"),
    ("{tmp}/plain-file", 3, "UNKNOWN: {tmp}/plain-file is not executable"),
])
def test_odd_exits_and_missing_programs_are_unknown(nrpe_node, tmp_path, line, exitcode, output):
    (tmp_path / "plain-file").write_text("not a program\n")
    os.chmod(tmp_path / "plain-file", 0o644)
    line, output = line.format(tmp=tmp_path), output.format(tmp=tmp_path)
    outcome = nrpe_node({"check_odd": line}).call("nrpe", "runcommand", command="check_odd")
    assert outcome.data["exitcode"] == exitcode
    assert outcome.data["output"].startswith(output)


def test_a_line_that_needs_a_shell_never_runs(nrpe_node, tmp_path):
    marker = tmp_path / "ran"
    node = nrpe_node({"check_pipe": f"/usr/bin/touch {marker} | /bin/cat"})
    outcome = node.call("nrpe", "runcommand", command="check_pipe")
    assert (outcome.statuscode, outcome.data["exitcode"]) == (1, 3)
    assert "uses shell syntax (|)" in outcome.data["output"]
    assert not marker.exists()


def test_checks_run_with_a_small_fixed_environment(nrpe_node, monkeypatch):
    monkeypatch.setenv("COLLECTIVE_SECRET_FOR_TEST", "leaked")
    outcome = nrpe_node({"check_env": "/usr/bin/env"}).call("nrpe", "runcommand",
                                                            command="check_env")
    lines = outcome.data["output"].splitlines()
    assert sorted(line.split("=")[0] for line in lines) == ["LANG", "LC_ALL", "PATH"]


def test_an_edited_configuration_is_read_without_a_restart(nrpe_node, tmp_path):
    node = nrpe_node({"check_x": f"{DUMMY} 0"})
    assert node.call("nrpe", "runcommand", command="check_x").statuscode == 0
    write_nrpe_cfg(tmp_path / "nrpe.cfg", {"check_x": f"{DUMMY} 2 changed"})
    outcome = node.call("nrpe", "runcommand", command="check_x")
    assert (outcome.data["exitcode"], outcome.data["output"]) == (2, "CRITICAL: changed")


# -- arguments ---------------------------------------------------------------------------


def test_arguments_are_refused_unless_the_node_allows_them(nrpe_node, tmp_path):
    node = nrpe_node({"check_touch": f"/usr/bin/touch {tmp_path}/$ARG1$"})
    outcome = node.call("nrpe", "runcommand", command="check_touch", args="made")
    assert outcome.statuscode == 1
    assert "plugins.nrpe.allow_arguments" in outcome.statusmsg
    assert not (tmp_path / "made").exists()


def test_allowed_arguments_are_substituted_as_one_token_each(nrpe_node, tmp_path):
    node = nrpe_node({"check_args": f"{DUMMY} $ARG1$ $ARG2$",
                      "check_touch": f"/usr/bin/touch {tmp_path}/$ARG1$"}, allow_arguments=True)
    outcome = node.call("nrpe", "runcommand", command="check_args", args="1!two words -x")
    assert outcome.data == {"command": "check_args", "exitcode": 1,
                            "output": "WARNING: two words -x", "perfdata": ""}
    assert node.call("nrpe", "runcommand", command="check_touch", args="made").statuscode == 0
    assert (tmp_path / "made").exists()


@pytest.mark.parametrize("args", [
    "x;touch /tmp/pwned", "$(id)", "`id`", "x|y", "x&&y", "-rf", "x\ny", "'q'", '"q"', "a>b",
    "../x\x00", "x" * 129, "!".join(["a"] * 17),
])
def test_injection_in_arguments_is_refused_before_anything_runs(nrpe_node, tmp_path, args):
    node = nrpe_node({"check_touch": f"/usr/bin/touch {tmp_path}/$ARG1$"}, allow_arguments=True)
    outcome = node.call("nrpe", "runcommand", command="check_touch", args=args)
    assert outcome.statuscode == 4, outcome.statusmsg
    assert outcome.statusmsg.startswith("Cannot validate input args")
    assert list(tmp_path.iterdir()) == [tmp_path / "nrpe.cfg"]


def test_the_node_may_narrow_the_argument_allow_list(nrpe_node, tmp_path):
    node = nrpe_node({"check_touch": f"/usr/bin/touch {tmp_path}/$ARG1$"}, allow_arguments=True,
                     argument_pattern="[0-9]+")
    refused = node.call("nrpe", "runcommand", command="check_touch", args="abc")
    assert refused.statuscode == 4 and "argument_pattern" in refused.statusmsg
    assert node.call("nrpe", "runcommand", command="check_touch", args="42").statuscode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["42", "nrpe.cfg"]


@pytest.mark.parametrize(("args", "message"), [
    ("1!2!3", "takes 2 argument(s), got 3"), ("1", "needs 2 argument(s)")])
def test_the_number_of_arguments_must_match(nrpe_node, args, message):
    node = nrpe_node({"check_args": f"{DUMMY} $ARG1$ $ARG2$"}, allow_arguments=True)
    outcome = node.call("nrpe", "runcommand", command="check_args", args=args)
    assert outcome.statuscode == 4 and message in outcome.statusmsg


@pytest.mark.parametrize("command", [
    "check_load;id", "check_load && id", "$(id)", "`id`", "../../bin/sh", "/bin/sh", "-h",
    "check load", "x" * 65, "", "check\nload",
])
def test_bad_command_names_are_refused_by_the_ddl(nrpe_node, tmp_path, command):
    node = nrpe_node({"check_load": f"/usr/bin/touch {tmp_path}/ran"})
    outcome = node.call("nrpe", "runcommand", command=command)
    assert outcome.statuscode == 4
    assert outcome.statusmsg.startswith("Cannot validate input command")
    assert not (tmp_path / "ran").exists()


def test_undeclared_inputs_are_refused(nrpe_node):
    outcome = nrpe_node({"check_x": f"{DUMMY} 0"}).call("nrpe", "runcommand", command="check_x",
                                                        shell="/bin/sh")
    assert outcome.statuscode == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_checks_can_run_as_another_user(nrpe_node):
    import pwd

    nobody = pwd.getpwnam("nobody")
    node = nrpe_node({"check_id": "/usr/bin/id -u"}, user="nobody")
    outcome = node.call("nrpe", "runcommand", command="check_id")
    assert outcome.data["output"] == str(nobody.pw_uid)
    unknown = nrpe_node({"check_id": "/usr/bin/id -u"}, user="no-such-user-xyz")
    assert "does not exist on this node" in unknown.call("nrpe", "runcommand",
                                                         command="check_id").data["output"]


# -- runallcommands ----------------------------------------------------------------------


def test_runallcommands_runs_every_check_without_arguments(nrpe_node):
    node = nrpe_node({
        "check_ok": f"{DUMMY} 0 fine",
        "check_warn": f"{DUMMY} 1 meh",
        "check_load": f"{plugin('check_load')} -w 1000,1000,1000 -c 2000,2000,2000",
        "check_args": f"{DUMMY} $ARG1$",
        "check_pipe": "/bin/echo a | /bin/cat",
    })
    outcome = node.call("nrpe", "runallcommands")
    assert outcome.statuscode == 0
    commands = outcome.data["commands"]
    assert sorted(commands) == ["check_load", "check_ok", "check_pipe", "check_warn"]
    assert commands["check_ok"] == {"exitcode": 0, "output": "OK: fine", "perfdata": ""}
    assert commands["check_warn"]["exitcode"] == 1
    assert commands["check_load"]["perfdata"].startswith("load1=")
    assert commands["check_pipe"]["exitcode"] == 3
    assert outcome.data["exitcode"] == 3  # UNKNOWN outranks WARNING


def test_runallcommands_runs_checks_side_by_side_within_its_budget(nrpe_node):
    node = nrpe_node({f"check_{n}": "/bin/sleep 1" for n in range(4)}, parallel=4)
    started = time.monotonic()
    outcome = node.call("nrpe", "runallcommands")
    assert time.monotonic() - started < 3.5
    assert {c["exitcode"] for c in outcome.data["commands"].values()} == {0}


def test_runallcommands_without_any_command_is_aborted(nrpe_node):
    outcome = nrpe_node({"check_args": f"{DUMMY} $ARG1$"}).call("nrpe", "runallcommands")
    assert outcome.statuscode == 1 and "No commands without arguments" in outcome.statusmsg


# -- the data plugin ---------------------------------------------------------------------


def test_the_data_plugin_runs_the_check(nrpe_node, tmp_path):
    node = nrpe_node({"check_ok": f"{DUMMY} 0", "check_crit": f"{DUMMY} 2",
                      "check_args": f"{DUMMY} $ARG1$"})
    resolve = DataResolver({"nrpe": NrpeData()}, node.node)
    assert resolve("nrpe", "check_ok") == {"exitcode": 0, "state": "OK", "defined": True}
    assert resolve("nrpe", "check_crit") == {"exitcode": 2, "state": "CRITICAL", "defined": True}
    assert resolve("nrpe", "check_nope") == {"exitcode": 3, "state": "UNKNOWN", "defined": False}
    assert resolve("nrpe", "check_args")["exitcode"] == 3
    assert resolve("nrpe", "check_ok;id") is None  # refused, so the expression does not match


def test_the_data_plugin_refuses_bad_names():
    for bad in ("check load", "-h", "a;b", "", None):
        with pytest.raises(ValueError):
            NrpeData.validate(bad)
    NrpeData.validate("check_load")
