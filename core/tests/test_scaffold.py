"""``mco plugin generate``: what it writes, the names it refuses, and that a refusal
writes nothing. (That the result builds and passes its own tests in a fresh venv is
tests/test_plugin_authoring_e2e.py.)"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from collective.agent import check_agent
from collective.ddl import AgentDDL
from collective.scaffold import GenerateError, generate


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_an_agent_distribution_has_everything(tmp_path):
    made = generate("agent", "nginx_status", tmp_path, ["check", "reload"])
    root = tmp_path / "collective-agent-nginx-status"
    assert made.directory == root
    assert tree(root) == [
        ".gitignore", "README.md", "pyproject.toml",
        "src/collective_agent_nginx_status/__init__.py",
        "src/collective_agent_nginx_status/agent.py",
        "src/collective_agent_nginx_status/nginx_status.json",
        "src/collective_agent_nginx_status/plugin.py",
        "src/collective_agent_nginx_status/py.typed",
        "tests/test_nginx_status_agent.py", "tests/test_nginx_status_plugin.py",
    ]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'name = "collective-agent-nginx-status"' in pyproject
    assert 'agent-nginx-status = "collective_agent_nginx_status.plugin"' in pyproject
    assert 'keywords = ["collective", "collective-agent"]' in pyproject
    assert 'dependencies = ["collective-core>=0.1,<0.2"]' in pyproject
    ddl = AgentDDL.load(root / "src/collective_agent_nginx_status/nginx_status.json")
    assert ddl.name == "nginx_status" and ddl.metadata["version"] == "0.1.0"
    assert sorted(ddl.actions) == ["check", "reload"]
    for act in ddl.actions.values():
        assert list(act.inputs) == ["message"] and list(act.outputs) == ["result"]
        assert act.inputs["message"]["format"] == "shellsafe"


def test_the_generated_agent_matches_its_ddl(tmp_path):
    generate("agent", "hello", tmp_path, ["greet", "wave"])
    src = tmp_path / "collective-agent-hello" / "src"
    sys.path.insert(0, str(src))
    try:
        from collective_agent_hello.agent import Hello  # type: ignore[import-not-found]

        ddl = AgentDDL.load(src / "collective_agent_hello" / "hello.json")
        assert check_agent(Hello, ddl) == []
        assert Hello.actions() == {"greet", "wave"}
    finally:
        sys.path.remove(str(src))
        for name in [m for m in sys.modules if m.startswith("collective_agent_hello")]:
            del sys.modules[name]


@pytest.mark.parametrize(("kind", "files"), [
    ("data", ["src/collective_data_shout/data.py", "tests/test_shout_data.py"]),
    ("facts", ["src/collective_facts_shout/source.py", "tests/test_shout_facts.py"]),
])
def test_data_plugins_and_fact_sources(tmp_path, kind, files):
    generate(kind, "shout", tmp_path)
    root = tmp_path / f"collective-{kind}-shout"
    found = tree(root)
    for name in files + [f"src/collective_{kind}_shout/plugin.py", "tests/test_shout_plugin.py",
                         "pyproject.toml", "README.md", f"src/collective_{kind}_shout/py.typed"]:
        assert name in found
    assert f'{kind}-shout = "collective_{kind}_shout.plugin"' in (root / "pyproject.toml").read_text()


LONGEST = "x" * 40  # the longest name (and action) allowed


@pytest.mark.parametrize("kind", ["agent", "data", "facts"])
@pytest.mark.parametrize("name", ["lint_me", LONGEST])
def test_generated_python_parses_and_is_lint_clean(tmp_path, kind, name):
    """Lint clean, and within 100 columns unless the names are the longest allowed."""
    longest = name == LONGEST
    generate(kind, name, tmp_path, (["one", "y" * 40] if longest else ["one", "two"])
             if kind == "agent" else [])
    root = tmp_path / f"collective-{kind}-{name.replace('_', '-')}"
    for path in root.rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path))
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.fail("ruff is not installed next to this python (make install)")
    proc = subprocess.run([ruff, "check", "--no-cache", "--isolated", "--select", "E,F,W,B,UP",
                           *(["--ignore", "E501"] if longest else []),
                           "--line-length", "100", "--target-version", "py311", str(root)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(("kind", "name", "actions", "message"), [
    ("agent", "Nginx", [], "is not usable"),
    ("agent", "1st", [], "is not usable"),
    ("agent", "my-agent", [], "is not usable"),
    ("agent", "a" * 41, [], "is not usable"),
    ("agent", "class", [], "Python keyword"),
    ("agent", "rpcutil", [], "taken by a built-in"),
    ("agent", "ok", ["Bad"], "action name 'Bad' is not usable"),
    ("agent", "ok", ["config"], "attribute of collective.agent.Agent"),
    ("agent", "ok", ["a", "a"], "names an action twice"),
    ("agent", "ok", ["import"], "Python keyword"),
    ("data", "fstat", [], "taken by a built-in"),
    ("data", "ok", ["x"], "--actions is for agents"),
    ("facts", "static", [], "taken by a built-in"),
    ("widget", "ok", [], "cannot generate 'widget'"),
])
def test_bad_names_are_refused_and_nothing_is_written(tmp_path, kind, name, actions, message):
    with pytest.raises(GenerateError, match=message):
        generate(kind, name, tmp_path, actions)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_is_never_touched(tmp_path):
    existing = tmp_path / "collective-agent-hello"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me\n")
    with pytest.raises(GenerateError, match="already exists"):
        generate("agent", "hello", tmp_path)
    assert tree(existing) == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["collective-agent-hello"]


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    import collective.scaffold as scaffold

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scaffold.os, "rename", broken)
    with pytest.raises(OSError):
        generate("agent", "hello", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("option", "value"), [("description", 'say "hi"'), ("author", "")])
def test_metadata_that_would_break_the_files_is_refused(tmp_path, option, value):
    with pytest.raises(GenerateError):
        generate("agent", "hello", tmp_path, **{option: value})
    assert list(tmp_path.iterdir()) == []


def test_mco_plugin_generate(tmp_path):
    from collective.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["plugin", "generate", "agent", "hello", "--actions", "greet",
                                 "--dir", str(tmp_path), "--description", "Says hello",
                                 "--author", "Ada"])
    assert result.exit_code == 0, result.output
    assert f"Created collective-agent-hello in {tmp_path / 'collective-agent-hello'}" in result.output
    assert "mco rpc hello greet message=hello" in result.output
    ddl = json.loads((tmp_path / "collective-agent-hello/src/collective_agent_hello/hello.json")
                     .read_text())
    assert (ddl["metadata"]["description"], ddl["metadata"]["author"]) == ("Says hello", "Ada")
    again = runner.invoke(cli, ["plugin", "generate", "agent", "hello", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "already exists" in again.output
    bad = runner.invoke(cli, ["plugin", "generate", "facts", "Bad-Name", "--dir", str(tmp_path)])
    assert bad.exit_code == 1 and "is not usable" in bad.output
    for kind in ("data", "facts"):
        made = runner.invoke(cli, ["plugin", "generate", kind, "extra", "--dir", str(tmp_path)])
        assert made.exit_code == 0, made.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "collective-agent-hello", "collective-data-extra", "collective-facts-extra"]
