"""The ``nrpe()`` data plugin: ``-S 'nrpe("check_load").exitcode=0'`` (MCollective's
``Nrpe('check_disk1').exitcode=0``).

It runs the named command of the node's NRPE configuration (never with arguments)
with a short deadline, ``plugins.nrpe.data_timeout`` (default 5 s), because it runs
while the node decides whether the request is for it. An unknown command, or one that
cannot run, is ``exitcode=3`` (UNKNOWN), as in MCollective.
"""

from __future__ import annotations

from typing import Any

from collective.data import DataPlugin

from .nrpecfg import COMMAND_NAME
from .states import UNKNOWN, state_name

#: Default seconds one lookup may take.
DEFAULT_DATA_TIMEOUT = 5.0


class NrpeData(DataPlugin):
    """``nrpe("check_load").exitcode``: the state of one NRPE check on the node."""

    name = "nrpe"
    description = "The state of one NRPE check: its exit code (0 OK ... 3 UNKNOWN)"
    argument = "An NRPE command name, e.g. check_load"
    outputs = {
        "exitcode": "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for an unknown command)",
        "state": "OK, WARNING, CRITICAL or UNKNOWN",
        "defined": "Whether the node's NRPE configuration defines the command",
    }
    default_output = "exitcode"

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        if not COMMAND_NAME.fullmatch(argument or ""):
            raise ValueError(f"nrpe() takes an NRPE command name matching {COMMAND_NAME.pattern}")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        from . import nrpecfg
        from .runner import CheckError, run_check

        settings = self.settings(node, "nrpe")
        command = nrpecfg.load(settings.get("conf_file"), settings.get("conf_dir")).commands.get(
            argument or "")
        if command is None:
            return {"exitcode": UNKNOWN, "state": state_name(UNKNOWN), "defined": False}
        if command.problem is not None or command.arguments:
            return {"exitcode": UNKNOWN, "state": state_name(UNKNOWN), "defined": True}
        try:
            timeout = float(settings.get("data_timeout", DEFAULT_DATA_TIMEOUT))
        except (TypeError, ValueError):
            timeout = DEFAULT_DATA_TIMEOUT
        try:
            result = run_check(list(command.argv), min(max(timeout, 0.5), 10.0),
                               user=settings.get("user"), name=command.name)
        except CheckError:
            return {"exitcode": UNKNOWN, "state": state_name(UNKNOWN), "defined": True}
        return {"exitcode": result.exitcode, "state": state_name(result.exitcode), "defined": True}
