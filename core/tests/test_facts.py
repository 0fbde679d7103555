"""FactStore: sources in order, deep merge, caching, failing sources; classes files."""

from __future__ import annotations

import logging
import os

import pytest

from collective.config import Config
from collective.facts import FactStore, StaticFactSource, deep_merge, read_classes
from collective.plugins import PluginError


def make_config(**facts):
    return Config({"identity": "n1", "facts": facts}, kind="server", env={})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counting:
    """A source whose facts change on every read; it raises when ``fail`` is set."""

    name = "counting"
    instances: list[Counting] = []

    def __init__(self, config):
        self.reads = 0
        self.fail = False
        self.reloads = 0
        Counting.instances.append(self)

    def facts(self):
        if self.fail:
            raise RuntimeError("backend down")
        self.reads += 1
        return {"reads": self.reads, "os": {"release": {"major": "12"}}, "role": "counted"}

    def classes(self):
        return ["counted", "base"]

    def reload(self):
        self.reloads += 1


class Override:
    name = "override"

    def __init__(self, config):
        pass

    def facts(self):
        return {"role": "override", "os": {"family": "debian", "release": {"minor": "5"}},
                "list": [3]}


SOURCES = {"static": StaticFactSource, "counting": Counting, "override": Override}


@pytest.fixture(autouse=True)
def _reset():
    Counting.instances.clear()


def test_static_source():
    cfg = make_config(sources=["static"], static={"role": "web", "os": {"family": "debian"}})
    store = FactStore(cfg, SOURCES)
    assert store.facts() == {"role": "web", "os": {"family": "debian"}}
    assert store.classes() == []


def test_default_config_has_static_and_empty_facts():
    store = FactStore(Config({"identity": "n1"}, kind="server", env={}), SOURCES)
    assert store.facts() == {}


def test_unknown_source_names_it_and_the_known_ones():
    with pytest.raises(PluginError) as err:
        FactStore(make_config(sources=["static", "yaml"]), SOURCES)
    message = str(err.value)
    assert "'yaml'" in message and "static" in message and "counting" in message


def test_source_that_fails_to_start():
    class Broken:
        name = "broken"

        def __init__(self, config):
            raise OSError("no such file")

    with pytest.raises(PluginError, match="'broken' failed to start: no such file"):
        FactStore(make_config(sources=["broken"]), {"broken": Broken})


def test_merge_order_later_wins_and_mappings_merge():
    cfg = make_config(sources=["static", "counting", "override"],
                      static={"role": "static", "only_static": 1, "list": [1, 2],
                              "os": {"family": "redhat", "name": "x"}})
    facts = FactStore(cfg, SOURCES).facts()
    assert facts == {
        "role": "override",
        "only_static": 1,
        "list": [3],  # lists are replaced, not concatenated
        "reads": 1,
        "os": {"family": "debian", "name": "x", "release": {"major": "12", "minor": "5"}},
    }


def test_merge_order_reversed():
    cfg = make_config(sources=["override", "static"], static={"role": "static"})
    assert FactStore(cfg, SOURCES).facts()["role"] == "static"


def test_deep_merge_does_not_change_inputs():
    base = {"a": {"b": 1}}
    over = {"a": {"c": 2}}
    assert deep_merge(base, over) == {"a": {"b": 1, "c": 2}}
    assert base == {"a": {"b": 1}} and over == {"a": {"c": 2}}


def test_cached_then_refreshed():
    clock = Clock()
    store = FactStore(make_config(sources=["counting"]), SOURCES, refresh=5, clock=clock)
    assert store.facts()["reads"] == 1
    clock.now += 4.9
    assert store.facts()["reads"] == 1
    clock.now += 0.2
    assert store.facts()["reads"] == 2


def test_reload_rereads_now_and_calls_source_reload():
    clock = Clock()
    store = FactStore(make_config(sources=["counting"]), SOURCES, clock=clock)
    assert store.facts()["reads"] == 1
    store.reload()
    assert Counting.instances[0].reloads == 1
    assert store.facts()["reads"] == 2


def test_failing_source_keeps_last_good_facts(caplog):
    clock = Clock()
    cfg = make_config(sources=["counting", "static"], static={"role": "static"})
    store = FactStore(cfg, SOURCES, refresh=1, clock=clock)
    assert store.facts()["reads"] == 1
    Counting.instances[0].fail = True
    clock.now += 2
    with caplog.at_level(logging.ERROR, logger="collective.facts"):
        facts = store.facts()
    assert facts["reads"] == 1 and facts["role"] == "static"
    assert "fact source 'counting' failed: backend down; keeping its last good facts" in caplog.text
    Counting.instances[0].fail = False
    clock.now += 2
    assert store.facts()["reads"] == 2


def test_source_failing_from_the_start_gives_others(caplog):
    class Down:
        name = "down"

        def __init__(self, config):
            pass

        def facts(self):
            raise ValueError("nope")

    cfg = make_config(sources=["down", "static"], static={"x": 1})
    with caplog.at_level(logging.ERROR, logger="collective.facts"):
        assert FactStore(cfg, {"down": Down, "static": StaticFactSource}).facts() == {"x": 1}
    assert "'down' failed: nope; keeping no facts from it" in caplog.text


def test_non_mapping_facts_is_a_failure(caplog):
    class Bad:
        name = "bad"

        def __init__(self, config):
            pass

        def facts(self):
            return ["not", "a", "dict"]

    with caplog.at_level(logging.ERROR, logger="collective.facts"):
        assert FactStore(make_config(sources=["bad"]), {"bad": Bad}).facts() == {}
    assert "not a mapping" in caplog.text


def test_returned_facts_are_a_copy():
    cfg = make_config(sources=["static"], static={"os": {"family": "debian"}})
    store = FactStore(cfg, SOURCES)
    store.facts()["os"]["family"] = "changed"
    assert store.facts()["os"]["family"] == "debian"


def test_classes_from_sources():
    store = FactStore(make_config(sources=["counting", "static"]), SOURCES)
    assert store.classes() == ["counted", "base"]


# -- classes file -------------------------------------------------------------------

def test_read_classes(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("base\n\n# a comment\n  role::web  \nprofile/legacy\n")
    assert read_classes(path) == ["base", "role::web", "profile/legacy"]
    assert read_classes(str(path)) == ["base", "role::web", "profile/legacy"]


def test_read_classes_missing(tmp_path):
    assert read_classes(tmp_path / "nosuch.txt") == []


def test_read_classes_sees_changes(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("a\n")
    assert read_classes(path) == ["a"]
    path.write_text("a\nbb\n")
    os.utime(path, ns=(1, 2))
    assert read_classes(path) == ["a", "bb"]
    result = read_classes(path)
    result.append("mutated")
    assert read_classes(path) == ["a", "bb"]


def test_read_classes_directory_is_empty(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="collective.facts"):
        assert read_classes(tmp_path) == []
    assert "cannot read classes file" in caplog.text
