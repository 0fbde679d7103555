"""Logical destinations: strict names, round trips, and the STOMP mapping per broker flavour."""

from __future__ import annotations

import pytest

from collective.connectors.destinations import (
    RABBITMQ_NODE_MAX_LENGTH,
    Destination,
    parse_logical,
    stomp_send,
    stomp_subscribe,
)

B = Destination.broadcast("mcollective", "rpcutil")
D = Destination.directed("mcollective", "web-01.example.com")
R = Destination.reply("mcollective", "c0ffee_42.x-y")
G = Destination.registration("mcollective")


def test_constructors_and_logical_form() -> None:
    assert B == Destination("broadcast", "mcollective", "rpcutil")
    assert B.logical() == "mcollective.broadcast.rpcutil"
    assert D.logical() == "mcollective.node.web-01.example.com"
    assert R.logical() == "mcollective.reply.c0ffee_42.x-y"
    assert str(D) == D.logical()
    with pytest.raises(AttributeError):
        B.name = "other"  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("dest", [B, D, R,
                                  Destination.directed("sub.coll-1", "n"),
                                  Destination.reply("dc1.prod", "a" * 128),
                                  Destination.broadcast("x", "a" * 64)])
def test_logical_round_trip(dest: Destination) -> None:
    assert parse_logical(dest.logical()) == dest
    assert hash(parse_logical(dest.logical())) == hash(dest)


@pytest.mark.parametrize("text", [
    "",
    "mcollective",
    "mcollective.node",
    "mcollective.node.",
    ".node.web1",
    "mcollective.queue.web1",
    "mcollective.node.../../etc/passwd",
    "mcollective.node.web1/../../x",
    "mcollective.reply.a/b",
    "../mcollective.node.web1",
    "mcollective.node.*",
    "mcollective.broadcast.#",
    "mcollective.broadcast.RpcUtil",       # agent names are lower case
    "mcollective.broadcast.rpc-util",
    "mcollective.broadcast." + "a" * 65,
    "mcollective.reply." + "a" * 129,
    "mcollective.node.-web1",              # identity must start alphanumeric
    "mcollective.node.web 1",
    "mcollective.node.web1\n",
    "mcollective.node.wéb1",
    "mcollective.node.web1\x00",
    "_coll.node.web1",
    "mcollective.node.a.reply.b",           # two valid readings: ambiguous
])
def test_parse_logical_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_logical(text)


@pytest.mark.parametrize("args", [
    ("broadcast", "mcollective", "../x"),
    ("directed", "mcollective", ".."),
    ("reply", "mcollective", ""),
    ("reply", "../c", "id"),
    ("other", "mcollective", "x"),
])
def test_constructor_validates(args: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        Destination(*args)  # type: ignore[arg-type]


def test_not_a_string() -> None:
    with pytest.raises(ValueError):
        parse_logical(None)  # type: ignore[arg-type]


def test_embedded_mapping() -> None:
    assert stomp_subscribe(B, "embedded") == ("/topic/mcollective.broadcast.rpcutil", {})
    assert stomp_subscribe(D, "embedded") == ("/queue/mcollective.node.web-01.example.com", {})
    assert stomp_subscribe(R, "embedded") == ("/queue/mcollective.reply.c0ffee_42.x-y", {})
    for dest in (B, D, R):
        assert stomp_send(dest, "embedded")[0] == stomp_subscribe(dest, "embedded")[0]
        assert stomp_send(dest, "embedded")[1] == {}


def test_rabbitmq_mapping() -> None:
    assert stomp_subscribe(B, "rabbitmq") == ("/topic/mcollective.broadcast.rpcutil", {})
    assert stomp_send(B, "rabbitmq") == ("/topic/mcollective.broadcast.rpcutil", {})

    dest, headers = stomp_subscribe(D, "rabbitmq")
    assert dest == "/queue/mcollective.node.web-01.example.com"
    # durable: RabbitMQ deletes a durable=false STOMP queue when its subscriber leaves
    assert headers["durable"] == "true" and headers["auto-delete"] == "false"
    assert int(headers["x-expires"]) > 0
    assert int(headers["x-message-ttl"]) > 0
    assert int(headers["x-max-length"]) == RABBITMQ_NODE_MAX_LENGTH
    # sending never declares (no PRECONDITION_FAILED on argument mismatch)
    assert stomp_send(D, "rabbitmq") == ("/amq/queue/mcollective.node.web-01.example.com", {})

    dest, headers = stomp_subscribe(R, "rabbitmq")
    assert dest == "/queue/mcollective.reply.c0ffee_42.x-y"
    assert headers["durable"] == "true" and "x-expires" in headers and "x-max-length" in headers
    assert "x-message-ttl" not in headers
    assert stomp_send(R, "rabbitmq")[0] == "/amq/queue/mcollective.reply.c0ffee_42.x-y"


def test_activemq_mapping() -> None:
    assert stomp_subscribe(B, "activemq") == ("/topic/mcollective.rpcutil.agent", {})
    assert stomp_send(B, "activemq") == ("/topic/mcollective.rpcutil.agent", {})
    assert stomp_subscribe(D, "activemq") == (
        "/queue/mcollective.nodes", {"selector": "mc_identity = 'web-01.example.com'"})
    assert stomp_send(D, "activemq") == (
        "/queue/mcollective.nodes", {"mc_identity": "web-01.example.com"})
    assert stomp_subscribe(R, "activemq") == ("/queue/mcollective.reply.c0ffee_42.x-y", {})
    assert stomp_send(R, "activemq") == ("/queue/mcollective.reply.c0ffee_42.x-y", {})


def test_ttl_headers_per_flavour() -> None:
    now = 1_700_000_000.0
    for flavour in ("embedded", "activemq"):
        _, headers = stomp_send(D, flavour, ttl=60, now=now)
        assert headers["expires"] == str(int(now * 1000) + 60_000)
        assert "expiration" not in headers
    _, headers = stomp_send(D, "rabbitmq", ttl=60, now=now)
    assert headers == {"expiration": "60000"}
    _, headers = stomp_send(B, "rabbitmq", ttl=1.5)
    assert headers == {"expiration": "1500"}
    with pytest.raises(ValueError):
        stomp_send(D, "rabbitmq", ttl=0)


def test_unknown_flavour() -> None:
    with pytest.raises(ValueError, match="flavour"):
        stomp_subscribe(B, "kafka")
    with pytest.raises(ValueError, match="flavour"):
        stomp_send(B, "kafka")


# -- registrations ------------------------------------------------------------------------------
def test_registration_destination() -> None:
    assert G == Destination("registration", "mcollective", "")
    assert G.logical() == "mcollective.registration"
    assert parse_logical("mcollective.registration") == G
    assert parse_logical("dc1.prod.registration") == Destination.registration("dc1.prod")
    with pytest.raises(ValueError, match="no name"):
        Destination("registration", "mcollective", "x")
    with pytest.raises(ValueError):
        Destination.registration("../x")


@pytest.mark.parametrize("text", [
    "registration", ".registration", "mcollective.registration.", "mcollective.registration.x",
    "mcollective.registration/x", "*.registration", "#.registration", "mcollective.Registration",
    # two valid readings (a reply id "b.registration" of collective "a", or the
    # registration topic of collective "a.reply.b"): refused as ambiguous
    "a.reply.b.registration",
])
def test_registration_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_logical(text)


def test_registration_mapping_per_flavour() -> None:
    assert stomp_subscribe(G, "embedded") == ("/topic/mcollective.registration", {})
    assert stomp_send(G, "embedded")[0] == "/topic/mcollective.registration"
    assert stomp_subscribe(G, "rabbitmq") == ("/topic/mcollective.registration", {})
    dest, headers = stomp_send(G, "rabbitmq", ttl=600)
    assert dest == "/topic/mcollective.registration" and headers == {"expiration": "600000"}
    assert stomp_subscribe(G, "activemq") == ("/topic/mcollective.registration.agent", {})
    dest, headers = stomp_send(G, "activemq", ttl=1, now=1000.0)
    assert dest == "/topic/mcollective.registration.agent" and headers == {"expires": "1001000"}
    # never the same destination as a request to any agent on embedded / RabbitMQ
    for flavour in ("embedded", "rabbitmq"):
        assert stomp_send(G, flavour)[0] != stomp_send(
            Destination.broadcast("mcollective", "registration"), flavour)[0]
