"""``mco`` with no client config anywhere says where it looked and how to make one,
instead of failing on a missing key."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [["ping"], ["rpc", "rpcutil", "ping"], ["find"],
                                     ["inventory", "node-001"], ["facts", "role"]])
def test_no_client_config_names_the_paths_tried_and_how_to_make_one(tmp_path, command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTIVE_")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "collective", *command], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "no client config found" in err
    assert f"{tmp_path}/.config/collective/client.yaml" in err and "/etc/collective/client.yaml" in err
    assert "mco fleet up" in err and "mco keys generate" in err
    assert "Traceback" not in err


def test_a_config_given_in_the_environment_alone_is_not_refused(tmp_path):
    """Everything in COLLECTIVE_* variables and no file: the client is built (and fails
    later, on the broker that is not there, not on the missing file)."""
    from collective.security.keys import generate_keypair

    generate_keypair("admin", tmp_path)
    (tmp_path / "trust" / "nodes").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTIVE_")}
    env.update(HOME=str(tmp_path), COLLECTIVE_SECURITY__PRIVATE_KEY=str(tmp_path / "admin.key"),
               COLLECTIVE_SECURITY__TRUST_DIR=str(tmp_path / "trust"),
               COLLECTIVE_BROKER__PORT="1")
    proc = subprocess.run([sys.executable, "-m", "collective", "ping"], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)
    assert "no client config found" not in proc.stderr
    assert proc.returncode != 0  # nothing listens on port 1
