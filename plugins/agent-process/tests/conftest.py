"""Real processes with a unique marker in their argv, stopped by pid at teardown."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import psutil
import pytest

SLEEPER = "import time; time.sleep(300)"

class Spawner:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def __call__(self, *argv: str, code: str = SLEEPER, user: str | None = None,
                 stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen:
        """``python -c CODE *argv``; as another ``user``, ``sleep 300`` with argv[0] set to
        the last of ``argv`` (that user may not be able to run this venv's Python)."""
        if user is None:
            args, executable = [sys.executable, "-c", code, *argv], None
        else:
            args, executable = [argv[-1], "300"], shutil.which("sleep")
        proc = subprocess.Popen(args, executable=executable, user=user, cwd="/",
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        wait_for_cmdline(proc.pid, argv[-1] if argv else None)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()


def wait_for_cmdline(pid: int, needle: str | None, timeout: float = 10.0) -> None:
    """Until ``pid`` has exec'd and shows ``needle`` in its command line."""
    if needle is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if needle in " ".join(psutil.Process(pid).cmdline()):
                return
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never showed {needle!r} in its command line")


@pytest.fixture
def spawn():
    spawner = Spawner()
    try:
        yield spawner
    finally:
        spawner.stop()


@pytest.fixture
def marker() -> str:
    return f"collective-proc-test-{uuid.uuid4().hex[:12]}"
