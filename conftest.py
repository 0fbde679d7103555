"""This repository's test session: the test-only plugins of ``tests/canary`` (the canary,
lb, pkgsim and checksim agents) are installed for the tests only, into a private
directory put first on ``sys.path`` and ``PYTHONPATH`` (so the daemons and ``mco``
processes the tests start see them too), never into the virtualenv: users' installs and
demo fleets carry the real agents only."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TEST_PLUGINS = [ROOT / "tests" / "canary"]

_installed: list[Path] = []


def pytest_configure(config):
    target = Path(tempfile.mkdtemp(prefix="collective-test-plugins-"))
    _installed.append(target)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-compile", "--disable-pip-version-check", "--target", str(target),
                           *map(str, TEST_PLUGINS)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"could not install the test-only plugins into {target}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])])
    importlib.invalidate_caches()


def pytest_unconfigure(config):
    while _installed:
        shutil.rmtree(_installed.pop(), ignore_errors=True)
