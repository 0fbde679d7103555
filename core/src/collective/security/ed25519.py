"""Ed25519 signatures with a static trust store (the default provider).

Config keys (section ``security``):

``private_key``
    This side's PEM PKCS#8 key (mode 0600; anything more open is refused).
``trust_dir``
    ``clients/NAME.pub`` (keys that may sign requests, caller id ``cert=NAME``) and
    ``nodes/NAME.pub`` (keys that may sign replies and registrations, node identity
    ``NAME``).
``identity``
    On a client, the key name: requests are signed as ``cert=<identity>`` (default:
    the private key's file stem). On a node the identity is the top-level ``identity``.

The trust store is read once (and again on :meth:`Ed25519Provider.reload`) and cached
by key id; verification never touches the file system and nothing is ever learned from
the network: a message has no field that could add a key (docs/security.md S5, CVE-2014-3251,
CVE-2017-2298). File names are checked against the identity grammar and resolved
inside the trust dir before a key is loaded (S10).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..message import decode_wire, encode_wire
from .base import Purpose, Role, SecurityError, SecurityProvider, Verified, check_purpose
from .keys import (
    TRUST_KINDS,
    key_id,
    key_path,
    load_private_key,
    load_public_key,
    trust_problem,
    validate_name,
)

if TYPE_CHECKING:
    from ..config import Config

log = logging.getLogger(__name__)

ALG = "ed25519"
_ROLE_OF_KIND = {"clients": "client", "nodes": "node"}
_KIND_FOR_PURPOSE = {"request": "clients", "reply": "nodes", "registration": "nodes"}


@dataclass(frozen=True)
class TrustedKey:
    """One public key of the trust store and the identity it stands for."""

    kid: str
    name: str
    kind: str  # "clients" or "nodes"
    path: Path
    public_key: Ed25519PublicKey = field(repr=False, compare=False)

    @property
    def role(self) -> str:
        return _ROLE_OF_KIND[self.kind]

    @property
    def signer(self) -> str:
        return f"cert={self.name}" if self.kind == "clients" else self.name


def _check_dir(path: Path) -> None:
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SecurityError("config", f"trust directory {path} is not a directory")
    problem = trust_problem(path, st, "trust directory")
    if problem:
        raise SecurityError("insecure_file", problem)


def load_trust_store(trust_dir: Path) -> dict[str, TrustedKey]:
    """Read ``trust_dir/{clients,nodes}/*.pub``; bad or ambiguous files are skipped (logged).

    Raises :class:`SecurityError` when the directory itself is missing or writable by others.
    """
    trust_dir = Path(trust_dir)
    if not trust_dir.is_dir():
        raise SecurityError("config", f"security.trust_dir {trust_dir} is not a directory")
    _check_dir(trust_dir)
    store: dict[str, TrustedKey] = {}
    ambiguous: set[str] = set()
    for kind in TRUST_KINDS:
        directory = trust_dir / kind
        if not directory.is_dir():
            log.debug("trust store %s: no %s/ directory", trust_dir, kind)
            continue
        _check_dir(directory)
        for entry in sorted(directory.iterdir()):
            if not entry.name.endswith(".pub"):
                continue
            name = entry.name[: -len(".pub")]
            try:
                path = key_path(trust_dir, kind, name)  # grammar + confinement first
                problem = trust_problem(path, os.stat(path), "trusted key")
                if problem:
                    raise ValueError(problem)
                public_key = load_public_key(path)
            except (ValueError, OSError) as exc:
                log.error("trust store: refusing %s: %s", entry, exc)
                continue
            kid = key_id(public_key)
            if kid in store or kid in ambiguous:
                other = store.pop(kid, None)
                ambiguous.add(kid)
                log.error("trust store: key %s appears as %s and %s/%s; refusing both",
                          kid, other.path if other else "another file", kind, entry.name)
                continue
            store[kid] = TrustedKey(kid, name, kind, path, public_key)
    return store


class Ed25519Provider(SecurityProvider):
    """Ed25519 over ``b"collective/1 <purpose>\\n" + body``; identity from the trust store."""

    name = "ed25519"

    def __init__(self, config: Config, role: Role) -> None:
        super().__init__(config, role)
        key_file = config.get("security.private_key")
        trust_dir = config.get("security.trust_dir")
        if not key_file:
            raise SecurityError("config", "security.private_key is not set (the ed25519 provider needs "
                                          "this side's private key)")
        if not trust_dir:
            raise SecurityError("config", "security.trust_dir is not set (the ed25519 provider needs "
                                          "a trust directory with clients/ and nodes/)")
        self.key_file = Path(key_file)
        self.trust_dir = Path(trust_dir)
        try:
            self._private = load_private_key(self.key_file)
        except FileNotFoundError:
            raise SecurityError("config", f"security.private_key {self.key_file}: no such file") from None
        self.kid = key_id(self._private.public_key())
        if role == "client":
            name = config.get("security.identity") or self.key_file.name.removesuffix(".key")
            try:
                validate_name(name, "security.identity")
            except ValueError as exc:
                raise SecurityError("config", str(exc)) from None
            self.identity = f"cert={name}"
        else:
            self.identity = config.identity
        self._store: dict[str, TrustedKey] = {}
        self._revoked: set[str] = set()
        self.reload()

    # -- trust store -------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the trust dir. A key that disappeared no longer verifies (reason
        ``unknown_key``; the message says it was removed).

        If the trust dir is missing or writable by others the store is emptied (fail
        closed: nothing verifies) and :class:`SecurityError` is raised.
        """
        try:
            store = load_trust_store(self.trust_dir)
        except SecurityError:
            self._revoked |= set(self._store)
            self._store = {}
            raise
        except OSError as exc:
            self._revoked |= set(self._store)
            self._store = {}
            raise SecurityError("config", f"cannot read trust dir {self.trust_dir}: {exc}") from None
        removed = set(self._store) - set(store)
        self._revoked = (self._revoked | removed) - set(store)
        self._store = store  # one assignment: readers see the old or the new store
        if removed:
            log.info("trust store: %d key(s) removed: %s", len(removed), ", ".join(sorted(removed)))
        log.debug("trust store %s: %d keys", self.trust_dir, len(store))

    @property
    def trusted(self) -> dict[str, TrustedKey]:
        """A copy of the trust store, by key id."""
        return dict(self._store)

    # -- signing ----------------------------------------------------------------------
    def sign(self, body: bytes, purpose: Purpose) -> bytes:
        domain = self._check_may_sign(purpose)
        return encode_wire(ALG, self.kid, self._private.sign(domain + bytes(body)), bytes(body))

    def verify(self, wire: bytes, purpose: Purpose) -> Verified:
        domain = check_purpose(purpose)
        decoded = decode_wire(wire, self._max_bytes(purpose))
        if decoded.alg != ALG:
            raise SecurityError("wrong_alg", f"expected alg {ALG!r}, got {decoded.alg!r}")
        key = self._store.get(decoded.kid)
        if key is None:
            if decoded.kid in self._revoked:  # same reason as any unknown key, clearer message
                raise SecurityError("unknown_key", f"key {decoded.kid} was removed from the trust store "
                                                   f"{self.trust_dir} (revoked)")
            raise SecurityError("unknown_key", f"key {decoded.kid} is not in the trust store {self.trust_dir}")
        if key.kind != _KIND_FOR_PURPOSE[purpose]:
            raise SecurityError("wrong_role", f"key {key.kid} ({key.kind}/{key.name}.pub) may not sign a {purpose}")
        try:
            key.public_key.verify(decoded.sig, domain + decoded.body)
        except (InvalidSignature, ValueError):
            raise SecurityError("bad_signature", f"{purpose} signature does not verify with key "
                                                 f"{key.kid} ({key.kind}/{key.name}.pub)") from None
        return Verified(decoded.body, key.signer, key.role, key.kid)

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "role": self.role, "identity": self.identity, "kid": self.kid,
                "trusted": len(self._store)}
