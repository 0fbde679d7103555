"""Fixtures for the service agent's tests: a real SysV init script, a real systemctl
(docker-systemctl-replacement in a private ``--root``) and argv-logging stubs."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from collective.testing import require
from collective_agent_service.testing import InitScript, available

#: The docker-systemctl-replacement release the tests download when it is not installed.
SYSTEMCTL_REPLACEMENT = "docker-systemctl-replacement==1.7.1097"


@pytest.fixture
def init_script():
    """An installed ``/etc/init.d/collective-test-*`` script; removed afterwards."""
    why = available()
    require(why is None, f"SysV init script tests: {why}")
    script = InitScript().install()
    try:
        yield script
    finally:
        script.remove()


@pytest.fixture(scope="session")
def systemctl3(tmp_path_factory) -> Path:
    """Path of ``systemctl3.py`` from docker-systemctl-replacement (Debian's ``systemctl``
    package, which cannot be installed next to systemd): from the venv when installed,
    else from its wheel, downloaded once with pip."""
    spec = importlib.util.find_spec("systemctl2")
    if spec is not None and spec.submodule_search_locations:
        found = Path(next(iter(spec.submodule_search_locations))) / "systemctl3.py"
        if found.is_file():
            return found
    where = tmp_path_factory.mktemp("systemctl-replacement")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary",
                        ":all:", "-d", str(where), SYSTEMCTL_REPLACEMENT],
                       check=True, capture_output=True, text=True, timeout=180)
        [wheel] = where.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            target = where / "systemctl3.py"
            target.write_bytes(archive.read("systemctl2/systemctl3.py"))
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        require(False, f"docker-systemctl-replacement is not installed and could not be "
                       f"downloaded: {exc}")
    return target


class FakeSystemd:
    """A private systemd root: unit files, and a ``systemctl`` wrapper around
    docker-systemctl-replacement with ``--root`` pointing at it."""

    def __init__(self, base: Path, systemctl3: Path) -> None:
        self.root = base / "sd" / "root" / "x"  # the replacement wants >= 3 levels
        self.units = self.root / "etc" / "systemd" / "system"
        self.units.mkdir(parents=True)
        self.bin = base / "sd-bin"
        self.bin.mkdir()
        self.systemctl = self.bin / "systemctl"
        # its lock files would go to /run/systemd even with --root: keep them in the root too
        self.systemctl.write_text(f'#!/bin/sh\nexec {sys.executable} {systemctl3} --root={self.root} '
                                  f'-c _notify_socket_folder={self.root}/lock "$@"\n')
        self.systemctl.chmod(0o755)
        self.started: list[tuple[str, int]] = []

    def add_unit(self, name: str | None = None) -> tuple[str, int]:
        """A ``Type=simple`` unit running ``sleep SECONDS``; returns (name, seconds)."""
        name = name or "collective-test-" + secrets.token_hex(4)
        seconds = 3000 + secrets.randbelow(600)
        (self.units / f"{name}.service").write_text(
            "[Unit]\nDescription=collective test service\n\n"
            f"[Service]\nType=simple\nExecStart=/usr/bin/sleep {seconds}\n\n"
            "[Install]\nWantedBy=multi-user.target\n")
        self.started.append((name, seconds))
        return name, seconds

    @staticmethod
    def pids(seconds: int) -> list[int]:
        """Live ``sleep SECONDS`` processes."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:2] in ([b"/usr/bin/sleep", str(seconds).encode()],
                               [b"sleep", str(seconds).encode()]):
                found.append(int(entry.name))
        return found

    def wait(self, seconds: int, running: bool, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while bool(self.pids(seconds)) != running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def cleanup(self) -> None:
        for name, seconds in self.started:
            subprocess.run([str(self.systemctl), "stop", "--", name], capture_output=True, timeout=30)
            for pid in self.pids(seconds):
                try:
                    os.kill(pid, 15)
                except OSError:
                    pass


@pytest.fixture
def fake_systemd(tmp_path, systemctl3):
    sd = FakeSystemd(tmp_path, systemctl3)
    try:
        yield sd
    finally:
        sd.cleanup()


class StubBin:
    """A directory of argv-logging stubs, put first on ``PATH``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = directory / "argv.log"

    def write(self, name: str, replies: dict[str, tuple[int, str]] | None = None,
              sleep: float = 0.0) -> Path:
        """An executable ``name`` that appends ``[name, *argv]`` (JSON) to the log and
        answers ``replies[word]`` = (exit status, output) for the first argument word
        (options skipped) found in ``replies``; else exit 0 with no output."""
        stub = self.dir / name
        stub.write_text(f"""#!{sys.executable}
import json, sys, time
with open({str(self.log)!r}, "a") as handle:
    handle.write(json.dumps([{name!r}, *sys.argv[1:]]) + "\\n")
time.sleep({sleep!r})
replies = {json.dumps(replies or {})}
key = next((w for w in sys.argv[1:] if not w.startswith("-") and w in replies), None)
code, out = replies.get(key, (0, ""))
sys.stdout.write(out)
sys.exit(code)
""")
        stub.chmod(0o755)
        return stub

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture
def stub_bin(tmp_path, monkeypatch):
    stubs = StubBin(tmp_path / "stub-bin")
    monkeypatch.setenv("PATH", f"{stubs.dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return stubs
