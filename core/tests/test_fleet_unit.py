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
