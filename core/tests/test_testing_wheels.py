"""The wheel check plugin distributions use: wheels built alone, a fresh venv with only core."""

from __future__ import annotations

from pathlib import Path

from collective.testing.wheels import fresh_venv_with

CANARY = Path(__file__).resolve().parents[2] / "tests" / "canary"


def test_core_and_a_plugin_wheel_work_in_a_fresh_venv(tmp_path):
    found = fresh_venv_with(CANARY, tmp_path)
    assert found["statuses"] == {"test-canary": "ok"}
    assert {"canary", "rpcutil"} <= set(found["agents"])
    # the DDLs and the meta-schema travelled inside the wheels
    assert found["ddls"]["rpcutil"] == "0.1.0" and found["ddls"]["canary"] == "0.1.0"
