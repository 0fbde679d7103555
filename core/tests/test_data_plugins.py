"""Data plugins (fstat, fact, agent, collective), the resolver, and compound filters through them."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from collective.compound import FilterSyntaxError, evaluate, parse
from collective.config import Config
from collective.data import (
    BUILTIN_DATA_PLUGINS,
    AgentData,
    CollectiveData,
    DataPlugin,
    DataResolver,
    DataResult,
    FactData,
    FstatData,
    instantiate,
)
from collective.filters import Filter, NodeInfo
from collective.plugins import get_plugin_manager
from collective.server.dispatch import StaticNode

FACTS = {"role": "web", "index": 7, "ratio": 0.5, "ok": True, "none": None,
         "os": {"family": "debian", "release": {"major": "12"}}, "tags": ["a", "b"]}


class FakeDDL:
    def __init__(self, **metadata):
        self.metadata = metadata


class Node(StaticNode):
    def __init__(self, roots=None, agents=None, **kwargs):
        plugins = {"fstat": {"roots": roots}} if roots is not None else {}
        super().__init__("node-1", Config({"identity": "node-1", "plugins": plugins,
                                           "collectives": ["mcollective", "uk"]}),
                         facts=FACTS, classes=["base"], **kwargs)
        self._agents = agents or {}

    def agent_ddls(self):
        return dict(self._agents)


@pytest.fixture
def public_dir():
    """A directory every local user can reach (pytest's tmp_path sits under a 0700 one)."""
    directory = Path(tempfile.mkdtemp(prefix="collective-fstat-"))
    os.chmod(directory, 0o755)
    if not FstatData.world_reachable(str(directory / "x")):
        shutil.rmtree(directory)
        pytest.skip(f"{directory.parent} is not reachable by other users")
    yield directory
    shutil.rmtree(directory)


def fstat(path, node=None):
    node = node or Node()
    FstatData.validate(path)
    return FstatData().query(path, node)


# -- registry ----------------------------------------------------------------------------

def test_builtins_are_registered_through_the_hook():
    registry = get_plugin_manager(load_entrypoints=False).data_plugins()
    assert sorted(registry) == ["agent", "collective", "fact", "fstat"]
    assert set(registry.values()) == set(BUILTIN_DATA_PLUGINS)


@pytest.mark.parametrize("cls", BUILTIN_DATA_PLUGINS)
def test_builtin_metadata(cls):
    assert cls.name and cls.description and cls.argument
    assert cls.default_output in cls.outputs
    assert issubclass(cls, DataPlugin)


def test_instantiate_skips_broken_plugins(caplog):
    class Broken(DataPlugin):
        name = "broken"

        def __init__(self):
            raise RuntimeError("no")

    plugins = instantiate({"broken": Broken, "fact": FactData, "ready": FactData()})
    assert sorted(plugins) == ["fact", "ready"]
    assert isinstance(plugins["fact"], FactData)


# -- fstat -----------------------------------------------------------------------------------

def test_fstat_regular_file(public_dir):
    path = public_dir / "hosts"
    path.write_bytes(b"127.0.0.1 localhost\n")
    os.chmod(path, 0o644)
    os.chmod(public_dir, 0o755)
    result = fstat(str(path))
    assert set(result) == set(FstatData.outputs)
    assert result["present"] is True
    assert result["type"] == "file"
    assert result["size"] == 20
    assert result["mode"] == "100644"
    assert result["uid"] == os.getuid() and result["gid"] == os.getgid()
    assert result["md5"] == hashlib.md5(b"127.0.0.1 localhost\n").hexdigest()
    assert result["name"] == str(path)
    st = path.stat()
    assert result["mtime_seconds"] == int(st.st_mtime)
    assert 0 <= result["mtime_age"] < 60
    assert result["mtime"] == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))
    for item in ("atime", "ctime"):
        assert isinstance(result[f"{item}_seconds"], int) and isinstance(result[item], str)


def test_fstat_md5_only_when_world_readable(public_dir):
    os.chmod(public_dir, 0o755)
    secret = public_dir / "shadow"
    secret.write_text("root:$6$secret\n")
    os.chmod(secret, 0o640)
    result = fstat(str(secret))
    assert result["present"] is True and result["size"] == 15
    assert result["md5"] is None
    os.chmod(secret, 0o604)
    assert fstat(str(secret))["md5"] == hashlib.md5(b"root:$6$secret\n").hexdigest()


def test_fstat_md5_not_when_a_parent_directory_is_closed(public_dir):
    private = public_dir / "private"
    private.mkdir()
    target = private / "notes.txt"
    target.write_text("x")
    os.chmod(target, 0o644)
    os.chmod(private, 0o700)
    assert fstat(str(target))["md5"] is None
    os.chmod(private, 0o755)
    os.chmod(public_dir, 0o755)
    assert fstat(str(target))["md5"] == hashlib.md5(b"x").hexdigest()


def test_fstat_md5_size_limit(tmp_path, monkeypatch):
    os.chmod(tmp_path, 0o755)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    os.chmod(big, 0o644)
    monkeypatch.setattr(FstatData, "MAX_MD5_BYTES", 1024)
    result = fstat(str(big))
    assert result["size"] == 2048 and result["md5"] is None


def test_fstat_directory_symlink_fifo_and_missing(tmp_path):
    os.chmod(tmp_path, 0o755)
    target = tmp_path / "target"
    target.write_text("data")
    os.chmod(target, 0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o666)
    assert fstat(str(tmp_path))["type"] == "directory"
    assert fstat(str(tmp_path))["md5"] is None
    linked = fstat(str(link))
    assert linked["type"] == "symlink" and linked["md5"] is None  # never followed
    assert stat.S_ISLNK(int(linked["mode"], 8))
    piped = fstat(str(fifo))  # must not block
    assert piped["type"] == "fifo" and piped["md5"] is None
    missing = fstat(str(tmp_path / "nope"))
    assert missing["present"] is False and missing["type"] == "unknown"
    assert missing["size"] is None and missing["md5"] is None
    assert fstat("/dev/null")["type"] == "chardev"
    assert fstat("/dev/null")["md5"] is None


@pytest.mark.parametrize(("path", "reason"), [
    ("etc/hosts", "absolute path"),
    ("", "absolute path"),
    ("/etc/../etc/shadow", "normalised"),
    ("/etc/./hosts", "normalised"),
    ("//etc/hosts", "normalised"),
    ("/etc/", "normalised"),
    ("/etc//hosts", "normalised"),
    ("/etc/hosts\x00", "NUL"),
    ("/" + "a" * 2000, "longer than"),
])
def test_fstat_refuses_bad_paths(path, reason):
    with pytest.raises(ValueError, match=reason):
        FstatData.validate(path)
    with pytest.raises(FilterSyntaxError, match=reason):
        parse(f"fstat('{path}').size>0", functions={"fstat": FstatData})


def test_fstat_without_argument():
    with pytest.raises(ValueError, match="needs an argument"):
        FstatData.validate(None)


def test_fstat_roots(tmp_path):
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "f").write_text("x")
    (tmp_path / "outside").write_text("y")
    node = Node(roots=[str(inside)])
    assert fstat(str(inside / "f"), node)["present"] is True
    assert fstat(str(inside), node)["type"] == "directory"
    with pytest.raises(ValueError, match="outside the fstat roots"):
        fstat(str(tmp_path / "outside"), node)
    with pytest.raises(ValueError, match="outside the fstat roots"):
        fstat(str(inside) + "x/f", node)  # a prefix is not a parent
    with pytest.raises(ValueError, match="outside the fstat roots"):
        fstat("/etc/shadow", node)


def test_fstat_roots_see_through_symlinked_directories(tmp_path):
    inside = tmp_path / "inside"
    inside.mkdir()
    (tmp_path / "secret").write_text("s")
    (inside / "escape").symlink_to(tmp_path)
    node = Node(roots=[str(inside)])
    with pytest.raises(ValueError, match="resolves to"):
        fstat(str(inside / "escape" / "secret"), node)
    # a symlink as the last component is reported, not followed
    assert fstat(str(inside / "escape"), node)["type"] == "symlink"


def test_fstat_default_roots_allow_everything():
    assert FstatData.roots(Node()) == ["/"]
    assert fstat("/etc/hosts")["present"] is True


# -- fact, agent, collective ---------------------------------------------------------------------

@pytest.mark.parametrize(("path", "expected"), [
    ("role", {"exists": True, "value": "web", "type": "string"}),
    ("index", {"exists": True, "value": 7, "type": "integer"}),
    ("ratio", {"exists": True, "value": 0.5, "type": "float"}),
    ("ok", {"exists": True, "value": True, "type": "boolean"}),
    ("none", {"exists": True, "value": None, "type": "null"}),
    ("os.family", {"exists": True, "value": "debian", "type": "string"}),
    ("os.release", {"exists": True, "value": '{"major":"12"}', "type": "hash"}),
    ("tags", {"exists": True, "value": '["a","b"]', "type": "array"}),
    ("tags.1", {"exists": True, "value": "b", "type": "string"}),
    ("nosuch", {"exists": False, "value": None, "type": None}),
    ("os.nosuch", {"exists": False, "value": None, "type": None}),
])
def test_fact(path, expected):
    assert FactData().query(path, Node()) == expected


def test_agent():
    node = Node(agents={"rpcutil": FakeDDL(name="rpcutil", version="1.0", timeout=10,
                                           author="x", description="d", license="MIT",
                                           url="https://x")})
    present = AgentData().query("rpcutil", node)
    assert present == {"present": True, "name": "rpcutil", "version": "1.0", "timeout": 10,
                       "author": "x", "description": "d", "license": "MIT", "url": "https://x"}
    absent = AgentData().query("puppet", node)
    assert absent["present"] is False and absent["version"] is None
    with pytest.raises(ValueError):
        AgentData.validate("../etc")


def test_collective():
    assert CollectiveData().query("uk", Node()) == {"member": True}
    assert CollectiveData().query("us", Node()) == {"member": False}
    with pytest.raises(ValueError):
        CollectiveData.validate("a b")


# -- the resolver and compound filters end to end (in process) -----------------------------------

def _resolver(node=None):
    return DataResolver(instantiate({c.name: c for c in BUILTIN_DATA_PLUGINS}), node or Node())


def test_resolver_caches_per_message_and_marks_the_default():
    calls = []

    class Counting(DataPlugin):
        name = "counting"
        argument = "anything"
        outputs = {"n": "a number"}
        default_output = "n"

        def query(self, argument, node):
            calls.append(argument)
            return {"n": len(calls)}

    resolver = DataResolver({"counting": Counting()}, Node())
    first = resolver("counting", "a")
    assert isinstance(first, DataResult) and first.default_output == "n"
    assert resolver("counting", "a") is first
    resolver("counting", "b")
    assert calls == ["a", "b"]


def test_resolver_turns_every_failure_into_none(caplog):
    class Exploding(DataPlugin):
        name = "exploding"
        argument = "x"

        def query(self, argument, node):
            raise OSError("disk on fire")

    class Weird(DataPlugin):
        name = "weird"
        argument = "x"

        def query(self, argument, node):
            return ["not", "a", "mapping"]

    resolver = DataResolver({"exploding": Exploding(), "weird": Weird(), "fstat": FstatData()},
                            Node(roots=["/nonexistent-root"]))
    with caplog.at_level(logging.WARNING):
        assert resolver("nosuch", "x") is None
        assert resolver("exploding", "x") is None
        assert resolver("weird", "x") is None
        assert resolver("fstat", "relative") is None  # refused by validate
        assert resolver("fstat", "/etc/hosts") is None  # outside the roots
        assert resolver("exploding", None) is None  # needs an argument
    assert "disk on fire" in caplog.text
    assert "no data plugin of that name" in caplog.text


@pytest.mark.parametrize(("text", "expected"), [
    ("fstat('{f}').size>0 and role=web", True),
    ("fstat('{f}').size=5", True),
    ("fstat('{f}').size>=5.0", True),
    ("fstat('{f}').size<5", False),
    ("fstat('{f}').type=file and role=web", True),
    ("fstat('{f}').type=/^fi/", True),
    ("fstat('{f}').type!=/^fi/", False),
    ("fstat('{f}').type>a", False),  # < > on strings
    ("fstat('{f}')", True),  # default output: present
    ("fstat('{f}').present=true", True),
    ("fstat('{f}').present=false", False),
    ("fstat('{f}').md5=" + hashlib.md5(b"hello").hexdigest(), True),
    ("fstat('{d}/nope').present", False),
    ("not fstat('{d}/nope').present", True),
    ("fstat('{d}/nope').size>0", False),
    ("not fstat('{d}/nope').size>0", True),  # null result: the statement is false
    ("fstat('{f}').size=abc", False),  # invalid numeric value: whole expression fails
    ("not fstat('{f}').size=abc", False),
    ("fact('role').value=web", True),
    ("fact('role')=web", True),
    ("fact('index').value>6 and fact('index').value<8", True),
    ("fact('os.family').value=/debian|redhat/", True),
    ("fact('nosuch').exists=false", True),
    ("fact('nosuch').value=x", False),
    ("agent('rpcutil').present and agent('rpcutil').timeout>=10", True),
    ("agent('puppet')", False),
    ("collective('uk') and not collective('us')", True),
    ("nosuch('x')", False),
    ("not nosuch('x')", False),
])
def test_compound_through_the_builtin_plugins(public_dir, text, expected):
    os.chmod(public_dir, 0o755)
    path = public_dir / "file"
    path.write_bytes(b"hello")
    os.chmod(path, 0o644)
    node = Node(agents={"rpcutil": FakeDDL(name="rpcutil", timeout=10)})
    info = NodeInfo("node-1", node.facts(), node.classes(), ["rpcutil"], data=_resolver(node))
    expr = text.format(f=path, d=public_dir)
    assert evaluate(parse(expr), info) is expected
    assert Filter.from_dict({"compound": [expr]}).matches(info) is expected


@pytest.mark.skipif(not os.path.exists("/etc/shadow"), reason="no /etc/shadow here")
def test_fstat_never_hashes_etc_shadow():
    """docs/security.md S7: fstat cannot leak the hash of a file other users cannot read."""
    if os.stat("/etc/shadow").st_mode & stat.S_IROTH:
        pytest.skip("/etc/shadow is world-readable on this machine")
    result = fstat("/etc/shadow")
    assert result["present"] is True and result["md5"] is None


def test_a_data_plugin_reads_its_agent_settings_from_the_node_config():
    from collective.config import Config
    from collective.data import DataPlugin
    from collective.server.dispatch import StaticNode

    config = Config({"identity": "n1", "plugins": {"nrpe": {"data_timeout": 3}}}, kind="server",
                    env={})
    node = StaticNode("n1", config)
    assert DataPlugin.settings(node, "nrpe") == {"data_timeout": 3}
    assert DataPlugin.settings(node, "other") == {}
    assert DataPlugin.settings(object(), "nrpe") == {}


# -- before authorization: which plugins a node answers on its receive thread ----------------

def test_only_the_builtins_that_reveal_no_more_than_filters_are_inline():
    assert {p.name for p in BUILTIN_DATA_PLUGINS if p.inline} == {"fact", "agent", "collective"}
    assert FstatData.inline is False
    assert DataPlugin.inline is False  # third-party plugins are deferred unless they say so


def test_an_inline_only_resolver_defers_the_others_and_never_calls_them(public_dir):
    from collective.compound import Deferred

    class Counting(DataPlugin):
        name = "counting"
        outputs = {"n": "n"}
        calls = 0

        def query(self, argument, node):
            Counting.calls += 1
            return {"n": 1}

    resolver = DataResolver({"fact": FactData(), "fstat": FstatData(), "counting": Counting()},
                            Node(), inline_only=True)
    assert resolver("fact", "role")["value"] == "web"
    with pytest.raises(Deferred):
        resolver("fstat", str(public_dir))
    with pytest.raises(Deferred):
        resolver("counting", None)
    assert resolver("nosuch", "x") is None  # unknown: the expression fails, nothing to defer
    assert Counting.calls == 0 and resolver.calls == [("fact", "role"), ("nosuch", "x")]


def test_a_resolver_past_its_deadline_calls_nothing_more():
    now = [0.0]
    resolver = DataResolver({"fact": FactData()}, Node(), deadline=1.0, clock=lambda: now[0])
    assert resolver("fact", "role")["value"] == "web"
    now[0] = 2.0
    assert resolver("fact", "index") is None and resolver.exhausted
    assert resolver("fact", "role")["value"] == "web"  # answered before: cached
    assert resolver.calls == [("fact", "role")]
