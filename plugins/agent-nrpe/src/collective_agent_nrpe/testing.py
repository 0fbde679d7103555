"""Helpers for the nrpe agent's tests (plugin tests and the end-to-end tests share them):
where Debian's ``monitoring-plugins-basic`` puts the real Nagios plugins, and an NRPE
configuration written from a mapping. Not imported by the agent or the plugin module."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

#: Debian's monitoring-plugins-basic installs the plugins here.
PLUGINS_DIR = Path("/usr/lib/nagios/plugins")
#: The real plugins the tests run.
NEEDED = ("check_load", "check_disk", "check_procs", "check_dummy", "check_tcp")


def missing_plugins() -> str | None:
    """Why the real Nagios plugins cannot be used here, or None."""
    absent = [name for name in NEEDED if not (PLUGINS_DIR / name).is_file()]
    if absent:
        return (f"{', '.join(absent)} not found in {PLUGINS_DIR}: install Debian's "
                "monitoring-plugins-basic (make system-deps)")
    return None


def plugin(name: str) -> str:
    """The path of a real Nagios plugin."""
    return str(PLUGINS_DIR / name)


def write_nrpe_cfg(path: Path, commands: Mapping[str, str], extra: str = "") -> Path:
    """Write ``command[NAME]=LINE`` for each item (and ``extra`` lines) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"command[{name}]={line}" for name, line in commands.items()]
    path.write_text("# written by collective's nrpe tests\n" + "\n".join(lines) + "\n" + extra)
    return path
