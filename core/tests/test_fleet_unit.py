"""Fleet helpers that need no processes: broker URLs and sample facts."""

from __future__ import annotations

import pytest

from collective.fleet import BrokerSpec, FleetError, sample_facts


def test_broker_url_parsing():
    spec = BrokerSpec.from_url("rabbitmq", "stomp://collective:p%40ss@127.0.0.1:61614/%2Fcollective")
    assert (spec.flavour, spec.host, spec.port, spec.user, spec.password, spec.vhost) == (
        "rabbitmq", "127.0.0.1", 61614, "collective", "p@ss", "/collective")
    assert BrokerSpec.from_url("activemq", "stomp://127.0.0.1").port == 61613


def test_broker_url_must_be_stomp():
    with pytest.raises(FleetError, match="stomp://"):
        BrokerSpec.from_url("rabbitmq", "http://127.0.0.1/")


def test_sample_facts_vary_across_nodes():
    facts = [sample_facts(i, f"node-{i:03d}")[0] for i in range(1, 10)]
    assert {f["role"] for f in facts} == {"web", "db", "cache"}
    assert {f["location"] for f in facts} == {"uk", "us", "de"}
    assert {f["os"]["family"] for f in facts} == {"debian", "redhat"}
    assert len({f["hostname"] for f in facts}) == 9
    classes = sample_facts(2, "node-002")[1]
    assert "role::db" in classes and "base" in classes


def test_server_config_file_gives_each_node_its_own_paths(tmp_path):
    from collective.fleet import load_server_config, per_identity

    path = tmp_path / "agents.yaml"
    path.write_text("plugins:\n  nrpe:\n    conf_dir: /srv/{identity}/nrpe.d\n"
                    "    conf_file: [/etc/a.cfg, '/srv/{identity}.cfg']\n    parallel: 2\n")
    sections = load_server_config(path)
    assert per_identity(sections)(2, "node-002") == {"plugins": {"nrpe": {
        "conf_dir": "/srv/node-002/nrpe.d", "conf_file": ["/etc/a.cfg", "/srv/node-002.cfg"],
        "parallel": 2}}}
    assert sections["plugins"]["nrpe"]["conf_dir"] == "/srv/{identity}/nrpe.d"  # not changed


@pytest.mark.parametrize(("text", "message"), [
    ("plugins: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping of config sections"),
])
def test_a_bad_server_config_file_is_one_clear_error(tmp_path, text, message):
    from collective.fleet import load_server_config

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(FleetError, match=message) as info:
        load_server_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(FleetError, match="No such file"):
        load_server_config(tmp_path / "absent.yaml")
