"""Run one check: arguments into its argv, the process under a deadline, its output parsed.

A check runs as an argument list (never a shell) in its own session and process
group, with stdin from ``/dev/null``, a fixed small environment, its output in a
temporary file (so a child that keeps the pipe open cannot stall the agent), and a
deadline. When it passes the deadline its whole process group gets SIGTERM, then
SIGKILL, and the result is UNKNOWN with a message that says so; after a normal exit
the group is killed too, so nothing a check left behind outlives it.

Output follows the Nagios plugin API: the first line is ``TEXT | PERFDATA``, later
lines are long text until a line with ``|``, after which everything is perfdata.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .nrpecfg import ARG_MACRO, Command
from .states import UNKNOWN, state_name

log = logging.getLogger(__name__)

__all__ = ["CheckError", "CheckResult", "build_argv", "parse_output", "run_check"]

#: The PATH checks run with (NRPE runs them with whatever PATH its daemon had).
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: At most this many bytes of a check's output are read.
MAX_OUTPUT_BYTES = 16384
#: Seconds between SIGTERM and SIGKILL for a check past its deadline.
KILL_GRACE = 0.5
#: What Nagios shows for a check that printed nothing.
NO_OUTPUT = "(No output returned from plugin)"


class CheckError(Exception):
    """The check could not be run as asked (bad arguments, program missing); the
    message is for the caller."""


@dataclass
class CheckResult:
    """What one check run gave."""

    exitcode: int
    output: str
    perfdata: str
    #: True when the check was killed at its deadline
    timed_out: bool = False
    #: the exit status as the process gave it, before mapping to 0-3
    raw_status: int | None = None
    #: seconds it ran
    elapsed: float = 0.0

    def as_reply(self) -> dict[str, Any]:
        return {"exitcode": self.exitcode, "output": self.output, "perfdata": self.perfdata}


def build_argv(command: Command, args: Sequence[str]) -> list[str]:
    """``command``'s argv with ``$ARGn$`` replaced by ``args[n-1]``, each argument staying
    inside the one argv token it is written in.

    :raises CheckError: a missing argument, or more arguments than the command uses
    """
    wanted = command.arguments
    if len(args) > wanted:
        if wanted == 0:
            raise CheckError(f"command {command.name} takes no arguments, got {len(args)}")
        raise CheckError(f"command {command.name} takes {wanted} argument(s), got {len(args)}")
    if len(args) < wanted:
        raise CheckError(f"command {command.name} needs {wanted} argument(s) ($ARG1$..${wanted}$"
                         f"), got {len(args)}")
    return [ARG_MACRO.sub(lambda m: args[int(m.group(1)) - 1], token) for token in command.argv]


def parse_output(text: str) -> tuple[str, str]:
    """``(output, perfdata)`` from a plugin's stdout, as the Nagios plugin API defines.

    >>> parse_output("OK - load 0.1|load1=0.1;5;10;0\\nlong text\\n| more=1\\nlast=2")
    ('OK - load 0.1\\nlong text', 'load1=0.1;5;10;0 more=1 last=2')
    """
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return "", ""
    first_text, _, first_perf = lines[0].partition("|")
    texts = [first_text.strip()]
    perfs = [first_perf.strip()]
    in_perf = False
    for line in lines[1:]:
        if in_perf:
            perfs.append(line.strip())
            continue
        before, bar, after = line.partition("|")
        texts.append(before.rstrip())
        if bar:
            in_perf = True
            perfs.append(after.strip())
    while len(texts) > 1 and not texts[-1].strip():
        texts.pop()
    return "\n".join(texts), " ".join(p for p in perfs if p)


def _program(argv0: str) -> str:
    if os.sep in argv0:
        if not os.path.isfile(argv0):
            raise CheckError(f"{argv0} not found on this node")
        if not os.access(argv0, os.X_OK):
            raise CheckError(f"{argv0} is not executable")
        return argv0
    found = shutil.which(argv0, path=SAFE_PATH)
    if found is None:
        raise CheckError(f"{argv0} not found on this node (looked in {SAFE_PATH})")
    return found


def _user_ids(user: str | None) -> dict[str, Any]:
    """``Popen`` keyword arguments to run as ``user`` (its primary group, no other groups)."""
    if not user:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise CheckError(f"plugins.nrpe.user {user!r} does not exist on this node") from None
    if entry.pw_uid == os.geteuid():
        return {}
    if os.geteuid() != 0:
        raise CheckError(f"plugins.nrpe.user is {user!r} but collectived does not run as root, "
                         "so it cannot switch users")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_check(argv: Sequence[str], timeout: float, *, user: str | None = None,
              name: str = "") -> CheckResult:
    """Run ``argv`` and return its state, output and perfdata.

    Exit statuses 0-3 are OK, WARNING, CRITICAL and UNKNOWN; anything else (a signal,
    127 for a missing library, ...) is UNKNOWN, as Nagios treats it.

    :raises CheckError: the program is missing or not executable, or ``user`` is unusable
    """
    program = _program(argv[0])
    ids = _user_ids(user)
    env = {"PATH": SAFE_PATH, "LANG": "C", "LC_ALL": "C"}
    label = name or os.path.basename(argv[0])
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen([program, *argv[1:]], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                    cwd="/", close_fds=True, **ids)
        except OSError as exc:
            raise CheckError(f"{argv[0]} could not be started: {exc.strerror or exc}") from None
        timed_out = False
        try:
            status = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                status = proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                status = proc.wait()
        _kill_group(proc.pid, signal.SIGKILL)  # whatever the check left running in its group
        elapsed = time.monotonic() - started
        out.seek(0)
        raw = out.read(MAX_OUTPUT_BYTES + 1)
    text = raw[:MAX_OUTPUT_BYTES].decode("utf-8", errors="replace")
    if len(raw) > MAX_OUTPUT_BYTES:
        text += "\n(output truncated)"
    output, perfdata = parse_output(text)
    if timed_out:
        log.warning("check %s timed out after %.1f s and was killed", label, timeout)
        message = (f"UNKNOWN: check {label} timed out after {timeout:g} s and was killed "
                   "with its process group")
        return CheckResult(UNKNOWN, message, "", timed_out=True, raw_status=status, elapsed=elapsed)
    if not output:
        output = NO_OUTPUT
    if 0 <= status <= 3:
        return CheckResult(status, output, perfdata, raw_status=status, elapsed=elapsed)
    how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
    note = f"(check {label} {how}, which is out of bounds: {state_name(UNKNOWN)})"
    return CheckResult(UNKNOWN, f"{output} {note}" if output != NO_OUTPUT else note, perfdata,
                       raw_status=status, elapsed=elapsed)
