"""docs/authors.md cannot rot: every code block in it is run, written, shown or skipped
with a reason, and the runnable ones run as written — in one bash session, in a fresh
virtualenv whose collective-core comes from a wheel (as an author outside this
repository gets it from PyPI), with the files the guide shows written where it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from collective.fleet import fleet_down
from collective.testing.wheels import build_wheel

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "authors.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!-- (file|not run): (.+?) -->$")
EOF_WORD = "COLLECTIVE_GUIDE_EOF"


@dataclass
class Block:
    line: int
    language: str
    text: str
    marker: tuple[str, str] | None  # ("file", path) or ("not run", why)

    @property
    def kind(self) -> str:
        if self.marker is not None:
            return self.marker[0]
        return {"sh": "run", "text": "shown"}.get(self.language, "unaccounted")


def blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        previous = lines[index - 1] if index else ""
        marker = MARKER.match(previous)
        end = index + 1
        while end < len(lines) and lines[end] != "```":
            end += 1
        assert end < len(lines), f"docs/authors.md:{index + 1}: the block is never closed"
        found.append(Block(index + 1, fence.group(1), "\n".join(lines[index + 1:end]) + "\n",
                           (marker.group(1), marker.group(2)) if marker else None))
        index = end + 1
    return found


def script(guide: list[Block]) -> str:
    """One bash script: the shell blocks, and here-documents for the file blocks."""
    parts = ["set -euo pipefail", 'GUIDE_ROOT="$PWD"']
    for number, block in enumerate(guide):
        if block.kind == "run":
            parts.append(block.text)
        elif block.kind == "file":
            path = block.marker[1]  # type: ignore[index]
            assert EOF_WORD not in block.text
            parts.append(f'mkdir -p "$GUIDE_ROOT/$(dirname {path})"\n'
                         f"cat > \"$GUIDE_ROOT/{path}\" <<'{EOF_WORD}'\n{block.text}{EOF_WORD}")
        else:
            continue
        parts.append(f'echo "::guide-block {number} line {block.line} done" >&2')
    return "\n".join(parts) + "\n"


def test_every_block_is_run_written_shown_or_skipped_with_a_reason():
    guide = blocks(GUIDE.read_text())
    kinds = [b.kind for b in guide]
    assert "unaccounted" not in kinds, [(b.line, b.language) for b in guide if b.kind == "unaccounted"]
    assert kinds.count("run") >= 7 and kinds.count("file") >= 7
    skipped = [b for b in guide if b.kind == "not run"]
    assert len(skipped) <= 2, [b.line for b in skipped]  # only what needs PyPI or a real node
    for block in guide:
        if block.kind == "file" and block.marker[1].endswith((".yml", ".yaml")):  # type: ignore[index]
            assert isinstance(yaml.safe_load(block.text), dict)
        if block.kind == "file" and block.marker[1].endswith(".py"):  # type: ignore[index]
            compile(block.text, block.marker[1], "exec")  # type: ignore[index]


@pytest.mark.slow
def test_the_guide_runs_as_written(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    build_wheel(ROOT / "core", wheelhouse)
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir()
    base = Path(getattr(sys, "_base_executable", sys.executable)).parent
    real_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pip"
    env = {
        "PATH": f"{base}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PIP_FIND_LINKS": str(wheelhouse),
        "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(real_cache)),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "NO_COLOR": "1",
    }
    for name in ("CI", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        if name in os.environ:
            env[name] = os.environ[name]
    guide = blocks(GUIDE.read_text())
    (tmp_path / "guide.sh").write_text(script(guide))
    try:
        proc = subprocess.run(["bash", str(tmp_path / "guide.sh")], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1200)
    finally:
        for state in work.rglob("fleet.json"):
            fleet_down(state.parent, quiet=True)
    done = re.findall(r"::guide-block (\d+) line (\d+) done", proc.stderr)
    if proc.returncode != 0:
        failed = next((b for n, b in enumerate(guide)
                       if b.kind in ("run", "file") and n > (int(done[-1][0]) if done else -1)), None)
        where = f"docs/authors.md:{failed.line}" if failed else "after the last block"
        pytest.fail(f"the guide failed at {where} (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", pytrace=False)
    assert len(done) == sum(1 for b in guide if b.kind in ("run", "file"))
    out = proc.stdout
    assert "HELLO, WORLD! (FROM NODE-001)" in out and "HELLO, WORLD! (FROM NODE-002)" in out
    assert "refused with exit status 1" in out
    assert "node-001: Hello, world! (from node-001)" in out
    assert re.search(r"^agent-hello\s+collective-agent-hello 0\.1\.0\s+ok$", out, re.M)
    assert "agents: hello; data plugins: hello; commands: hello" in out
    project = work / "collective-agent-hello"
    assert sorted(p.name for p in (project / "dist").iterdir()) == [
        "collective_agent_hello-0.1.0-py3-none-any.whl", "collective_agent_hello-0.1.0.tar.gz"]
    core = subprocess.run([str(work / "collective-dev" / "bin" / "python"), "-c",
                           "import collective, sys; print(collective.__file__)"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert "/site-packages/collective/" in core.stdout, core.stdout + core.stderr  # not a checkout
