"""``process("nginx: master").exists``: whether a process whose command line contains
a literal substring runs on the node (MCollective ``process('ruby').exists=true``).

The argument passes the same allow-list as the agent's ``pattern``; psutil is imported
only when a node evaluates the function.
"""

from __future__ import annotations

from typing import Any

from collective.data import DataPlugin

from .common import PATTERN_DESCRIPTION, pattern_ok


class ProcessData(DataPlugin):
    name = "process"
    description = "Whether a process whose command line contains the argument runs here"
    argument = "Literal substring of a command line"
    outputs = {
        "exists": "Whether at least one process matches",
        "count": "How many processes match",
    }
    default_output = "exists"

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        if not argument or not pattern_ok(argument):
            raise ValueError(f"process() needs a non-empty pattern: {PATTERN_DESCRIPTION}")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        import psutil

        from .agent import command_text

        pattern = argument or ""
        count = sum(1 for proc in psutil.process_iter(attrs=["cmdline", "name"], ad_value=None)
                    if pattern in command_text(proc.info))
        return {"exists": count > 0, "count": count}
