"""Config: schema validation with file and key in the message, paths, env overrides."""

from __future__ import annotations

import pytest

from collective.config import READABLE_KEYS, Config, ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


def test_defaults_and_main_collective(tmp_path):
    cfg = load_config(write(tmp_path, "identity: n1\ncollectives: [a, b]\n"), kind="server", env={})
    assert cfg.identity == "n1"
    assert cfg.main_collective == "a"
    assert cfg.get("broker.port") == 61613
    assert cfg.get("security.provider") == "ed25519"


@pytest.mark.parametrize(("text", "message"), [
    ("broker:\n  prot: 1\n", "server.yaml: broker.prot: unknown key"),
    ("broker:\n  port: abc\n", "server.yaml: broker.port: 'abc' is not of type 'integer'"),
    ("broker:\n  port: 70000\n", "server.yaml: broker.port: 70000 is greater than the maximum"),
    ("identity: ../etc\n", "server.yaml: identity: '../etc' does not match"),
    ("collectives: [a]\nmain_collective: b\n", "main_collective: 'b' is not one of collectives"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("broker: [\n", "server.yaml: line 2 column 1: invalid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), kind="server", env={})
    assert message in str(err.value)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    cfg = load_config(write(tmp_path, "security:\n  private_key: keys/n.key\n"), kind="server", env={})
    assert cfg.get("security.private_key") == str(tmp_path / "keys" / "n.key")


def test_env_overrides_one_key(tmp_path):
    cfg = load_config(write(tmp_path, "broker:\n  port: 1000\n"), kind="server",
                      env={"COLLECTIVE_BROKER__PORT": "2000", "COLLECTIVE_LOGGING__LEVEL": "DEBUG"})
    assert cfg.get("broker.port") == 2000
    assert cfg.get("logging.level") == "DEBUG"


def test_env_override_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="broker.port"):
        Config({}, kind="server", env={"COLLECTIVE_BROKER__PORT": "nope"})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", kind="client", env={})


def test_password_sources(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert Config({"broker": {"password_file": str(pw)}}, env={}).broker_password() == "s3cret"
    monkeypatch.setenv("BROKER_PW", "fromenv")
    assert Config({"broker": {"password_env": "BROKER_PW"}}, env={}).broker_password() == "fromenv"


def test_readable_keys_hold_no_secrets():
    for key in READABLE_KEYS:
        assert not any(word in key for word in ("password", "psk", "private", "key_file"))
