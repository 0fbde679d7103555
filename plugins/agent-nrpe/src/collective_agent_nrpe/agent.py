"""The ``nrpe`` agent (MCollective/Choria ``nrpe`` agent 3.x): run the checks of ``nrpe.cfg``.

``runcommand`` runs one check by name; ``runallcommands`` runs every check that takes
no arguments. Only commands defined in the node's NRPE configuration can run (see
:mod:`.nrpecfg`); a caller names a check, never a program.

A check that is not OK replies status 1 with the state as the status message (as
MCollective's agent does), so ``mco rpc`` and scripts see the failure; its
``exitcode``, ``output`` and ``perfdata`` are in the reply all the same.

Settings (``plugins: {nrpe: {...}}`` in the daemon config):

- ``conf_file``: NRPE's main file(s), default ``/etc/nagios/nrpe.cfg`` (``include`` and
  ``include_dir`` lines are followed)
- ``conf_dir``: directories of ``*.cfg`` files, default ``/etc/nagios/nrpe.d``
- ``command_timeout``: seconds one check may run (default 10, at most the DDL timeout minus 2)
- ``allow_arguments``: substitute ``args`` into ``$ARGn$`` (default false)
- ``argument_pattern``: a regular expression every argument must also match (narrows the
  built-in allow-list, never widens it)
- ``user``: run checks as this user (collectived must run as root), e.g. ``nagios``
- ``parallel``: how many checks ``runallcommands`` runs at once (default 4)
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from collective.agent import Aborted, Agent, InvalidData, Reply, Request, action

from . import nrpecfg
from .runner import CheckError, CheckResult, build_argv, run_check
from .states import (
    ARGUMENTS_DESCRIPTION,
    OK,
    UNKNOWN,
    arguments_ok,
    split_args,
    state_name,
    worst,
)

#: Seconds kept back from the DDL timeout so the reply leaves before the client gives up.
MARGIN = 2.0
DEFAULT_COMMAND_TIMEOUT = 10.0
DEFAULT_PARALLEL = 4


class Nrpe(Agent):
    """Run the Nagios checks named in ``command[...]`` lines of the NRPE configuration."""

    name = "nrpe"

    # -- settings (not actions) ---------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return self.config.plugin("nrpe")

    def budget(self) -> float:
        """Seconds an action may spend on checks."""
        return max(float(self.timeout) - MARGIN, 1.0)

    def command_timeout(self) -> float:
        value = self.settings().get("command_timeout", DEFAULT_COMMAND_TIMEOUT)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.log.warning("plugins.nrpe.command_timeout=%r is not a number; using %s", value,
                             DEFAULT_COMMAND_TIMEOUT)
            seconds = DEFAULT_COMMAND_TIMEOUT
        return min(max(seconds, 0.5), self.budget())

    def commands(self) -> nrpecfg.NrpeConfig:
        """The NRPE configuration, read afresh (an edited nrpe.cfg needs no restart)."""
        settings = self.settings()
        return nrpecfg.load(settings.get("conf_file"), settings.get("conf_dir"))

    def check_arguments(self, command: nrpecfg.Command, args: list[str]) -> None:
        """Refuse arguments unless ``allow_arguments``; each must pass both allow-lists."""
        if not args:
            return
        if not self.settings().get("allow_arguments", False):
            raise Aborted(f"Arguments are not allowed on this node: command {command.name} was "
                          "called with args, but plugins.nrpe.allow_arguments is not true")
        if not arguments_ok("!".join(args)):
            raise InvalidData(f"Cannot validate input args: should be {ARGUMENTS_DESCRIPTION}")
        pattern = self.settings().get("argument_pattern")
        if pattern:
            try:
                rx = re.compile(str(pattern))
            except re.error as exc:
                raise Aborted(f"plugins.nrpe.argument_pattern is not a valid regular expression: "
                              f"{exc}") from None
            for arg in args:
                if not rx.fullmatch(arg):
                    raise InvalidData(f"Cannot validate input args: {arg!r} does not match this "
                                      "node's plugins.nrpe.argument_pattern")

    def run(self, command: nrpecfg.Command, args: list[str], timeout: float) -> CheckResult:
        """Run one defined command; problems become an UNKNOWN result, never an exception."""
        if command.problem is not None:
            return CheckResult(UNKNOWN, f"UNKNOWN: command {command.name} ({command.source}) "
                               f"cannot run: {command.problem}", "")
        try:
            argv = build_argv(command, args)
            return run_check(argv, timeout, user=self.settings().get("user"), name=command.name)
        except CheckError as exc:
            return CheckResult(UNKNOWN, f"UNKNOWN: {exc}", "")

    # -- actions -------------------------------------------------------------------------
    @action
    def runcommand(self, request: Request, reply: Reply) -> None:
        name = request["command"]
        reply["command"] = name
        config = self.commands()
        command = config.commands.get(name)
        if command is None:
            reply["exitcode"], reply["output"], reply["perfdata"] = UNKNOWN, f"No such command: {name}", ""
            reply.fail(f"UNKNOWN: No such command: {name} (read: {config.describe_sources()})")
            return
        args = split_args(request.get("args"))
        self.check_arguments(command, args)
        if command.problem is None:
            try:
                build_argv(command, args)
            except CheckError as exc:
                raise InvalidData(f"Cannot validate input args: {exc}") from None
        result = self.run(command, args, self.command_timeout())
        reply.update(result.as_reply())
        self.log.info("nrpe %s for %s: %s", name, request.caller, state_name(result.exitcode))
        if result.exitcode != OK:
            reply.fail(status_message(result))

    @action
    def runallcommands(self, request: Request, reply: Reply) -> None:
        config = self.commands()
        runnable = {name: c for name, c in sorted(config.commands.items()) if c.arguments == 0}
        if not runnable:
            raise Aborted(f"No commands without arguments are defined (read: "
                          f"{config.describe_sources()})")
        deadline = time.monotonic() + self.budget()
        per_check = self.command_timeout()
        try:
            parallel = max(1, min(int(self.settings().get("parallel", DEFAULT_PARALLEL)), 16))
        except (TypeError, ValueError):
            parallel = DEFAULT_PARALLEL

        def one(command: nrpecfg.Command) -> CheckResult:
            left = deadline - time.monotonic()
            if left <= 0.2:
                return CheckResult(UNKNOWN, f"UNKNOWN: not run: the action's {self.budget():g} s "
                                   "were used up by the other checks", "")
            return self.run(command, [], min(per_check, left))

        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="nrpe-check") as pool:
            results = dict(zip(runnable, pool.map(one, runnable.values()), strict=True))
        reply["commands"] = {name: r.as_reply() for name, r in results.items()}
        reply["exitcode"] = worst(r.exitcode for r in results.values())


def status_message(result: CheckResult) -> str:
    """``CRITICAL: <first line>``, or the first line alone when it names its state
    (``LOAD WARNING - load average: ...``); at most 300 characters."""
    state = state_name(result.exitcode)
    first = result.output.splitlines()[0].strip() if result.output else ""
    if state in first.upper()[:40]:
        return first[:300]
    return f"{state}: {first}"[:300] if first else state
