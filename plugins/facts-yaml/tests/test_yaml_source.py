"""YamlFactSource against real files: merge, reload on change, bad files, limits."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from collective.config import Config
from collective.facts import FactStore
from collective.filters import Filter, NodeInfo, parse_fact
from collective_facts_yaml import source as source_module
from collective_facts_yaml.source import YamlFactSource

LOGGER = "collective_facts_yaml.source"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_source(tmp_path, fact_files, clock=None, **plugin):
    """A source whose config file lives in ``tmp_path`` (relative names resolve there)."""
    data = {"identity": "n1", "facts": {"sources": ["yaml"], "files": [str(f) for f in fact_files]}}
    if plugin:
        data["plugins"] = {"yaml": plugin}
    config = Config(data, path=tmp_path / "server.yaml", kind="server", env={})
    return YamlFactSource(config, clock=clock or Clock())


_stamp = [1_700_000_000_000_000_000]


def write(path, text):
    """Write ``text`` and give the file a new mtime, so the change is always visible
    (a same-size rewrite within one timestamp tick would otherwise look unchanged)."""
    path.write_text(text)
    _stamp[0] += 1_000_000_000
    os.utime(path, ns=(_stamp[0], _stamp[0]))


def errors(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno >= logging.ERROR]


# -- merging -----------------------------------------------------------------------

def test_files_merge_in_order_nested_and_later_wins(tmp_path):
    write(tmp_path / "common.yaml", "role: web\nos:\n  family: debian\n  release: {major: '12'}\n"
                                    "interfaces: [lo, eth0]\n")
    (tmp_path / "facts.d").mkdir()
    write(tmp_path / "facts.d" / "local.yaml", "role: db\nos:\n  release: {minor: '5'}\n"
                                               "interfaces: [lo]\n")
    src = make_source(tmp_path, [tmp_path / "common.yaml", "facts.d/local.yaml"])
    assert src.facts() == {
        "role": "db",
        "os": {"family": "debian", "release": {"major": "12", "minor": "5"}},
        "interfaces": ["lo"],  # lists are replaced, not merged
    }
    assert src.classes() == []
    assert src.paths == [tmp_path / "common.yaml", tmp_path / "facts.d" / "local.yaml"]


def test_dotted_paths_reach_yaml_facts_in_the_filter_engine(tmp_path):
    write(tmp_path / "f.yaml", "os:\n  family: debian\n  release:\n    major: 12\n")
    facts = make_source(tmp_path, ["f.yaml"]).facts()
    node = NodeInfo(identity="n1", facts=facts)
    assert Filter(fact=[parse_fact("os.family=debian")]).matches(node)
    assert Filter(fact=[parse_fact("os.release.major>=11")]).matches(node)
    assert not Filter(fact=[parse_fact("os.family=redhat")]).matches(node)


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    write(conf_dir / "facts.yaml", "where: etc\n")
    monkeypatch.chdir(tmp_path)
    assert make_source(conf_dir, ["facts.yaml"]).facts() == {"where": "etc"}


def test_plugin_files_setting_and_config_errors(tmp_path):
    write(tmp_path / "f.yaml", "a: 1\n")
    config = Config({"identity": "n1", "plugins": {"yaml": {"files": ["f.yaml"], "refresh": 0}}},
                    path=tmp_path / "server.yaml", kind="server", env={})
    assert YamlFactSource(config).facts() == {"a": 1}
    with pytest.raises(ValueError, match="not both"):
        make_source(tmp_path, ["f.yaml"], files=["f.yaml"])
    with pytest.raises(ValueError, match="no YAML facts files"):
        make_source(tmp_path, [])
    with pytest.raises(ValueError, match="plugins.yaml.refresh"):
        make_source(tmp_path, ["f.yaml"], refresh="soon")
    with pytest.raises(ValueError, match="plugins.yaml.max_bytes"):
        make_source(tmp_path, ["f.yaml"], max_bytes=0)


def test_empty_file_gives_no_facts(tmp_path):
    write(tmp_path / "f.yaml", "# nothing yet\n")
    assert make_source(tmp_path, ["f.yaml"]).facts() == {}


def test_values_are_made_json_safe(tmp_path):
    write(tmp_path / "f.yaml", "built: 2024-05-01\n2: two\ntrue: yes\n"
                               "tags: !!set {b: null, a: null}\nblob: !!binary aGk=\n")
    facts = make_source(tmp_path, ["f.yaml"]).facts()
    assert facts == {"built": "2024-05-01", "2": "two", "true": True, "tags": ["a", "b"],
                     "blob": "aGk="}
    json.dumps(facts)


# -- reloading ---------------------------------------------------------------------

def test_a_change_is_read_after_refresh_without_restart(tmp_path):
    clock = Clock()
    write(tmp_path / "a.yaml", "role: web\n")
    write(tmp_path / "b.yaml", "os: {family: debian}\n")
    src = make_source(tmp_path, ["a.yaml", "b.yaml"], clock=clock, refresh=1)
    assert src.facts() == {"role": "web", "os": {"family": "debian"}}
    reads = []
    real_read = src._read
    src._read = lambda path, st: reads.append(path.name) or real_read(path, st)

    write(tmp_path / "b.yaml", "os: {family: redhat}\n")
    clock.now += 0.5
    assert src.facts()["os"]["family"] == "debian"  # not checked yet
    clock.now += 0.5
    assert src.facts()["os"]["family"] == "redhat"
    assert reads == ["b.yaml"]  # only the changed file is read again
    clock.now += 5
    assert src.facts()["os"]["family"] == "redhat"
    assert reads == ["b.yaml"]  # nothing changed, nothing read


def test_a_file_replaced_by_rename_is_read(tmp_path):
    write(tmp_path / "f.yaml", "v: 1\n")
    src = make_source(tmp_path, ["f.yaml"], refresh=0)
    assert src.facts() == {"v": 1}
    write(tmp_path / "f.yaml.tmp", "v: 2\n")
    os.replace(tmp_path / "f.yaml.tmp", tmp_path / "f.yaml")
    assert src.facts() == {"v": 2}


def test_a_repointed_symlink_is_followed(tmp_path):
    write(tmp_path / "v1.yaml", "v: 1\n")
    write(tmp_path / "v2.yaml", "v: 2\n")
    (tmp_path / "f.yaml").symlink_to("v1.yaml")
    src = make_source(tmp_path, ["f.yaml"], refresh=0)
    assert src.facts() == {"v": 1}
    (tmp_path / "next").symlink_to("v2.yaml")
    os.replace(tmp_path / "next", tmp_path / "f.yaml")
    assert src.facts() == {"v": 2}


def test_reload_reads_even_an_unchanged_looking_file(tmp_path):
    path = tmp_path / "f.yaml"
    write(path, "v: 1\n")
    src = make_source(tmp_path, ["f.yaml"], refresh=0)
    before = os.stat(path)
    path.write_text("v: 2\n")  # same size; put the old timestamps back
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    if os.stat(path).st_ctime_ns == before.st_ctime_ns:
        assert src.facts() == {"v": 1}
    src.reload()
    assert src.facts() == {"v": 2}


def test_fact_store_with_the_plugin_sees_changes(tmp_path):
    import collective_facts_yaml.plugin as yaml_plugin
    from collective.plugins import get_plugin_manager

    write(tmp_path / "f.yaml", "role: db\nos: {family: debian}\n")
    config = Config({"identity": "n1", "facts": {"sources": ["static", "yaml"], "files": ["f.yaml"],
                                                 "static": {"role": "web", "env": "prod"}},
                     "plugins": {"yaml": {"refresh": 0}}},
                    path=tmp_path / "server.yaml", kind="server", env={})
    pm = get_plugin_manager(load_entrypoints=False, plugins=[yaml_plugin])
    assert pm.fact_sources()["yaml"] is YamlFactSource
    store = FactStore(config, pm.fact_sources(), refresh=0)
    assert store.facts() == {"role": "db", "env": "prod", "os": {"family": "debian"}}
    write(tmp_path / "f.yaml", "role: cache\n")
    assert store.facts() == {"role": "cache", "env": "prod"}
    write(tmp_path / "f.yaml", "role: [unclosed\n")
    assert store.facts() == {"role": "cache", "env": "prod"}


# -- bad files ---------------------------------------------------------------------

def test_bad_yaml_keeps_last_good_and_logs_file_and_line_once_per_change(tmp_path, caplog):
    path = tmp_path / "f.yaml"
    write(path, "role: web\nos: {family: debian}\n")
    write(tmp_path / "other.yaml", "env: prod\n")
    src = make_source(tmp_path, ["f.yaml", "other.yaml"], refresh=0)
    assert src.facts() == {"role": "web", "os": {"family": "debian"}, "env": "prod"}

    write(path, "role: web\nos: {family: debian\nbroken: [\n")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in range(3):
            assert src.facts() == {"role": "web", "os": {"family": "debian"}, "env": "prod"}
        write(tmp_path / "other.yaml", "env: dev\n")  # the other file still updates
        assert src.facts()["env"] == "dev"
    [message] = errors(caplog)
    assert str(path) in message and "line 3, column" in message
    assert "keeping its last good facts" in message

    caplog.clear()
    write(path, "role: db\n  bad indent: here\n")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        src.facts()
        src.facts()
    [message] = errors(caplog)  # a new change, one new error
    assert str(path) in message and "line 2, column" in message

    caplog.clear()
    write(path, "role: db\n")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert src.facts() == {"role": "db", "env": "dev"}
    assert any("read again" in r.getMessage() for r in caplog.records)


def test_unsafe_tags_are_refused_not_constructed(tmp_path, caplog):
    marker = tmp_path / "pwned"
    path = tmp_path / "f.yaml"
    write(path, f"ok: 1\nevil: !!python/object/apply:os.system ['touch {marker}']\n")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        src = make_source(tmp_path, ["f.yaml"], refresh=0)
        assert src.facts() == {}
    assert not marker.exists()
    [message] = errors(caplog)
    assert str(path) in message and "line 2, column 7" in message and "refused" in message
    assert "python/object/apply" in message and "contributes no facts" in message

    write(path, "ok: 1\n")
    assert src.facts() == {"ok": 1}
    write(path, "obj: !!python/object:collective.config.Config {}\n")
    assert src.facts() == {"ok": 1}


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "a list"), ("just text\n", "a string"),
                                           ("42\n", "a int")])
def test_top_level_must_be_a_mapping(tmp_path, caplog, text, kind):
    path = tmp_path / "f.yaml"
    write(path, "a: 1\n")
    src = make_source(tmp_path, ["f.yaml"], refresh=0)
    write(path, text)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert src.facts() == {"a": 1}
    [message] = errors(caplog)
    assert str(path) in message and f"the top level must be a mapping of fact names to values, not {kind}" in message


def test_missing_file_contributes_nothing_until_it_appears(tmp_path, caplog):
    write(tmp_path / "a.yaml", "a: 1\n")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        src = make_source(tmp_path, ["a.yaml", "later.yaml"], refresh=0)
        assert src.facts() == {"a": 1}
        assert src.facts() == {"a": 1}
    [message] = errors(caplog)
    assert str(tmp_path / "later.yaml") in message and "does not exist" in message
    write(tmp_path / "later.yaml", "b: 2\n")
    assert src.facts() == {"a": 1, "b": 2}
    (tmp_path / "later.yaml").unlink()
    assert src.facts() == {"a": 1}


def test_size_cap(tmp_path, caplog):
    path = tmp_path / "f.yaml"
    write(path, "a: 1\n")
    src = make_source(tmp_path, ["f.yaml"], refresh=0, max_bytes=64)
    write(path, "a: 2\nfiller: " + "x" * 100 + "\n")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert src.facts() == {"a": 1}
    [message] = errors(caplog)
    assert str(path) in message and "over the limit of 64" in message and "max_bytes" in message


def test_default_size_cap_is_4_mib():
    assert source_module.DEFAULT_MAX_BYTES == 4 * 1024 * 1024


def test_alias_bombs_and_deep_nesting_are_refused(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(source_module, "MAX_VALUES", 10_000)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")
    write(tmp_path / "deep.yaml", "deep: " + "[" * 200 + "]" * 200 + "\n")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        src = make_source(tmp_path, ["bomb.yaml", "deep.yaml"])
        assert src.facts() == {}
    bomb, deep = errors(caplog)
    assert "bomb.yaml" in bomb and "more than 10000 values" in bomb
    assert "deep.yaml" in deep and "nested deeper than" in deep


def test_invalid_utf8_is_an_error_naming_the_byte(tmp_path, caplog):
    (tmp_path / "f.yaml").write_bytes(b"a: \xff\n")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert make_source(tmp_path, ["f.yaml"]).facts() == {}
    [message] = errors(caplog)
    assert "f.yaml" in message and "byte 3" in message


def test_a_fifo_is_refused_without_blocking(tmp_path, caplog):
    os.mkfifo(tmp_path / "f.yaml")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert make_source(tmp_path, ["f.yaml"]).facts() == {}
    assert "not a regular file" in errors(caplog)[0]


def test_a_file_that_cannot_be_read_keeps_last_good(tmp_path, caplog):
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "f.yaml", "a: 1\n")
    src = make_source(tmp_path, ["d/f.yaml"], refresh=0)
    (tmp_path / "d" / "f.yaml").unlink()
    (tmp_path / "d").rmdir()
    write(tmp_path / "d", "not a directory\n")  # stat(d/f.yaml) now fails with ENOTDIR
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert src.facts() == {"a": 1}
        assert src.facts() == {"a": 1}
    [message] = errors(caplog)
    assert str(tmp_path / "d" / "f.yaml") in message and "cannot read" in message
    assert "keeping its last good facts" in message


def test_source_module_is_not_imported_by_the_plugin_module():
    code = ("import sys, collective_facts_yaml.plugin; "
            "sys.exit(1 if 'collective_facts_yaml.source' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
