"""The children the canary's ``spawn`` action starts (argv[0] ``canary-child-MARKER``)."""

from __future__ import annotations

from typing import Any


def children_named(marker: str) -> list[Any]:
    """Live (not zombie) processes whose argv[0] is ``canary-child-MARKER``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline and cmdline[0] == f"canary-child-{marker}" \
                and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found
