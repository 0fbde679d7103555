"""Build a plugin's wheel on its own and install it into a fresh virtual environment
that holds only collective-core, then ask that environment's plugin manager what
it found. Catches a DDL missing from the wheel, a wrong entry point, and imports
of a dependency that only another workspace member declares.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

CORE = Path(__file__).resolve().parents[3]  # core/ (the collective-core distribution)

_PROBE = """
import json, sys
from collective.plugins import get_plugin_manager
from collective.ddl import AgentDDL
pm = get_plugin_manager()
ddls = pm.ddl_files()
out = {
    "statuses": {n: s.status for n, s in pm.statuses.items() if not s.builtin},
    "agents": sorted(pm.agents()),
    "ddls": {n: AgentDDL.load(r, formats=pm.formats()).metadata["version"] for n, r in ddls.items()},
    "fact_sources": sorted(pm.fact_sources()),
    "authorizers": sorted(pm.authorizers()),
}
print(json.dumps(out))
"""


def build_wheel(project: Path, outdir: Path) -> Path:
    """``python -m build --wheel`` for one distribution; returns the wheel's path."""
    outdir.mkdir(parents=True, exist_ok=True)
    before = set(outdir.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(project)],
                   check=True, capture_output=True, text=True, timeout=600)
    built = sorted(set(outdir.glob("*.whl")) - before) or sorted(outdir.glob("*.whl"))
    return built[-1]


def fresh_venv_with(plugin: Path, workdir: Path) -> dict[str, Any]:
    """Install collective-core's wheel and ``plugin``'s wheel into a new venv in ``workdir``
    and return what its plugin manager reports (statuses, agents, DDL versions, ...)."""
    wheels = workdir / "wheels"
    core_wheel = build_wheel(CORE, wheels / "core")
    plugin_wheel = build_wheel(plugin, wheels / plugin.name)
    env_dir = workdir / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(core_wheel), str(plugin_wheel)],
                   check=True, capture_output=True, text=True, timeout=900)
    probe = subprocess.run([str(python), "-c", _PROBE], check=True, capture_output=True, text=True,
                           timeout=120, cwd=workdir)
    return json.loads(probe.stdout)
