"""The security provider interface, its errors and the identity-binding checks.

Order on receipt: size → strict outer parse → key lookup → signature over
the received body bytes → strict body parse and envelope schema → identity binding.
:meth:`SecurityProvider.verify` does the first four (and raises
:class:`~collective.message.MalformedMessage` or :class:`SecurityError`);
:meth:`SecurityProvider.verify_request` and :meth:`SecurityProvider.verify_reply`
add the rest. Freshness and replay are :mod:`collective.security.freshness`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..message import (
    MAX_REGISTRATION_WIRE_BYTES,
    RegistrationMessage,
    ReplyMessage,
    RequestMessage,
)

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

Role = Literal["client", "node"]
Purpose = Literal["request", "reply", "registration"]

#: Domain separation: what is actually signed is ``DOMAINS[purpose] + body``, so a
#: signature made for one purpose never verifies for another (a reply or a
#: registration never verifies as a request, and so on).
DOMAINS: dict[str, bytes] = {
    "request": b"collective/1 request\n",
    "reply": b"collective/1 reply\n",
    "registration": b"collective/1 registration\n",
}

#: Which role may sign which purposes: clients sign requests; nodes sign replies and
#: their own registrations.
SIGNS: dict[str, frozenset[str]] = {
    "client": frozenset({"request"}),
    "node": frozenset({"reply", "registration"}),
}

#: The role whose keys may sign each purpose (the verifier's side of :data:`SIGNS`).
SIGNER_ROLE: dict[str, str] = {"request": "client", "reply": "node", "registration": "node"}


class SecurityError(Exception):
    """A message or a configuration refused for a security reason.

    ``reason`` is the counter/audit code: ``bad_signature``, ``unknown_key``,
    ``caller_mismatch``, ``sender_mismatch``, ``identity_mismatch``, ``request_mismatch``, ``wrong_role``,
    ``wrong_alg``, ``revoked``, ``malformed``, ``config``, ``insecure_file``,
    ``expired``, ``future``, ``ttl_too_long``, ``replayed``, ``replay_window``.
    """

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        super().__init__(message or reason)


@dataclass
class Verified:
    """The outcome of a successful signature check.

    ``signer`` is the identity the *trust store* gives the key (``cert=alice`` for a
    client, the node identity for a node); ``role`` is ``client`` or ``node``.
    """

    body: bytes = field(repr=False)
    signer: str
    role: str
    kid: str
    #: The parsed envelope when the provider had to parse it already (PSK).
    message: Any = field(default=None, repr=False, compare=False)


def check_purpose(purpose: str) -> bytes:
    try:
        return DOMAINS[purpose]
    except KeyError:
        raise ValueError(f"purpose must be one of {', '.join(map(repr, DOMAINS))}, "
                         f"not {purpose!r}") from None


class SecurityProvider(ABC):
    """Signs outgoing bodies and verifies incoming wires.

    Constructed with the config and the role of this side (``client`` or ``node``).
    ``identity`` is what this side signs as.
    """

    name: ClassVar[str]
    identity: str

    def __init__(self, config: Config, role: Role) -> None:
        if role not in ("client", "node"):
            raise ValueError(f"role must be 'client' or 'node', not {role!r}")
        self.config = config
        self.role: Role = role
        self.max_request_bytes: int | None = config.get("security.max_request_bytes")

    @abstractmethod
    def sign(self, body: bytes, purpose: Purpose) -> bytes:
        """Return the wire bytes carrying ``body`` signed for ``purpose``."""

    @abstractmethod
    def verify(self, wire: bytes, purpose: Purpose) -> Verified:
        """Check the signature of ``wire`` for ``purpose``; raise on any failure."""

    @abstractmethod
    def reload(self) -> None:
        """Re-read the trust store (SIGHUP)."""

    # -- helpers for implementations ------------------------------------------------
    def _check_may_sign(self, purpose: str) -> bytes:
        domain = check_purpose(purpose)
        if purpose not in SIGNS[self.role]:
            allowed = " and ".join(f"{p}s" for p in sorted(SIGNS[self.role]))
            raise SecurityError("wrong_role", f"a {self.role} signs only {allowed}, not {purpose}s")
        return domain

    def _max_bytes(self, purpose: str) -> int | None:
        if purpose == "request":
            return self.max_request_bytes
        if purpose == "registration":
            return MAX_REGISTRATION_WIRE_BYTES
        return None

    # -- verification with identity binding ---------------------------------------------
    def verify_request(self, wire: bytes) -> tuple[Verified, RequestMessage]:
        """Verify a request and bind it: ``request.caller`` must be the verified signer."""
        verified = self.verify(wire, "request")
        request = verified.message if isinstance(verified.message, RequestMessage) else None
        if request is None:
            request = RequestMessage.from_body(verified.body)
        if request.caller != verified.signer:
            raise SecurityError(
                "caller_mismatch",
                f"request {request.id} claims caller {request.caller!r} but is signed by "
                f"{verified.signer!r} (key {verified.kid})",
            )
        return verified, request

    def verify_reply(self, wire: bytes, expected_request_sha256: str | None = None,
                     ) -> tuple[Verified, ReplyMessage]:
        """Verify a reply: ``reply.sender`` must be the verified signer, and when
        ``expected_request_sha256`` is given the reply must be bound to that request body."""
        verified = self.verify(wire, "reply")
        reply = verified.message if isinstance(verified.message, ReplyMessage) else None
        if reply is None:
            reply = ReplyMessage.from_body(verified.body)
        if reply.sender != verified.signer:
            raise SecurityError(
                "sender_mismatch",
                f"reply claims sender {reply.sender!r} but is signed by {verified.signer!r} "
                f"(key {verified.kid})",
            )
        if expected_request_sha256 is not None and reply.request_sha256 != expected_request_sha256:
            raise SecurityError(
                "request_mismatch",
                f"reply from {reply.sender!r} is bound to request body {reply.request_sha256[:16]}..., "
                f"not {expected_request_sha256[:16]}...",
            )
        return verified, reply

    def verify_registration(self, wire: bytes) -> tuple[Verified, RegistrationMessage]:
        """Verify a registration: signed by a *node* key, size-capped, strictly parsed,
        and ``registration.identity`` must be the verified signer (a node registers only
        itself)."""
        verified = self.verify(wire, "registration")
        if verified.role != SIGNER_ROLE["registration"]:
            raise SecurityError("wrong_role", f"registration signed by a {verified.role} key "
                                              f"({verified.kid}); only node keys may register")
        registration = verified.message if isinstance(verified.message, RegistrationMessage) else None
        if registration is None:
            registration = RegistrationMessage.from_body(verified.body)
        if registration.identity != verified.signer:
            raise SecurityError(
                "identity_mismatch",
                f"registration claims identity {registration.identity!r} but is signed by "
                f"{verified.signer!r} (key {verified.kid})",
            )
        return verified, registration

    def __repr__(self) -> str:
        return f"{type(self).__name__}(role={self.role!r}, identity={getattr(self, 'identity', None)!r})"
