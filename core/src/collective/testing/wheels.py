"""Build a plugin's wheel on its own and install it into a fresh virtual environment
that holds only collective-core, then ask that environment's plugin manager what it
found. Catches a DDL missing from the wheel, a wrong entry point, and imports of a
dependency that only another distribution declares.

Where the fresh venv's collective-core comes from, first match wins:

1. the ``core`` argument: a wheel, an sdist, a source directory, or a requirement
   such as ``collective-core==0.1.0``;
2. ``$COLLECTIVE_CORE_WHEEL``: a wheel (or anything ``core`` takes);
3. the source checkout this collective-core runs from, built into a wheel (in the
   collective repository);
4. ``collective-core==<the installed version>`` from pip's index and find-links
   (PyPI for a released core; ``PIP_FIND_LINKS=dist`` for a wheelhouse).

So the same test runs in this repository, in a plugin's own repository, and in CI
that installs collective-core from PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

from .. import __version__

#: core/ when this collective-core runs from a source checkout
SOURCE = Path(__file__).resolve().parents[3]

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
    "data_plugins": sorted(pm.data_plugins()),
}
print(json.dumps(out))
"""


def source_checkout() -> Path | None:
    """The ``core/`` directory of the collective checkout this core runs from, or None
    (an installed, non-editable collective-core)."""
    pyproject = SOURCE / "pyproject.toml"
    if pyproject.is_file() and 'name = "collective-core"' in pyproject.read_text():
        return SOURCE
    return None


def build_wheel(project: Path, outdir: Path) -> Path:
    """``python -m build --wheel`` for one distribution; returns the wheel's path.

    :raises subprocess.CalledProcessError: the build failed (its output is attached)
    """
    outdir.mkdir(parents=True, exist_ok=True)
    before = set(outdir.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(project)],
                   check=True, capture_output=True, text=True, timeout=600)
    built = sorted(set(outdir.glob("*.whl")) - before) or sorted(outdir.glob("*.whl"))
    return built[-1]


def core_requirement(workdir: Path, core: str | Path | None = None) -> str:
    """What to ``pip install`` for collective-core in a fresh venv (see the module doc)."""
    chosen = core if core is not None else os.environ.get("COLLECTIVE_CORE_WHEEL") or None
    if chosen is not None:
        text = str(chosen)
        path = Path(text)
        if path.is_dir():
            return str(build_wheel(path, workdir / "wheels" / "core"))
        return str(path) if path.exists() else text
    checkout = source_checkout()
    if checkout is not None:
        return str(build_wheel(checkout, workdir / "wheels" / "core"))
    return f"collective-core=={__version__}"


def clean_env() -> dict[str, str]:
    """This environment without ``PYTHONPATH``/``PYTHONHOME``, so a fresh venv sees only
    what is installed in it."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def make_venv(env_dir: Path, *requirements: str, timeout: float = 900) -> Path:
    """A new venv in ``env_dir`` with ``requirements`` pip-installed; returns its python.

    :raises RuntimeError: pip failed; the message has pip's last lines (and, when
        collective-core could not be found, where it may come from)
    """
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    if requirements:
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements],
                              capture_output=True, text=True, timeout=timeout, env=clean_env())
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            hint = ""
            if any(r.startswith("collective-core==") for r in requirements):
                hint = ("; collective-core comes from PyPI, from PIP_FIND_LINKS, or from the wheel "
                        "named by COLLECTIVE_CORE_WHEEL")
            raise RuntimeError(f"pip install {' '.join(requirements)} failed: {tail}{hint}")
    return python


def fresh_venv_with(plugin: Path, workdir: Path, core: str | Path | None = None) -> dict[str, Any]:
    """Install collective-core and ``plugin``'s wheel (built alone) into a new venv in
    ``workdir`` and return what its plugin manager reports: ``statuses`` (entry point
    name → ok / failed: ...), ``agents``, ``ddls`` (name → version), ``fact_sources``,
    ``authorizers``, ``data_plugins``.

    :param core: where collective-core comes from (see the module doc)
    """
    requirement = core_requirement(workdir, core)
    plugin_wheel = build_wheel(plugin, workdir / "wheels" / plugin.name)
    python = make_venv(workdir / "venv", requirement, str(plugin_wheel))
    probe = subprocess.run([str(python), "-c", _PROBE], check=True, capture_output=True, text=True,
                           timeout=120, cwd=workdir, env=clean_env())
    return json.loads(probe.stdout)
