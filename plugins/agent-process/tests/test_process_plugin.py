"""The plugin contract, the wheel on its own, the aggregate, the data plugin and the CLI table."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

import collective_agent_process
import collective_agent_process.plugin as process_plugin
from collective.aggregates import render
from collective.testing import check_plugin
from collective_agent_process.cli import process_table
from collective_agent_process.common import bytes_to_human, pattern_ok, process_summary
from collective_agent_process.data import ProcessData

PLUGIN_DIR = Path(__file__).resolve().parents[1]


def test_plugin_contract():
    check_plugin(process_plugin)


def test_entry_point_and_version():
    dist = metadata.distribution("collective-agent-process")
    [ep] = [ep for ep in dist.entry_points if ep.group == "collective"]
    assert (ep.name, ep.value) == ("agent-process", "collective_agent_process.plugin")
    assert dist.version == collective_agent_process.__version__
    assert any(req.startswith("psutil") for req in dist.requires or [])


def test_registrations_through_entry_points():
    from collective.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert pm.agents()["process"].__module__ == "collective_agent_process.agent"
    assert "process_pattern" in pm.formats()
    assert "process_summary" in pm.aggregates()
    assert pm.data_plugins()["process"] is ProcessData


@pytest.mark.slow
def test_wheel_installs_alone_into_a_fresh_venv(tmp_path):
    from collective.testing.wheels import fresh_venv_with

    found = fresh_venv_with(PLUGIN_DIR, tmp_path)
    assert found["statuses"].get("agent-process") == "ok", found["statuses"]
    assert "process" in found["agents"]
    assert found["ddls"]["process"] == collective_agent_process.__version__


@pytest.mark.parametrize("value", ["", "nginx: master process", "/usr/sbin/sshd -D", "a.b[c](d)+",
                                   "^/usr/(s)?bin/(cron|sshd)$", " -c", "key=value,x@y:1%2~#!",
                                   "a" * 256])
def test_pattern_format_accepts(value):
    assert pattern_ok(value)


@pytest.mark.parametrize("value", ["-c", "--help", "x;y", "x&y", "`id`", "$(id)", "${IFS}", "a<b",
                                   "a>b", "'q'", '"q"', "x\ny", "x\x00y", "x\ty", "caf\u00e9",
                                   "a" * 257])
def test_pattern_format_refuses(value):
    assert not pattern_ok(value)


def test_bytes_to_human():
    assert bytes_to_human(0) == "0 B"
    assert bytes_to_human(1023) == "1023 B"
    assert bytes_to_human(1536) == "1.500 KiB"
    assert bytes_to_human(5 * 1024**3) == "5.000 GiB"
    assert bytes_to_human(None) == "-"


def test_process_summary_block():
    values = [
        [{"pid": 1, "rss": 1024, "vsize": 4096}, {"pid": 2, "rss": 1024, "vsize": 4096}],
        [],
        [{"pid": 3, "rss": 2048, "vsize": None}],
    ]
    text = render("The Process List", process_summary(values, []))
    assert text == (
        "Summary of The Process List:\n\n"
        "       Matched hosts: 2\n"
        "   Matched processes: 3\n"
        "       Resident Size: 4.000 KiB\n"
        "        Virtual Size: 8.000 KiB\n"
    )


def test_process_table():
    lines = process_table([{"pid": 4242, "username": "averyveryverylongname", "vsize": 10 * 1024**2,
                            "cmdline": "x" * 150}])
    assert lines[0] == "     PID USER        VSZ              COMMAND"
    assert lines[1].startswith("    4242 averyveryv  10.000 MiB       xxx")
    assert lines[1].endswith("...") and len(lines[1].split()[-1]) == 100
    assert process_table([{"pid": 1, "username": "root", "vsize": 1, "cmdline": "x" * 150}],
                         verbose=True)[1].endswith("x" * 150)


def test_data_plugin(spawn, marker):
    victim = spawn(marker)
    ProcessData.validate(marker)
    assert ProcessData().query(marker, None) == {"exists": True, "count": 1}
    victim.kill()
    victim.wait(timeout=10)
    assert ProcessData().query(marker, None) == {"exists": False, "count": 0}


@pytest.mark.parametrize("value", [None, "", "x; touch /tmp/pwn", "$(id)", "-x", "a\nb"])
def test_data_plugin_refuses(value):
    with pytest.raises(ValueError):
        ProcessData.validate(value)
