"""The name grammars are defined once (collective.names), shared filter matching lives in
collective.matching, and no module imports another's private names or closes an import
cycle among the filter and client modules."""

from __future__ import annotations

import ast
import json
from importlib.resources import files
from pathlib import Path

import pytest

from collective import names

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "core" / "src", *sorted((ROOT / "plugins").glob("*/src"))]


# -- the grammars ------------------------------------------------------------------------

@pytest.mark.parametrize(("regex", "good", "bad"), [
    (names.AGENT_RE, ["rpcutil", "a", "_x", "a" * 64], ["", "Rpcutil", "a-b", "a.b", "a" * 65]),
    (names.ACTION_RE, ["get_fact", "ping"], ["get-fact", "Ping"]),
    (names.IDENTITY_RE, ["node-001", "web.example.com", "A_1"],
     ["", "-node", ".node", "_node", "no de", "n/de", "a" * 65]),
    (names.COLLECTIVE_RE, ["mcollective", "uk_web"], ["-uk", "uk/web"]),
    (names.CALLER_RE, ["cert=alice", "user=bob@example.com"], ["alice", "cert=", "Cert=alice"]),
    (names.FACT_NAME_RE, ["os", "os.release.major", "interfaces.0", "_x-y"],
     ["", "os.", ".os", "os..family", "-os", "os.-x", "os family"]),
])
def test_grammar(regex, good, bad):
    for name in good:
        assert regex.fullmatch(name), name
    for name in [*bad, *(g + "\n" for g in good)]:  # "$" never lets a newline through
        assert not regex.fullmatch(name), name


def test_non_ascii_letters_and_digits_are_not_name_characters():
    for regex in (names.AGENT_RE, names.IDENTITY_RE, names.FACT_NAME_RE):
        assert not regex.fullmatch("n\u00e9ud")
        assert not regex.fullmatch("node\u0661")  # ARABIC-INDIC DIGIT ONE


def test_every_module_uses_the_one_definition():
    from collective import formats, message
    from collective.client import ddl_cache, discovery, remote_ddl
    from collective.connectors import destinations
    from collective.security import keys, psk
    from collective_auth_actionpolicy import authorizer

    assert message.AGENT_RE is names.AGENT_RE
    assert message.IDENTITY_RE is names.IDENTITY_RE
    assert message.CALLER_RE is psk.CALLER_RE is names.CALLER_RE
    assert message.REQUEST_SCHEMA["properties"]["agent"]["pattern"] == names.AGENT_PATTERN
    assert message.REQUEST_SCHEMA["properties"]["action"]["pattern"] == names.ACTION_PATTERN
    assert message.REPLY_SCHEMA["properties"]["sender"]["pattern"] == names.IDENTITY_PATTERN
    assert message.REQUEST_SCHEMA["properties"]["collective"]["pattern"] == names.COLLECTIVE_PATTERN
    assert destinations.AGENT_RE is names.AGENT_RE
    assert destinations.NAME_RE is names.IDENTITY_RE
    assert authorizer.AGENT_RE is names.AGENT_RE
    assert discovery.IDENTITY_RE is names.IDENTITY_RE
    assert keys.NAME_RE is names.IDENTITY_RE
    assert ddl_cache.AGENT_RE is remote_ddl.AGENT_RE is names.AGENT_RE
    assert formats.IDENTITY_RE == names.IDENTITY
    assert formats.FACT_NAME_RE == names.FACT_NAME


def test_json_schemas_spell_the_same_grammars():
    """The DDL schema and rpcutil's DDL cannot import Python: they must agree with it."""
    schema = json.loads(files("collective").joinpath("schemas/ddl-agent-v1.json").read_text())
    assert schema["$defs"]["name"]["pattern"] == names.AGENT_PATTERN
    assert schema["$defs"]["action_name"]["pattern"] == names.DDL_ACTION_PATTERN
    rpcutil = json.loads(files("collective.agents.rpcutil").joinpath("rpcutil.json").read_text())
    (ddl,) = [a for a in rpcutil["actions"] if a["action"] == "agent_ddl"]
    assert ddl["input"]["properties"]["agent"]["pattern"] == names.AGENT_PATTERN


def test_format_checks_use_the_grammars():
    from collective.formats import format_registry

    registry = format_registry()
    assert registry["identity"]("node-001") and not registry["identity"]("-node")
    assert registry["fact_name"]("os.family") and not registry["fact_name"]("os..family")
    assert not registry["fact_name"]("a" * (names.FACT_NAME_MAX_CHARS + 1))


# -- module boundaries -------------------------------------------------------------------

def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path)))
            for src in SOURCES for path in sorted(src.rglob("*.py"))]


def test_no_private_name_is_imported_from_another_module():
    crossing = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                    "collective")):
                crossing += [f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name}"
                             for alias in node.names
                             if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert crossing == []


def _imports(module: str) -> set[str]:
    """The collective modules ``module`` imports, at the top level or inside functions."""
    path = ROOT / "core" / "src" / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("group", [
    ["collective.filters", "collective.compound", "collective.data", "collective.matching",
     "collective.names"],
    ["collective.client.rpc", "collective.client.discovery", "collective.client.errors",
     "collective.client.remote_ddl", "collective.client.ddl_cache", "collective.client.results"],
])
def test_no_import_cycle(group):
    edges = {module: _imports(module) & set(group) for module in group}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in edges[start])

    assert [m for m in group if reaches(m, m)] == []


def test_matching_and_names_import_nothing_of_collective():
    for module in ("collective.matching", "collective.names", "collective.client.errors"):
        assert not {m for m in _imports(module) if m.startswith("collective")}, module


def test_no_reply_and_client_error_are_defined_once():
    from collective import client, message
    from collective.client import discovery, errors, rpc
    from collective.server import daemon

    assert rpc.NO_REPLY is daemon.NO_REPLY is message.NO_REPLY
    assert client.ClientError is rpc.ClientError is errors.ClientError
    assert issubclass(discovery.DiscoveryError, errors.ClientError)
