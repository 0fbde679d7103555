"""``mco policy check`` and ``mco policy explain``, through the real ``mco`` group
(the command comes from the plugin's entry point) and once as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from collective.cli.main import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["policy", *args])
    return result.exit_code, result.output


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "service.policy").write_text(
        "policy default deny\n"
        "allow\tcert=admin\t*\t*\t*\n"
        "allow\twebteam\tstatus restart\trole=web\t*\n"
        "deny\t*\trestart\tcpus<4\t*\n"
        "allow\t*\trestart\tcpus<4\t*\n")
    (directory / "groups").write_text("webteam cert=alice cert=bob\n")
    return directory


def test_check_clean_file(policies):
    code, out = run("check", str(policies / "service.policy"), "--groups",
                    str(policies / "groups"))
    assert ": error:" not in out and "0 error(s)" in out
    assert "service.policy:5:1: warning: shadowed by line 4" in out   # allow after same deny
    assert code == 0


def test_check_reports_every_error_with_location(tmp_path):
    bad = tmp_path / "bad.policy"
    bad.write_text("policy default deny\nallow cert=a\t*\t*\t*\n"
                   "allow\tcert=a\t*\tfoo\t*\nfrobnicate\n")
    code, out = run("check", str(bad))
    assert code == 1
    assert f"{bad}:2:6: error: expected a tab after 'allow'" in out
    assert f"{bad}:3:16: error: Could not parse fact 'foo'" in out
    assert f"{bad}:4:1: error: cannot parse this line" in out
    assert "3 error(s)" in out


def test_check_unreachable_and_shadowed_and_unknown_groups(tmp_path):
    policy = tmp_path / "p.policy"
    policy.write_text("policy default allow\n"
                      "allow\tcert=a cert=b\tping status\t*\t*\n"
                      "deny\tcert=a\tping\tos=debian\tbase\n"      # shadowed by line 2
                      "allow\tcert=a\tping\tos=debian\t*\n"        # also shadowed by line 2
                      "allow\tcert=c\tping\tos=debian and x=1\n"   # not provably shadowed
                      "allow\tnosuch team\t*\t*\t*\n"              # unknown group 'nosuch'
                      "deny\t*\t*\t*\t*\n"                         # matches everything
                      "allow\tcert=z\t*\t*\t*\n"                   # unreachable
                      "allow\tCERT=Z\t*\t*\t*\n")                  # bad caller id, unreachable
    groups = tmp_path / "groups"
    groups.write_text("team cert=x\n")
    code, out = run("check", str(policy), "--groups", str(groups))
    assert code == 0, out
    lines = out.splitlines()
    assert f"{policy}:1:1: warning: never used: line 7 matches every request" in lines
    assert any(line.startswith(f"{policy}:3:1: warning: shadowed by line 2") for line in lines)
    assert any(line.startswith(f"{policy}:4:1: warning: shadowed by line 2") for line in lines)
    assert not any(line.startswith(f"{policy}:5:") for line in lines)
    assert f"{policy}:6:7: warning: unknown group 'nosuch'" in out
    assert not any("'team'" in line for line in lines)
    assert f"{policy}:8:1: warning: unreachable: line 7" in out
    assert f"{policy}:9:7: warning: caller id 'CERT=Z' can never match" in out


def test_check_broken_groups_file(tmp_path, policies):
    groups = tmp_path / "groups"
    groups.write_text("ok cert=a\nbad/name cert=b\n")
    code, out = run("check", str(policies / "service.policy"), "--groups", str(groups))
    assert code == 1 and f"{groups}:2:1: error:" in out


def test_check_missing_file(tmp_path):
    code, out = run("check", str(tmp_path / "nope.policy"))
    assert code == 1 and "cannot read" in out


@pytest.mark.parametrize(("args", "verdict", "decided", "why"), [
    (["--caller", "cert=admin", "--action", "restart"], "allow", ":2: allow\tcert=admin", "line 2"),
    (["--caller", "cert=alice", "--action", "status", "--fact", "role=web"], "allow",
     ":3: allow\twebteam", "in group webteam"),
    (["--caller", "cert=carol", "--action", "restart", "--fact", "cpus=2"], "deny",
     ":4: deny", "deny rule at line 4"),
    (["--caller", "cert=carol", "--action", "restart", "--fact", "cpus=16"], "deny",
     ":1: policy default deny", "no rule matched; policy default deny at line 1"),
])
def test_explain(policies, args, verdict, decided, why):
    code, out = run("explain", "--policy-dir", str(policies), "--agent", "service", *args)
    lines = out.splitlines()
    assert lines[0] == verdict
    assert decided in lines[1] and str(policies / "service.policy") in lines[1]
    assert why in lines[2]
    assert code == (0 if verdict == "allow" else 1)


def test_explain_unconfigured_agent_and_flags(policies):
    code, out = run("explain", "--policy-dir", str(policies), "--caller", "cert=a",
                    "--agent", "package", "--action", "status")
    assert (code, out.splitlines()[0]) == (1, "deny")
    assert "Could not load any valid policy files" in out
    code, out = run("explain", "--policy-dir", str(policies), "--caller", "cert=a",
                    "--agent", "package", "--action", "status", "--allow-unconfigured")
    assert (code, out.splitlines()[0]) == (0, "allow")
    (policies / "default.policy").write_text("policy default deny\n")
    code, out = run("explain", "--policy-dir", str(policies), "--caller", "cert=a",
                    "--agent", "package", "--action", "status", "--allow-unconfigured",
                    "--enable-default")
    assert (code, out.splitlines()[0]) == (1, "deny")
    assert "default.policy:1: policy default deny" in out


def test_explain_verbose_trace_and_classes(policies):
    (policies / "puppet.policy").write_text("policy default deny\n"
                                            "allow\t*\t*\t*\trole::db\n")
    code, out = run("explain", "--policy-dir", str(policies), "--caller", "cert=a", "--agent",
                    "puppet", "--action", "run", "--class", "role::db", "-v")
    assert code == 0 and "line 2: allow: MATCH" in out


def test_explain_bad_fact_is_a_usage_error(policies):
    code, out = run("explain", "--policy-dir", str(policies), "--caller", "cert=a", "--agent",
                    "service", "--action", "x", "--fact", "novalue")
    assert code == 2 and "NAME=VALUE" in out


def test_mco_policy_check_as_a_subprocess(tmp_path):
    bad = tmp_path / "x.policy"
    bad.write_text("allow\tcert=a * * *\n")
    proc = subprocess.run([sys.executable, "-m", "collective", "policy", "check", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{bad}:1:13: error:" in proc.stdout and "hard tabs" in proc.stdout
    assert "Traceback" not in proc.stderr
