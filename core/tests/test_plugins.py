"""The plugin manager: isolation of broken plugins, switches, registries, docs."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import textwrap
from pathlib import Path

import pytest

from collective import hookspecs, plugins
from collective.plugins import PluginError, get_plugin_manager, resolve

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Write plugin modules to tmp_path and expose them as ``collective`` entry points."""

    def make(**modules: str) -> None:
        eps = []
        for name, source in modules.items():
            module = f"fakeplugin_{name.replace('-', '_')}_{abs(hash(tmp_path)) % 10**6}"
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            eps.append(md.EntryPoint(name=name, value=module, group="collective"))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(plugins, "entry_points", lambda: sorted(eps, key=lambda e: e.name))

    return make


GOOD = """
from collective import hookimpl

class Thing:
    name = "thing"

@hookimpl
def collective_connectors():
    return [Thing]
"""


def test_builtins_register_through_the_hooks():
    pm = get_plugin_manager(load_entrypoints=False)
    assert {"ed25519", "psk"} <= set(pm.security_providers())
    assert "stomp" in pm.connectors()
    assert "rpcutil" in pm.ddl_files()
    assert all(s.builtin and s.status == "ok" for s in pm.statuses.values())


def test_broken_plugin_is_reported_by_name_and_the_rest_load(fake_plugins, caplog):
    fake_plugins(**{"agent-broken": "raise ImportError('no module named frobnicate')", "agent-good": GOOD})
    pm = get_plugin_manager()
    assert pm.statuses["agent-broken"].status.startswith("failed: ImportError")
    assert pm.statuses["agent-good"].status == "ok"
    assert "thing" in pm.connectors()
    assert 'While loading plugin "agent-broken"' in caplog.text
    assert "COLLECTIVE_DISABLE_PLUGINS=agent-broken" in caplog.text


def test_strict_mode_raises(fake_plugins, monkeypatch):
    fake_plugins(**{"agent-broken": "raise RuntimeError('boom')"})
    monkeypatch.setenv("COLLECTIVE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="agent-broken"):
        get_plugin_manager()


def test_misspelled_hook_fails_that_plugin_only(fake_plugins):
    fake_plugins(**{
        "agent-typo": "from collective import hookimpl\n@hookimpl\ndef collective_agnets():\n    return []\n",
        "agent-good": GOOD,
    })
    pm = get_plugin_manager()
    assert pm.statuses["agent-typo"].status.startswith("failed")
    assert pm.pm.get_plugin("agent-typo") is None
    assert "thing" in pm.connectors()


def test_load_plugins_switch(fake_plugins, monkeypatch):
    fake_plugins(**{"agent-good": GOOD})
    monkeypatch.setenv("COLLECTIVE_LOAD_PLUGINS", "")
    pm = get_plugin_manager()
    assert pm.statuses["agent-good"].status == "blocked"
    assert "thing" not in pm.connectors()
    monkeypatch.setenv("COLLECTIVE_LOAD_PLUGINS", "agent-good")
    assert "thing" in get_plugin_manager().connectors()


def test_disable_plugins_switch(fake_plugins, monkeypatch):
    fake_plugins(**{"agent-good": GOOD})
    monkeypatch.setenv("COLLECTIVE_DISABLE_PLUGINS", "agent-good")
    pm = get_plugin_manager()
    assert pm.statuses["agent-good"].status == "blocked"
    assert "thing" not in pm.connectors()


def test_name_clash_names_both_plugins(fake_plugins):
    fake_plugins(**{"agent-one": GOOD, "agent-two": GOOD})
    pm = get_plugin_manager()
    with pytest.raises(PluginError, match=r"'thing'.*agent-one.*agent-two"):
        pm.connectors()


def test_failing_hook_is_reported_and_others_count(fake_plugins, caplog):
    fake_plugins(**{
        "agent-raises": "from collective import hookimpl\n@hookimpl\ndef collective_connectors():\n    raise KeyError('x')\n",
        "agent-good": GOOD,
    })
    pm = get_plugin_manager()
    assert "thing" in pm.connectors()
    assert pm.statuses["agent-raises"].status.startswith("failed: collective_connectors")


def test_incompatible_core_requirement_is_skipped(monkeypatch):
    class Dist:
        requires = ["collective-core<0.0.1"]
        metadata = {"Name": "collective-agent-old"}
        version = "1.0"

    assert "incompatible: needs collective-core<0.0.1" in plugins._incompatible(Dist())
    Dist.requires = ["collective-core>=0.1,<0.2", "psutil"]
    assert plugins._incompatible(Dist()) is None


def test_resolve_suggests_close_names():
    with pytest.raises(PluginError, match="Did you mean 'ed25519'"):
        resolve("ed2551", {"ed25519": object, "psk": object}, "security provider")


def _hooks():
    return [(name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("collective_")]


def test_every_hook_has_a_docstring_and_a_docs_section():
    docs = DOCS.read_text()
    assert len(_hooks()) >= 11
    for name, fn in _hooks():
        assert (fn.__doc__ or "").strip(), f"{name} has no docstring"
        signature = f"{name}{inspect.signature(fn)}".replace("'", "")
        assert f"## `{name}`" in docs, f"docs/plugins.md has no section for {name}"
        assert signature in docs, f"docs/plugins.md does not show the signature {signature}"


@pytest.mark.parametrize(("version", "spec", "ok"), [
    ("0.1.0", ">=0.1,<0.2", True),
    ("0.2.0", ">=0.1,<0.2", False),
    ("0.1.5", "==0.1.5", True),
    ("0.1.5", "!=0.1.5", False),
    ("1.0", ">0.9", True),
    ("0.1.0", "", True),
    ("0.1.0", "~=0.1", None),
    ("0.1.0", "==0.1.*", None),
])
def test_simple_version_specifiers(version, spec, ok):
    assert plugins.version_satisfies(version, spec) is ok
