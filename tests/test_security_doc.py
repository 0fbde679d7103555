"""docs/security.md keeps its word: every test it names exists, and the broker
permission sets it prints are the ones the tests set on real brokers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"


def named_tests() -> list[tuple[str, str | None]]:
    """``(path, function or None)`` for every backticked test reference of the doc; a
    ``::function`` alone refers to the file named last before it."""
    refs: list[tuple[str, str | None]] = []
    last = None
    for token in re.findall(r"`([^`\s]+)`", DOC.read_text()):
        match = re.fullmatch(r"((?:tests|core/tests|plugins/[\w-]+/tests)/[\w/]+\.py)(?:::(\w+))?",
                             token)
        if match:
            last = match.group(1)
            refs.append((last, match.group(2)))
        elif token.startswith("::") and last is not None:
            refs.append((last, token[2:]))
    return refs


def test_every_attack_and_fault_names_its_test():
    rows = re.findall(r"^\| ([SR]\d+) \|.*\| ([^|]*) \|$", DOC.read_text(), re.M)
    assert len(rows) >= 30
    for row, tests in rows:
        assert re.search(r"`(tests|core/tests|plugins/[\w-]+/tests)/|`::\w+`", tests), \
            f"docs/security.md {row} names no test"


@pytest.mark.parametrize("path,function", sorted(set(named_tests()), key=str))
def test_every_test_the_doc_names_exists(path, function):
    file = ROOT / path
    assert file.is_file(), f"docs/security.md names {path}, which does not exist"
    if function is None:
        return
    tree = ast.parse(file.read_text())
    names = {node.name for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert function in names, f"docs/security.md names {path}::{function}, which does not exist"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_the_rabbitmq_permissions_are_the_tested_ones():
    from collective.testing.rabbitmq import collective_permissions

    text = code_blocks("sh")[0]
    args = re.findall(r"'([^']*)'", text)
    node, client = collective_permissions("node", "node-001"), collective_permissions("client", "admin")
    keys = ("configure", "write", "read", "topic_write", "topic_read")
    assert args == [node[k] for k in keys] + [client[k] for k in keys]


def test_the_activemq_entries_are_the_tested_ones():
    from collective.testing.activemq import collective_authorization

    _, entries = collective_authorization(["node-001"], ["admin"])
    assert code_blocks("xml")[0].strip() == entries.strip()


def test_the_embedded_roles_table_is_the_brokers():
    from collective.broker.auth import ROLES

    rows = dict(re.findall(r"^\| (node|client|admin) \| (.*) \|$", DOC.read_text(), re.M))
    for role, perms in ROLES.items():
        read, write = rows[role].split(" | ")
        assert re.findall(r"`([^`]+)`", read) == list(perms.read)
        assert re.findall(r"`([^`]+)`", write) == list(perms.write)
