"""End to end: compound -S filters through the real `mco` and three real collectived processes.

The fleet's sample facts (collective.fleet.sample_facts): node-001 web/debian,
node-002 db/redhat, node-003 cache/debian, all in location uk, classes
base, role::<role>, location::uk.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from collective.client import Client
from collective.config import load_config
from collective.filters import Filter
from collective.fleet import fleet_down, fleet_up


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compound-fleet")
    started = fleet_up(directory, nodes=3)
    yield started
    fleet_down(directory)


def mco(fleet, *args, timeout=60, config=True):
    extra = ["-c", str(fleet.client_config)] if config else []
    proc = subprocess.run([sys.executable, "-m", "collective", *args, *extra],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(("selects", "expected"), [
    (["role=web and location=uk"], ["node-001"]),
    (["(role=db or role=cache) and not location=us"], ["node-002", "node-003"]),
    (["/^role::c/ and !location=us"], ["node-003"]),
    (["fact('role').value=cache"], ["node-003"]),
    (['fstat("/etc/hosts").size>0 and role=web'], ["node-001"]),
    (["fstat('/etc/hosts').type=file and role=web"], ["node-001"]),
    (["not role=web"], ["node-002", "node-003"]),
    (["!(os.family=debian)"], ["node-002"]),
    (["os.family=debian", "not role=web"], ["node-003"]),  # several -S are AND-ed
    (["fstat('/nonexistent/file').present"], []),
    (["not fstat('/nonexistent/file').present and index>=2"], ["node-002", "node-003"]),
    (["agent('rpcutil') and collective('mcollective') and index=<1"], ["node-001"]),
    (["order or notes=x"], []),  # keyword-prefixed names are statements
])
def test_find_with_compound_filters(fleet, selects, expected):
    args = [arg for text in selects for arg in ("-S", text)]
    code, out, err = mco(fleet, "find", *args, "--dt", "1")
    assert out.split() == expected, err
    assert code == (0 if expected else 1)


def test_compound_and_fact_filters_are_anded(fleet):
    code, out, _ = mco(fleet, "find", "-S", "role=web or role=db", "-F", "os.family=redhat",
                       "--dt", "1")
    assert code == 0
    assert out.split() == ["node-002"]


def test_rpc_with_a_compound_filter(fleet):
    code, out, _ = mco(fleet, "rpc", "rpcutil", "get_fact", "fact=role", "-S",
                       "role=cache or role=db", "--dt", "1")
    assert code == 0
    assert "Finished processing 2 / 2 hosts" in out
    assert "node-001" not in out


def test_syntax_error_is_reported_with_a_caret_before_sending(fleet):
    code, out, err = mco(fleet, "find", "-S", "role=web and and location=uk", "--dt", "1")
    assert code == 1
    assert out == ""
    assert "Parse errors found while parsing -S input role=web and and location=uk" in err
    lines = err.splitlines()
    assert lines[1] == "    role=web and and location=uk"
    assert lines[2] == "    " + " " * 13 + "^^^"
    assert "Traceback" not in err


def test_unknown_function_is_refused_by_the_client(fleet):
    code, _, err = mco(fleet, "find", "-S", 'fstat2("/etc/hosts").size>0', "--dt", "1")
    assert code == 1
    assert "Can't find DDL for data plugin 'fstat2'" in err
    code, _, err = mco(fleet, "find", "-S", 'fstat("/etc/../etc/shadow").md5', "--dt", "1")
    assert code == 1
    assert "normalised" in err


def test_unknown_function_sent_anyway_matches_no_node(fleet):
    """Bypassing the client's check: every node refuses to match, even under `not`."""
    with Client(load_config(str(fleet.client_config))) as client:
        for text in ("nosuch('x').v=1", "not nosuch('x').v=1", "not fstat('relative').present"):
            result = client.ping(Filter(compound=[text]), timeout=1)
            assert [r.sender for r in result.replies] == [], text
        result = client.ping(Filter(compound=["role=web or role=db"]), timeout=1)
        assert sorted(r.sender for r in result.replies) == ["node-001", "node-002"]


def test_describe_filter(fleet):
    code, out, err = mco(fleet, "describe-filter", "-S", "(role=web or role=cache) and location=uk",
                         "-F", "os.family=debian", config=False)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "-S Query expression: (role=web or role=cache) and location=uk"
    assert lines[1] == "  (fact role is web or fact role is cache) and fact location is uk"
    assert "-F filter expands to the following fact comparisons:" in lines
    assert "  os.family == debian" in lines


def test_describe_filter_functions_and_errors(fleet):
    code, out, _ = mco(fleet, "describe-filter", "-S", "fstat('/etc/hosts').size>0 and !role=db",
                       config=False)
    assert code == 0
    assert "fstat('/etc/hosts').size is greater than 0 and not (fact role is db)" in out
    code, out, err = mco(fleet, "describe-filter", "-S", "(role=web", config=False)
    assert code == 1
    assert "Missing parenthesis found while parsing -S input (role=web" in err
    assert "\n    ^\n" in err
