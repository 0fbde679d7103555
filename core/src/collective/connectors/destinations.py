"""Logical destinations and their STOMP names for each broker flavour.

A :class:`Destination` is broker-neutral: ``COLL.broadcast.AGENT`` (a request to every
node that has AGENT), ``COLL.node.IDENTITY`` (a request to one node),
``COLL.reply.ID`` (replies for one client) and ``COLL.registration`` (the nodes'
periodic registrations, read by inventory collectors; it has no name part). The logical text form is what the signed
request carries in ``reply_to``; :func:`parse_logical` is strict, so a reply id or a
node name can never smuggle a path or a wildcard.

Mapping per flavour (``stomp_subscribe`` / ``stomp_send`` return ``(destination, headers)``):

==========  ==============================  ==================================  ==============================
kind        embedded                        rabbitmq                            activemq
==========  ==============================  ==================================  ==============================
broadcast   ``/topic/C.broadcast.AGENT``    ``/topic/C.broadcast.AGENT``        ``/topic/C.AGENT.agent``
directed    ``/queue/C.node.ID``            SUB ``/queue/C.node.ID`` + queue    ``/queue/C.nodes`` + selector
                                            args; SEND ``/amq/queue/C.node.ID`` ``mc_identity = 'ID'``
reply       ``/queue/C.reply.ID``           SUB ``/queue/C.reply.ID`` + args;   ``/queue/C.reply.ID``
                                            SEND ``/amq/queue/C.reply.ID``
registr.    ``/topic/C.registration``       ``/topic/C.registration``           ``/topic/C.registration.agent``
==========  ==============================  ==================================  ==============================

Reply destinations belong to a caller: ``C.reply.NAME.TAG`` where NAME is the name part
of the caller id (``admin`` for ``cert=admin``) and TAG one dot-free word (the client
uses a random 128-bit hex string; ``mco rpc --reply-to C.reply.admin.job1`` names its
own). The daemon replies only to a ``reply_to`` of the request's caller
(:func:`reply_owner`, :func:`caller_reply_name`), and the embedded broker lets a client
login read only ``C.reply.LOGIN.*``, so one client cannot read or steer another's replies.

Registrations go to a *topic*: every collector subscribed at the time gets each one,
nobody stores them (a collector that was down simply waits for the next interval).
On ActiveMQ the topic is the one MCollective's ``registration`` agent listened on, so
an agent literally named ``registration`` would share it (its daemon refuses the
registrations as requests: their signature domain differs).

RabbitMQ: ``/topic/X`` routes through ``amq.topic`` with routing key X (an exclusive,
auto-delete queue per subscription: at-most-once, like MCollective). Node and reply
queues are declared by the *subscriber* with ``durable=true, auto-delete=false`` plus
``x-expires`` (the queue disappears when nobody has used it for a while), and node
queues get ``x-message-ttl`` and ``x-max-length`` so a dead node cannot fill the broker
(docs/security.md R1/R9). Senders use ``/amq/queue/NAME``, which publishes to an existing queue
without re-declaring it: no ``PRECONDITION_FAILED`` when arguments differ, and a message
for a queue that does not exist is dropped rather than creating an unbounded queue.
(Verified on RabbitMQ 3.10: with ``durable=false`` the STOMP plugin deletes the queue
when its subscriber disconnects, so a request sent while a node reconnects would be
lost; hence durable queues, non-persistent messages, and ``x-expires`` for clean-up.)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Literal

from ..names import AGENT_RE, COLLECTIVE_RE, IDENTITY_RE

Kind = Literal["broadcast", "directed", "reply", "registration"]
Flavour = Literal["embedded", "rabbitmq", "activemq"]

FLAVOURS: tuple[str, ...] = ("embedded", "rabbitmq", "activemq")

#: Collectives and node identities share one grammar (:mod:`collective.names`); the old
#: name is kept for code that imports it from here.
NAME_RE = IDENTITY_RE
REPLY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
#: The last, dot-free part of a reply id: ``C.reply.NAME.TAG``.
REPLY_TAG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_KIND_WORD = {"broadcast": "broadcast", "directed": "node", "reply": "reply"}
_WORD_KIND: dict[str, Kind] = {"broadcast": "broadcast", "node": "directed", "reply": "reply"}
REGISTRATION_WORD = "registration"

#: RabbitMQ queue arguments (docs/security.md R1): an unused queue is deleted after 2 minutes;
#: a node queue keeps a request at most 10 minutes (``security.max_ttl``) and at most
#: 1000 of them (oldest dropped first); a reply queue at most 10000 replies.
RABBITMQ_QUEUE_EXPIRES_MS = 120_000
RABBITMQ_NODE_MESSAGE_TTL_MS = 600_000
RABBITMQ_NODE_MAX_LENGTH = 1_000
RABBITMQ_REPLY_MAX_LENGTH = 10_000

#: ActiveMQ: the header (and selector) that addresses one node on the shared queue.
ACTIVEMQ_IDENTITY_HEADER = "mc_identity"


def _check(value: str, regex: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not regex.fullmatch(value):
        raise ValueError(f"invalid {what}: {value!r} (must match {regex.pattern})")
    return value


@dataclass(frozen=True)
class Destination:
    """A broker-neutral destination; validated on construction."""

    kind: Kind
    collective: str
    name: str  # agent name / node identity / reply id; "" for a registration

    def __post_init__(self) -> None:
        _check(self.collective, COLLECTIVE_RE, "collective")
        if self.kind == "broadcast":
            _check(self.name, AGENT_RE, "agent name")
        elif self.kind == "directed":
            _check(self.name, IDENTITY_RE, "node identity")
        elif self.kind == "reply":
            _check(self.name, REPLY_ID_RE, "reply id")
        elif self.kind == "registration":
            if self.name != "":
                raise ValueError(f"a registration destination has no name, got {self.name!r}")
        else:
            raise ValueError(f"invalid destination kind: {self.kind!r}")

    # -- constructors --------------------------------------------------------------
    @classmethod
    def broadcast(cls, collective: str, agent: str) -> Destination:
        return cls("broadcast", collective, agent)

    @classmethod
    def directed(cls, collective: str, identity: str) -> Destination:
        return cls("directed", collective, identity)

    @classmethod
    def reply(cls, collective: str, reply_id: str) -> Destination:
        return cls("reply", collective, reply_id)

    @classmethod
    def registration(cls, collective: str) -> Destination:
        return cls("registration", collective, "")

    # -- text form -----------------------------------------------------------------
    def logical(self) -> str:
        """``C.broadcast.AGENT``, ``C.node.IDENTITY``, ``C.reply.ID`` or ``C.registration``."""
        if self.kind == "registration":
            return f"{self.collective}.{REGISTRATION_WORD}"
        return f"{self.collective}.{_KIND_WORD[self.kind]}.{self.name}"

    def __str__(self) -> str:
        return self.logical()


def parse_logical(text: str) -> Destination:
    """Parse ``C.broadcast.AGENT`` / ``C.node.IDENTITY`` / ``C.reply.ID`` /
    ``C.registration``; ValueError otherwise.

    Collective names may contain dots, so the kind word is searched from the left: the
    first ``.broadcast.``, ``.node.`` or ``.reply.`` whose prefix is a valid collective
    name and whose remainder is a valid name for that kind wins. An ambiguous text
    (two different valid readings) is rejected.
    """
    if not isinstance(text, str) or not text or len(text) > 256 or not text.isascii():
        raise ValueError(f"invalid logical destination: {text!r}")
    readings: set[Destination] = set()
    for word, kind in _WORD_KIND.items():
        marker = f".{word}."
        start = 0
        while (idx := text.find(marker, start)) != -1:
            collective, name = text[:idx], text[idx + len(marker):]
            try:
                readings.add(Destination(kind, collective, name))
            except ValueError:
                pass
            start = idx + 1
    suffix = f".{REGISTRATION_WORD}"
    if text.endswith(suffix):
        try:
            readings.add(Destination.registration(text[: -len(suffix)]))
        except ValueError:
            pass
    if len(readings) != 1:
        why = "ambiguous" if readings else "invalid"
        raise ValueError(f"{why} logical destination: {text!r} "
                         "(expected COLLECTIVE.broadcast.AGENT, COLLECTIVE.node.IDENTITY, "
                         "COLLECTIVE.reply.ID or COLLECTIVE.registration)")
    return readings.pop()


def caller_reply_name(caller: str) -> str:
    """The NAME of a caller's reply destinations ``C.reply.NAME.TAG``: the part of the
    caller id after ``=`` (``cert=admin`` -> ``admin``).

    :raises ValueError: when that part cannot stand in a reply id
    """
    name = caller.partition("=")[2] if isinstance(caller, str) else ""
    if not name or not REPLY_ID_RE.fullmatch(name) or len(name) > 63:
        raise ValueError(f"caller id {caller!r} has no name usable in a reply destination "
                         f"(must match {REPLY_ID_RE.pattern}, at most 63 characters)")
    return name


def reply_owner(dest: Destination) -> str | None:
    """NAME of a reply destination ``C.reply.NAME.TAG``; None for any other shape."""
    if dest.kind != "reply":
        return None
    name, dot, tag = dest.name.rpartition(".")
    if not dot or not name or not REPLY_TAG_RE.fullmatch(tag):
        return None
    return name


def _flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown broker flavour {flavour!r} (one of {', '.join(FLAVOURS)})")
    return flavour


def _rabbitmq_queue_args(dest: Destination) -> dict[str, str]:
    headers = {
        # durable=true on purpose: RabbitMQ's STOMP plugin *deletes* a queue declared
        # with durable=false as soon as its subscriber disconnects, which would lose
        # requests sent while a node reconnects. x-expires removes unused queues instead.
        "durable": "true",
        "auto-delete": "false",
        "x-expires": str(RABBITMQ_QUEUE_EXPIRES_MS),
    }
    if dest.kind == "directed":
        headers["x-message-ttl"] = str(RABBITMQ_NODE_MESSAGE_TTL_MS)
        headers["x-max-length"] = str(RABBITMQ_NODE_MAX_LENGTH)
    else:
        headers["x-max-length"] = str(RABBITMQ_REPLY_MAX_LENGTH)
    return headers


def stomp_subscribe(dest: Destination, flavour: str) -> tuple[str, dict[str, str]]:
    """The STOMP ``destination`` and extra SUBSCRIBE headers for ``dest`` on ``flavour``."""
    flavour = _flavour(flavour)
    c, n = dest.collective, dest.name
    if flavour == "activemq":
        if dest.kind == "broadcast":
            return f"/topic/{c}.{n}.agent", {}
        if dest.kind == "registration":
            return f"/topic/{c}.{REGISTRATION_WORD}.agent", {}
        if dest.kind == "directed":
            return f"/queue/{c}.nodes", {"selector": f"{ACTIVEMQ_IDENTITY_HEADER} = '{n}'"}
        return f"/queue/{c}.reply.{n}", {}
    if dest.kind in ("broadcast", "registration"):
        return f"/topic/{dest.logical()}", {}
    if flavour == "rabbitmq":
        return f"/queue/{dest.logical()}", _rabbitmq_queue_args(dest)
    return f"/queue/{dest.logical()}", {}


def stomp_send(dest: Destination, flavour: str, ttl: float | None = None,
               now: float | None = None) -> tuple[str, dict[str, str]]:
    """The STOMP ``destination`` and SEND headers for ``dest`` on ``flavour``.

    With ``ttl`` (seconds) the message carries an expiry: ``expires`` (absolute, ms since
    the epoch) for the embedded broker and ActiveMQ, ``expiration`` (relative ms) for
    RabbitMQ. ``now`` (seconds since the epoch) is for tests.
    """
    flavour = _flavour(flavour)
    c, n = dest.collective, dest.name
    headers: dict[str, str] = {}
    if ttl is not None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        ttl_ms = int(round(ttl * 1000))
        if flavour == "rabbitmq":
            headers["expiration"] = str(ttl_ms)
        else:
            headers["expires"] = str(int((time.time() if now is None else now) * 1000) + ttl_ms)
    if flavour == "activemq":
        if dest.kind == "broadcast":
            return f"/topic/{c}.{n}.agent", headers
        if dest.kind == "registration":
            return f"/topic/{c}.{REGISTRATION_WORD}.agent", headers
        if dest.kind == "directed":
            headers[ACTIVEMQ_IDENTITY_HEADER] = n
            return f"/queue/{c}.nodes", headers
        return f"/queue/{c}.reply.{n}", headers
    if dest.kind in ("broadcast", "registration"):
        return f"/topic/{dest.logical()}", headers
    if flavour == "rabbitmq":
        return f"/amq/queue/{dest.logical()}", headers
    return f"/queue/{dest.logical()}", headers
