"""``mco help`` and ``mco help COMMAND``: what MCollective users type for help."""

from __future__ import annotations

import subprocess
import sys


def mco(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collective", *args], capture_output=True,
                          text=True, timeout=60)


def test_mco_help_lists_the_commands_like_mco_help_does():
    proc = mco("help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == mco("--help").stdout
    for command in ("ping", "rpc", "find", "facts", "inventory", "plugin", "help"):
        assert f"\n  {command} " in proc.stdout


def test_mco_help_command_is_that_commands_help():
    for args in (("rpc",), ("ping",), ("plugin", "doc")):
        proc = mco("help", *args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == mco(*args, "--help").stdout
        assert proc.stdout.startswith(f"Usage: mco {' '.join(args)} ")


def test_mco_help_of_an_unknown_command_says_which_exist():
    proc = mco("help", "nosuch")
    assert proc.returncode == 2
    assert "unknown command 'nosuch'" in proc.stderr and "ping" in proc.stderr
