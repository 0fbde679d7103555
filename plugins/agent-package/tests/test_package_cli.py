"""``mco package``: argument order, the unfiltered-change confirmation, and line format.

The client is replaced by one that records it was reached, so "answering n sends
nothing" is proven by the client never being created. The real-fleet run is in
tests/test_package_e2e.py.
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from collective.client.results import NodeReply
from collective_agent_package import cli


@pytest.fixture
def reached(monkeypatch):
    calls = []

    def fake_make_client(config_path, collective=None):
        calls.append((config_path, collective))
        raise OSError("client reached")

    monkeypatch.setattr(cli, "make_client", fake_make_client)
    return calls


def run(args, answer=None):
    return CliRunner().invoke(cli.package, args, input=answer)


@pytest.mark.parametrize("answer", ["n\n", "\n", "no\n", "yes please\n", ""])
def test_unfiltered_change_not_confirmed_sends_nothing(reached, answer):
    result = run(["nginx", "install"], answer)
    assert result.exit_code == 1
    assert result.output.startswith("Do you really want to operate on packages unfiltered? (y/n): ")
    assert "Nothing was sent." in result.output
    assert reached == []


@pytest.mark.parametrize("answer", ["y\n", "Y\n", "yes\n"])
def test_unfiltered_change_confirmed_goes_ahead(reached, answer):
    result = run(["nginx", "uninstall"], answer)
    assert "unfiltered? (y/n)" in result.output
    assert "client reached" in result.output
    assert len(reached) == 1


@pytest.mark.parametrize("args", [
    ["nginx", "purge", "--yes"],
    ["nginx", "update", "-y"],
    ["nginx", "install", "-I", "node-001"],
    ["nginx", "install", "-F", "role=web"],
    ["nginx", "install", "-C", "web"],
    ["nginx", "status"],
    ["status", "nginx"],
])
def test_no_question_with_a_filter_yes_or_status(reached, args):
    result = run(args)
    assert "unfiltered" not in result.output
    assert "client reached" in result.output
    assert len(reached) == 1


def test_argument_order_and_errors():
    assert cli.split_arguments("nginx", "status") == ("nginx", "status")
    assert cli.split_arguments("install", "nginx") == ("nginx", "install")
    with pytest.raises(click.UsageError):
        cli.split_arguments("nginx", "restart")
    result = run(["nginx", "status", "--version", "1.0"])
    assert result.exit_code == 2
    assert "--version only applies to install" in result.output


def test_node_lines():
    ok = NodeReply(sender="node-001", agent="package", action="install", elapsed_ms=1.0, statuscode=0, statusmsg="OK",
                   data={"name": "nginx", "ensure": "1.22.1-9", "output": "Setting up nginx"})
    bad = NodeReply(sender="node-002", agent="package", action="install", elapsed_ms=1.0, statuscode=1, statusmsg="apt-get not found on this node", data={})
    assert click.unstyle(cli.node_line(ok)) == f"{'node-001':<40} version = nginx-1.22.1-9"
    assert click.unstyle(cli.node_line(ok, verbose=True)).endswith("\n    Setting up nginx")
    assert click.unstyle(cli.node_line(bad)) == f"{'node-002':<40} error = apt-get not found on this node"
