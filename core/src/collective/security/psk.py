"""Pre-shared key: HMAC-SHA256 over the domain-separated body (demos and labs only).

.. warning::
   Under PSK the caller id is **self-asserted**: the verifier reports as signer
   whatever ``caller`` (request) or ``sender`` (reply) the body claims, because every
   holder of the key can sign anything. Every node holds the key, so one compromised
   node can forge requests from any caller and replies from any node. PSK plus
   caller-based authorization policy is therefore *not* a security boundary
   (docs/security.md S4, S1, S13). Use the ``ed25519`` provider for anything real.

Config keys: ``security.psk_file`` (the key; mode 0600 required; surrounding
whitespace is stripped) and, on a client, ``security.identity`` (the caller id is
``user=<identity>``, default the login name). A node signs as its ``identity``.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..message import (
    RegistrationMessage,
    ReplyMessage,
    RequestMessage,
    decode_wire,
    encode_wire,
)
from ..names import CALLER_RE
from .base import Purpose, Role, SecurityError, SecurityProvider, Verified, check_purpose
from .keys import read_secret_file

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

ALG = "hmac-sha256"
KID = "psk"
#: Shorter keys are refused (a guessable PSK is an open door).
MIN_PSK_BYTES = 16


class PskProvider(SecurityProvider):
    """HMAC-SHA256 with a shared key; the signer is the *claimed* caller/sender."""

    name = "psk"

    def __init__(self, config: Config, role: Role) -> None:
        super().__init__(config, role)
        psk_file = config.get("security.psk_file")
        if not psk_file:
            raise SecurityError("config", "security.psk_file is not set (the psk provider needs it)")
        self.psk_file = Path(psk_file)
        try:
            key = read_secret_file(self.psk_file).strip()
        except FileNotFoundError:
            raise SecurityError("config", f"security.psk_file {self.psk_file}: no such file") from None
        if len(key) < MIN_PSK_BYTES:
            raise SecurityError("config", f"security.psk_file {self.psk_file}: the key is shorter than "
                                          f"{MIN_PSK_BYTES} bytes")
        self._key = key
        self.kid = KID
        if role == "client":
            name = config.get("security.identity")
            if not name:
                try:
                    name = getpass.getuser()
                except (KeyError, OSError):
                    raise SecurityError("config", "cannot determine the login name: set "
                                                  "security.identity") from None
            identity = f"user={name}"
            if not CALLER_RE.fullmatch(identity):
                raise SecurityError("config", f"caller id {identity!r} does not match {CALLER_RE.pattern}")
            self.identity = identity
        else:
            self.identity = config.identity
        log.debug("psk provider: caller ids are self-asserted (no per-caller authentication)")

    def reload(self) -> None:
        """Nothing to re-read: there is no trust store (the key is read at start)."""

    def _mac(self, domain: bytes, body: bytes) -> bytes:
        return hmac.new(self._key, domain + body, hashlib.sha256).digest()

    def sign(self, body: bytes, purpose: Purpose) -> bytes:
        domain = self._check_may_sign(purpose)
        body = bytes(body)
        return encode_wire(ALG, KID, self._mac(domain, body), body)

    def verify(self, wire: bytes, purpose: Purpose) -> Verified:
        """Check the MAC, then parse the body: the signer is its claimed caller/sender
        (or, for a registration, its claimed identity)."""
        domain = check_purpose(purpose)
        decoded = decode_wire(wire, self._max_bytes(purpose))
        if decoded.alg != ALG:
            raise SecurityError("wrong_alg", f"expected alg {ALG!r}, got {decoded.alg!r}")
        if decoded.kid != KID:
            raise SecurityError("unknown_key", f"key {decoded.kid!r} is not the pre-shared key")
        if not hmac.compare_digest(self._mac(domain, decoded.body), decoded.sig):
            raise SecurityError("bad_signature", f"{purpose} HMAC does not verify with the pre-shared key")
        if purpose == "request":
            request = RequestMessage.from_body(decoded.body)
            return Verified(decoded.body, request.caller, "client", KID, message=request)
        if purpose == "registration":  # self-asserted identity, like everything under PSK
            registration = RegistrationMessage.from_body(decoded.body)
            return Verified(decoded.body, registration.identity, "node", KID, message=registration)
        reply = ReplyMessage.from_body(decoded.body)
        return Verified(decoded.body, reply.sender, "node", KID, message=reply)
