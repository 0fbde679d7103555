"""Security providers: real Ed25519 and HMAC, identity binding, trust store, key files.

docs/security.md rows S1 (forged caller), S4 (tampering), S5 (unknown/revoked keys, no
learning), S10 (traversal names), S13 (node keys cannot sign requests), S14 (reply
forgery) and S16 (secret file modes). No crypto is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collective.config import Config
from collective.message import (
    MAX_REGISTRATION_BYTES,
    MalformedMessage,
    RegistrationMessage,
    ReplyMessage,
    RequestMessage,
    canonical_json,
    decode_wire,
    encode_wire,
)
from collective.security import PROVIDERS, SecurityError, provider_class
from collective.security.base import DOMAINS
from collective.security.ed25519 import Ed25519Provider
from collective.security.keys import (
    InsecureFileError,
    check_secret_file,
    generate_keypair,
    key_id,
    key_path,
    load_private_key,
    load_public_key,
)
from collective.security.psk import PskProvider

REJECTED = (SecurityError, MalformedMessage)


# -- fixtures ----------------------------------------------------------------------------------
class Pki:
    """A key directory and a trust dir with clients alice, bob and nodes node-001, node-002."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = root / "keys"
        self.trust = root / "trust"
        for sub in (self.keys, self.trust / "clients", self.trust / "nodes"):
            sub.mkdir(parents=True)
        for name in ("alice", "bob"):
            self.add(name, "clients")
        for name in ("node-001", "node-002"):
            self.add(name, "nodes")
        generate_keypair("mallory", self.keys)  # never trusted

    def add(self, name: str, kind: str) -> None:
        if not (self.keys / f"{name}.key").exists():
            generate_keypair(name, self.keys)
        shutil.copy(self.keys / f"{name}.pub", self.trust / kind / f"{name}.pub")

    def config(self, kind: str, key: str, identity: str | None = None, **security) -> Config:
        sec = {"provider": "ed25519", "private_key": str(self.keys / f"{key}.key"),
               "trust_dir": str(self.trust), **security}
        data: dict = {"security": sec}
        if kind == "client":
            sec["identity"] = identity or key
            data["identity"] = "client1"
        else:
            data["identity"] = identity or key
        return Config(data, path=None, kind=kind, env={})

    def client(self, key: str = "alice", identity: str | None = None, **security) -> Ed25519Provider:
        return Ed25519Provider(self.config("client", key, identity, **security), role="client")

    def node(self, key: str = "node-001", identity: str | None = None, **security) -> Ed25519Provider:
        return Ed25519Provider(self.config("server", key, identity, **security), role="node")

    def listing(self) -> list[str]:
        return sorted(str(p.relative_to(self.trust)) for p in self.trust.rglob("*"))


@pytest.fixture
def pki(tmp_path) -> Pki:
    return Pki(tmp_path)


def request_for(caller: str, **over) -> RequestMessage:
    fields = dict(sender="client1", caller=caller, collective="mcollective", agent="canary",
                  action="run", data={"line": "hello"}, filter={"identity": ["node-001"]}, ttl=60,
                  reply_to="mcollective.reply.client1.0123", targets=None)
    fields.update(over)
    return RequestMessage.new(**fields)


def reply_for(request_body: bytes, sender: str = "node-001", **over) -> ReplyMessage:
    reply = ReplyMessage.for_request(request_body, RequestMessage.from_body(request_body), sender,
                                     0, "OK", {"ok": True})
    for key, value in over.items():
        setattr(reply, key, value)
    return reply


def rewrap(wire: bytes, body: bytes) -> bytes:
    """The same signature around another body."""
    w = decode_wire(wire)
    return encode_wire(w.alg, w.kid, w.sig, body)


# -- PSK fixtures ------------------------------------------------------------------------------
def write_psk(path: Path, value: bytes = b"correct horse battery staple\n", mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    os.chmod(path, mode)
    return path


def psk_provider(psk_file: Path, role: str, identity: str) -> PskProvider:
    sec = {"provider": "psk", "psk_file": str(psk_file)}
    if role == "client":
        sec["identity"] = identity
        return PskProvider(Config({"identity": "client1", "security": sec}, kind="client", env={}),
                           role="client")
    return PskProvider(Config({"identity": identity, "security": sec}, kind="server", env={}),
                       role="node")


@pytest.fixture
def psk_pair(tmp_path):
    psk = write_psk(tmp_path / "psk")
    return psk_provider(psk, "client", "alice"), psk_provider(psk, "node", "node-001")


@pytest.fixture(params=["ed25519", "psk"])
def pair(request, tmp_path):
    """(client provider, node provider, node identity) for each provider."""
    if request.param == "ed25519":
        pki = Pki(tmp_path)
        return pki.client("alice"), pki.node("node-001")
    psk = write_psk(tmp_path / "psk")
    return psk_provider(psk, "client", "alice"), psk_provider(psk, "node", "node-001")


# -- round trips ---------------------------------------------------------------------------------
def test_round_trip_request_and_reply(pair):
    client, node = pair
    body = request_for(client.identity).to_body()
    wire = client.sign(body, "request")
    verified, request = node.verify_request(wire)
    assert verified.body == body
    assert verified.signer == client.identity == request.caller
    assert verified.role == "client"

    reply_body = reply_for(verified.body, sender=node.identity).to_body()
    reply_wire = node.sign(reply_body, "reply")
    rverified, reply = client.verify_reply(reply_wire,
                                           expected_request_sha256=hashlib.sha256(body).hexdigest())
    assert rverified.signer == "node-001" == reply.sender
    assert rverified.role == "node"
    assert reply.data == {"ok": True}


def test_identities(pki, psk_pair):
    assert pki.client("alice").identity == "cert=alice"
    assert pki.node("node-001").identity == "node-001"
    client, node = psk_pair
    assert client.identity == "user=alice"
    assert node.identity == "node-001"


def test_ed25519_kid_is_sha256_prefix_of_raw_public_key(pki):
    client = pki.client("alice")
    public = load_public_key(pki.trust / "clients" / "alice.pub")
    assert client.kid == key_id(public)
    assert len(client.kid) == 16 and int(client.kid, 16) >= 0
    wire = client.sign(request_for("cert=alice").to_body(), "request")
    assert json.loads(wire)["kid"] == client.kid
    assert json.loads(wire)["alg"] == "ed25519"
    verified, _ = pki.node().verify_request(wire)
    assert verified.kid == client.kid


def test_a_side_signs_only_its_purpose(pair):
    client, node = pair
    with pytest.raises(SecurityError) as exc:
        client.sign(b"{}", "reply")
    assert exc.value.reason == "wrong_role"
    with pytest.raises(SecurityError) as exc:
        node.sign(b"{}", "request")
    assert exc.value.reason == "wrong_role"
    with pytest.raises(ValueError):
        client.sign(b"{}", "other")


# -- domain separation ----------------------------------------------------------------------------
def test_request_signature_never_verifies_as_reply_ed25519(pki):
    """Sign a valid reply body with the node key under the *request* domain: refused."""
    node_key = load_private_key(pki.keys / "node-001.key")
    kid = key_id(node_key.public_key())
    body = reply_for(request_for("cert=alice").to_body()).to_body()
    wrong = encode_wire("ed25519", kid, node_key.sign(DOMAINS["request"] + body), body)
    right = encode_wire("ed25519", kid, node_key.sign(DOMAINS["reply"] + body), body)
    client = pki.client()
    client.verify_reply(right)
    with pytest.raises(SecurityError) as exc:
        client.verify_reply(wrong)
    assert exc.value.reason == "bad_signature"


def test_request_signature_never_verifies_as_reply_psk(psk_pair):
    client, node = psk_pair
    wire = client.sign(request_for(client.identity).to_body(), "request")
    node.verify(wire, "request")
    with pytest.raises(SecurityError) as exc:
        node.verify(wire, "reply")
    assert exc.value.reason == "bad_signature"
    reply_wire = node.sign(reply_for(decode_wire(wire).body).to_body(), "reply")
    with pytest.raises(SecurityError) as exc:
        client.verify(reply_wire, "request")
    assert exc.value.reason == "bad_signature"


def test_ed25519_client_wire_presented_as_reply_is_wrong_role(pki):
    wire = pki.client().sign(request_for("cert=alice").to_body(), "request")
    with pytest.raises(SecurityError) as exc:
        pki.client("bob").verify(wire, "reply")
    assert exc.value.reason == "wrong_role"


# -- S1 forged caller ------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "claimed"), [("alice", "cert=bob"), ("bob", "cert=alice"),
                                              ("alice", "cert=root"), ("alice", "cert=..")])
def test_forged_caller_is_caller_mismatch(pki, key, claimed):
    wire = pki.client(key).sign(request_for(claimed).to_body(), "request")
    with pytest.raises(SecurityError) as exc:
        pki.node().verify_request(wire)
    assert exc.value.reason == "caller_mismatch"
    assert claimed in str(exc.value)


def test_psk_caller_is_self_asserted(psk_pair):
    """Documented weakness: with the PSK anybody can claim any caller."""
    client, node = psk_pair
    verified, request = node.verify_request(client.sign(request_for("user=root").to_body(), "request"))
    assert verified.signer == request.caller == "user=root"


# -- S5 unknown, revoked, no learning ------------------------------------------------------------------
def test_unknown_key(pki):
    rogue = pki.client("mallory")  # a key that is not in the trust store
    wire = rogue.sign(request_for("cert=mallory").to_body(), "request")
    with pytest.raises(SecurityError) as exc:
        pki.node().verify_request(wire)
    assert exc.value.reason == "unknown_key"


def test_node_key_cannot_sign_requests(pki):
    """S13: a compromised node (its key under nodes/) acting as a client."""
    impostor = pki.client("node-001", identity="node-001")
    wire = impostor.sign(request_for("cert=node-001").to_body(), "request")
    with pytest.raises(SecurityError) as exc:
        pki.node("node-002").verify_request(wire)
    assert exc.value.reason == "wrong_role"


def test_client_key_cannot_sign_replies(pki):
    request_body = request_for("cert=alice").to_body()
    impostor = pki.node("alice", identity="alice")  # a node configured with a client key
    wire = impostor.sign(reply_for(request_body, sender="alice").to_body(), "reply")
    with pytest.raises(SecurityError) as exc:
        pki.client("bob").verify_reply(wire)
    assert exc.value.reason == "wrong_role"


def test_revoked_key_after_reload(pki):
    client, node = pki.client(), pki.node()
    wire = client.sign(request_for("cert=alice").to_body(), "request")
    node.verify_request(wire)
    (pki.trust / "clients" / "alice.pub").unlink()
    node.verify_request(wire)  # cached until reload
    node.reload()
    with pytest.raises(SecurityError) as exc:
        node.verify_request(wire)
    assert exc.value.reason == "unknown_key"
    assert "removed" in str(exc.value)
    fresh = Ed25519Provider(pki.config("server", "node-001"), role="node")
    with pytest.raises(SecurityError) as exc:
        fresh.verify_request(wire)
    assert exc.value.reason == "unknown_key"
    # bob is unaffected; alice comes back when her key is restored
    node.verify_request(pki.client("bob").sign(request_for("cert=bob").to_body(), "request"))
    pki.add("alice", "clients")
    node.reload()
    node.verify_request(wire)


def test_reload_fails_closed_when_trust_dir_goes_missing(pki):
    node = pki.node()
    wire = pki.client().sign(request_for("cert=alice").to_body(), "request")
    shutil.rmtree(pki.trust)
    with pytest.raises(SecurityError):
        node.reload()
    with pytest.raises(SecurityError) as exc:
        node.verify_request(wire)
    assert exc.value.reason == "unknown_key"


def test_a_message_never_adds_a_key(pki):
    before = pki.listing()
    node = pki.node()
    mallory_pub = (pki.keys / "mallory.pub").read_text()
    # an unknown key offering its public key in the body
    body = canonical_json({**request_for("cert=mallory").to_dict(), "public_key": mallory_pub})
    rogue_wire = pki.client("mallory").sign(body, "request")
    # ... and in the wire wrapper
    doc = json.loads(rogue_wire)
    doc["pubkey"] = mallory_pub
    wrapped = json.dumps(doc).encode()
    for wire in (rogue_wire, wrapped):
        with pytest.raises(REJECTED):
            node.verify_request(wire)
    node.reload()
    with pytest.raises(SecurityError) as exc:
        node.verify_request(rogue_wire)
    assert exc.value.reason == "unknown_key"
    # a trusted signer carrying a key field is a schema error, and still learns nothing
    alice_body = canonical_json({**request_for("cert=alice").to_dict(), "public_key": mallory_pub})
    with pytest.raises(MalformedMessage) as mexc:
        node.verify_request(pki.client().sign(alice_body, "request"))
    assert mexc.value.reason == "schema"
    assert pki.listing() == before
    assert len(node.trusted) == 4


# -- S14 reply forgery --------------------------------------------------------------------------------
def test_reply_sender_mismatch(pki):
    request_body = request_for("cert=alice").to_body()
    forger = pki.node("node-002")
    wire = forger.sign(reply_for(request_body, sender="node-001").to_body(), "reply")
    with pytest.raises(SecurityError) as exc:
        pki.client().verify_reply(wire)
    assert exc.value.reason == "sender_mismatch"


def test_reply_bound_to_another_request(pki):
    node, client = pki.node(), pki.client()
    old_body = request_for("cert=alice").to_body()
    new_body = request_for("cert=alice").to_body()
    wire = node.sign(reply_for(old_body).to_body(), "reply")
    client.verify_reply(wire, hashlib.sha256(old_body).hexdigest())
    with pytest.raises(SecurityError) as exc:
        client.verify_reply(wire, hashlib.sha256(new_body).hexdigest())
    assert exc.value.reason == "request_mismatch"


def test_psk_reply_sender_is_claimed(psk_pair):
    client, node = psk_pair
    wire = node.sign(reply_for(request_for(client.identity).to_body(), sender="node-009").to_body(), "reply")
    verified, reply = client.verify_reply(wire)
    assert verified.signer == reply.sender == "node-009"


# -- S4 tampering ----------------------------------------------------------------------------------
REQUEST_TAMPERING = [
    ("id", "f" * 32), ("sender", "client2"), ("collective", "other"), ("agent", "shell"),
    ("action", "runall"), ("data", {"line": "hellO"}), ("data", {}), ("filter", {}),
    ("time", 0), ("ttl", 600), ("reply_to", "mcollective.reply.evil.0123"),
    ("targets", ["node-002"]), ("caller", "cert=bob"),
]


@pytest.mark.parametrize(("field", "value"), REQUEST_TAMPERING)
def test_tampered_request_field_rejected(pair, field, value):
    client, node = pair
    body = request_for(client.identity).to_body()
    wire = client.sign(body, "request")
    doc = json.loads(body)
    doc[field] = value
    tampered = rewrap(wire, canonical_json(doc))
    with pytest.raises(SecurityError) as exc:
        node.verify_request(tampered)
    assert exc.value.reason == "bad_signature"


REPLY_TAMPERING = [
    ("request_id", "e" * 32), ("request_sha256", "0" * 64), ("sender", "node-002"),
    ("agent", "other"), ("action", "other"), ("statuscode", 1), ("statusmsg", "ok"),
    ("data", {"ok": False}), ("time", 0),
]


@pytest.mark.parametrize(("field", "value"), REPLY_TAMPERING)
def test_tampered_reply_field_rejected(pair, field, value):
    client, node = pair
    wire = node.sign(reply_for(request_for(client.identity).to_body()).to_body(), "reply")
    doc = json.loads(decode_wire(wire).body)
    doc[field] = value
    with pytest.raises(SecurityError) as exc:
        client.verify_reply(rewrap(wire, canonical_json(doc)))
    assert exc.value.reason == "bad_signature"


def test_wire_fields_swapped(pki):
    client, node = pki.client(), pki.node()
    wire = client.sign(request_for("cert=alice").to_body(), "request")
    w = decode_wire(wire)
    bob = pki.client("bob")
    for bad in (encode_wire("hmac-sha256", w.kid, w.sig, w.body),
                encode_wire(w.alg, bob.kid, w.sig, w.body),
                encode_wire(w.alg, w.kid, w.sig[:-1], w.body),
                encode_wire(w.alg, w.kid, w.sig + b"\0", w.body),
                encode_wire(w.alg, w.kid, b"", w.body)):
        with pytest.raises(SecurityError):
            node.verify_request(bad)


@pytest.fixture(scope="module")
def signed_ed25519(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki"))
    client, node = pki.client(), pki.node()
    return client.sign(request_for("cert=alice").to_body(), "request"), node


@pytest.fixture(scope="module")
def signed_psk(tmp_path_factory):
    psk = write_psk(tmp_path_factory.mktemp("psk") / "psk")
    client, node = psk_provider(psk, "client", "alice"), psk_provider(psk, "node", "node-001")
    return client.sign(request_for(client.identity).to_body(), "request"), node


def _flip(data: bytes, index: int, xor: int) -> bytes:
    out = bytearray(data)
    out[index % len(out)] ^= xor
    return bytes(out)


@pytest.mark.parametrize("which", ["signed_ed25519", "signed_psk"])
@given(index=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_single_byte_change_of_the_wire_is_rejected(request, which, index, xor):
    wire, node = request.getfixturevalue(which)
    node.verify_request(wire)  # the original verifies
    with pytest.raises(REJECTED):
        node.verify_request(_flip(wire, index, xor))


@pytest.mark.parametrize("which", ["signed_ed25519", "signed_psk"])
@given(index=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_single_byte_change_of_the_body_is_rejected(request, which, index, xor):
    wire, node = request.getfixturevalue(which)
    body = decode_wire(wire).body
    with pytest.raises(SecurityError) as exc:
        node.verify_request(rewrap(wire, _flip(body, index, xor)))
    assert exc.value.reason == "bad_signature"


def test_oversized_request_refused_before_parsing(pki):
    node = pki.node(max_request_bytes=2048)
    body = request_for("cert=alice", data={"blob": "x" * 4096}).to_body()
    with pytest.raises(MalformedMessage) as exc:
        node.verify_request(pki.client().sign(body, "request"))
    assert exc.value.reason == "oversize"


# -- S10 names and paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "..", ".", ".hidden", "a/b", "a\\b", "", "x" * 65,
                                  "%2e%2e", "..%2f..", "a\0b", "-x", "név", "a b"])
def test_bad_key_names_rejected(tmp_path, name):
    with pytest.raises(ValueError):
        generate_keypair(name, tmp_path)
    with pytest.raises(ValueError):
        key_path(tmp_path, "clients", name)
    assert list(tmp_path.iterdir()) == []


def test_key_path_kind_must_be_known(tmp_path):
    with pytest.raises(ValueError):
        key_path(tmp_path, "../clients", "alice")


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_name_resolves_outside_trust_dir(tmp_path, name):
    base = (tmp_path / "trust").resolve()
    try:
        path = key_path(base, "clients", name)
    except ValueError:
        return
    assert path.is_relative_to(base / "clients")
    assert path.parent == base / "clients"


def test_trust_store_skips_bad_names_and_escaping_symlinks(pki, tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    generate_keypair("eve", outside)
    (pki.trust / "clients" / "eve.pub").symlink_to(outside / "eve.pub")
    shutil.copy(outside / "eve.pub", pki.trust / "clients" / "-eve.pub")
    shutil.copy(outside / "eve.pub", pki.trust / "clients" / "..pub")
    node = pki.node()
    assert {k.name for k in node.trusted.values()} == {"alice", "bob", "node-001", "node-002"}
    eve = Ed25519Provider(Config({"identity": "c", "security": {
        "private_key": str(outside / "eve.key"), "trust_dir": str(pki.trust), "identity": "eve"}},
        kind="client", env={}), role="client")
    with pytest.raises(SecurityError) as exc:
        node.verify_request(eve.sign(request_for("cert=eve").to_body(), "request"))
    assert exc.value.reason == "unknown_key"


def test_same_key_under_two_names_is_refused(pki):
    shutil.copy(pki.keys / "alice.pub", pki.trust / "nodes" / "alice.pub")
    node = pki.node()
    wire = pki.client().sign(request_for("cert=alice").to_body(), "request")
    with pytest.raises(SecurityError) as exc:
        node.verify_request(wire)
    assert exc.value.reason == "unknown_key"


def test_verification_never_touches_the_file_system(pki, monkeypatch):
    node = pki.node()
    wires = [pki.client().sign(request_for("cert=..").to_body(), "request"),
             pki.client("mallory").sign(request_for("cert=mallory").to_body(), "request"),
             pki.client().sign(request_for("cert=alice").to_body(), "request")]

    def forbidden(*args, **kwargs):
        raise AssertionError(f"file system access during verification: {args!r}")

    import builtins

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os, "open", forbidden)
    monkeypatch.setattr(os, "stat", forbidden)
    monkeypatch.setattr(Path, "resolve", forbidden)
    with pytest.raises(SecurityError):
        node.verify_request(wires[0])
    with pytest.raises(SecurityError):
        node.verify_request(wires[1])
    node.verify_request(wires[2])


# -- S16 key and secret files ----------------------------------------------------------------------
def test_generated_key_modes_even_with_umask_0(tmp_path):
    old = os.umask(0)
    try:
        private, public = generate_keypair("alice", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert key_id(load_private_key(private).public_key()) == key_id(load_public_key(public))


def test_generated_public_key_mode_with_strict_umask(tmp_path):
    old = os.umask(0o077)
    try:
        private, public = generate_keypair("alice", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644


def test_generate_refuses_to_overwrite(tmp_path):
    private, _ = generate_keypair("alice", tmp_path)
    first = private.read_bytes()
    with pytest.raises(FileExistsError, match="alice.key"):
        generate_keypair("alice", tmp_path)
    assert private.read_bytes() == first
    generate_keypair("alice", tmp_path, overwrite=True)
    assert private.read_bytes() != first
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600


def test_generate_does_not_follow_a_planted_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / "alice.key").symlink_to(target)
    with pytest.raises(FileExistsError):
        generate_keypair("alice", tmp_path)
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o666, 0o620])
def test_open_private_key_is_refused(pki, mode):
    key = pki.keys / "alice.key"
    os.chmod(key, mode)
    with pytest.raises(InsecureFileError) as exc:
        load_private_key(key)
    assert str(key) in str(exc.value) and f"{mode:04o}" in str(exc.value)
    assert isinstance(exc.value, ValueError) and exc.value.reason == "insecure_file"
    with pytest.raises(SecurityError, match=f"{mode:04o}"):
        pki.client("alice")
    with pytest.raises(InsecureFileError):
        check_secret_file(key)


def test_private_key_0400_is_fine(pki):
    os.chmod(pki.keys / "alice.key", 0o400)
    check_secret_file(pki.keys / "alice.key")
    assert pki.client("alice").identity == "cert=alice"


def test_open_psk_file_is_refused(tmp_path):
    psk = write_psk(tmp_path / "psk", mode=0o644)
    with pytest.raises(InsecureFileError) as exc:
        psk_provider(psk, "node", "node-001")
    assert str(psk) in str(exc.value) and "0644" in str(exc.value)


def test_short_or_missing_psk_refused(tmp_path):
    with pytest.raises(SecurityError, match="shorter"):
        psk_provider(write_psk(tmp_path / "psk", b"short\n"), "node", "n1")
    with pytest.raises(SecurityError, match="no such file"):
        psk_provider(tmp_path / "missing", "node", "n1")


def test_wrong_psk_is_bad_signature(tmp_path):
    client = psk_provider(write_psk(tmp_path / "a", b"a" * 32), "client", "alice")
    node = psk_provider(write_psk(tmp_path / "b", b"b" * 32), "node", "node-001")
    with pytest.raises(SecurityError) as exc:
        node.verify_request(client.sign(request_for(client.identity).to_body(), "request"))
    assert exc.value.reason == "bad_signature"


def test_algorithm_confusion(pki, tmp_path):
    psk_client = psk_provider(write_psk(tmp_path / "psk"), "client", "alice")
    wire = psk_client.sign(request_for("user=alice").to_body(), "request")
    with pytest.raises(SecurityError) as exc:
        pki.node().verify_request(wire)
    assert exc.value.reason == "wrong_alg"
    psk_node = psk_provider(tmp_path / "psk", "node", "node-001")
    with pytest.raises(SecurityError) as exc:
        psk_node.verify_request(pki.client().sign(request_for("cert=alice").to_body(), "request"))
    assert exc.value.reason == "wrong_alg"
    w = decode_wire(wire)
    with pytest.raises(SecurityError) as exc:
        psk_node.verify_request(encode_wire(w.alg, "other", w.sig, w.body))
    assert exc.value.reason == "unknown_key"


def test_insecure_trust_dir_refused(pki):
    os.chmod(pki.trust / "clients", 0o777)
    with pytest.raises(SecurityError) as exc:
        pki.node()
    assert exc.value.reason == "insecure_file" and "0777" in str(exc.value)


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_a_public_key_others_may_write_is_refused_by_name(pki, mode, caplog):
    path = pki.trust / "clients" / "alice.pub"
    os.chmod(path, mode)
    node = pki.node()
    assert "alice" not in {k.name for k in node.trusted.values()}
    assert f"trusted key {path} has mode {mode:04o}" in caplog.text


def test_a_public_key_or_trust_dir_owned_by_another_user_is_refused(pki, caplog):
    if os.geteuid() != 0:
        pytest.fail("changing a file's owner needs root (the tests run as root in CI)")
    key = pki.trust / "clients" / "alice.pub"
    os.chown(key, 65534, 65534)
    node = pki.node()
    assert "alice" not in {k.name for k in node.trusted.values()}
    assert f"trusted key {key} is owned by uid 65534" in caplog.text
    os.chown(key, 0, 0)
    os.chown(pki.trust / "clients", 65534, 65534)
    with pytest.raises(SecurityError) as exc:
        pki.node()
    assert exc.value.reason == "insecure_file" and "is owned by uid 65534" in str(exc.value)


def test_missing_configuration(pki, tmp_path):
    with pytest.raises(SecurityError, match="security.private_key"):
        Ed25519Provider(Config({"identity": "n1", "security": {"trust_dir": str(pki.trust)}},
                               kind="server", env={}), role="node")
    with pytest.raises(SecurityError, match="security.trust_dir"):
        Ed25519Provider(Config({"identity": "n1", "security": {
            "private_key": str(pki.keys / "node-001.key")}}, kind="server", env={}), role="node")
    with pytest.raises(SecurityError, match="no such file"):
        Ed25519Provider(Config({"identity": "n1", "security": {
            "private_key": str(tmp_path / "nope.key"), "trust_dir": str(pki.trust)}},
            kind="server", env={}), role="node")
    with pytest.raises(SecurityError, match="security.identity"):
        pki.client("alice", identity="../alice")
    with pytest.raises(ValueError):
        Ed25519Provider(pki.config("server", "node-001"), role="admin")


def test_client_identity_defaults_to_key_name(pki):
    config = Config({"identity": "c", "security": {"private_key": str(pki.keys / "bob.key"),
                                                   "trust_dir": str(pki.trust)}}, kind="client", env={})
    assert Ed25519Provider(config, role="client").identity == "cert=bob"


def test_providers_resolve_lazily():
    assert set(PROVIDERS) == {"ed25519", "psk"}
    assert provider_class("ed25519") is Ed25519Provider
    assert provider_class("psk") is PskProvider
    with pytest.raises(ValueError, match="unknown security provider"):
        provider_class("md5")
    import collective.security as security

    assert security.Ed25519Provider is Ed25519Provider
    assert security.generate_keypair is generate_keypair
    with pytest.raises(AttributeError):
        security.nothing_here  # noqa: B018


# -- registrations ----------------------------------------------------------------------------------
def registration_for(identity: str = "node-001", **over) -> RegistrationMessage:
    fields = dict(identity=identity, collective="mcollective", collectives=["mcollective"],
                  facts={"role": "web"}, classes=["base"], agents=[{"name": "rpcutil", "version": "1.0"}],
                  interval=60)
    fields.update(over)
    return RegistrationMessage.new(**fields)


def test_registration_round_trip(pair):
    client, node = pair
    wire = node.sign(registration_for().to_body(), "registration")
    verified, registration = client.verify_registration(wire)
    assert verified.signer == "node-001" and verified.role == "node"
    assert registration.identity == "node-001"
    assert registration.facts == {"role": "web"}
    # any side can verify a registration (another node, or the collector)
    node.verify_registration(wire)


def test_only_nodes_sign_registrations(pair):
    client, _node = pair
    with pytest.raises(SecurityError) as exc:
        client.sign(registration_for().to_body(), "registration")
    assert exc.value.reason == "wrong_role"


def test_client_key_registration_is_wrong_role(pki):
    """A client key signing a registration with the right domain is still refused."""
    alice = load_private_key(pki.keys / "alice.key")
    body = registration_for().to_body()
    wire = encode_wire("ed25519", key_id(alice.public_key()),
                       alice.sign(DOMAINS["registration"] + body), body)
    with pytest.raises(SecurityError) as exc:
        pki.client("bob").verify_registration(wire)
    assert exc.value.reason == "wrong_role"


def test_unknown_node_key_registration_is_refused(pki):
    pki.add("node-009", "nodes")
    wire = pki.node("node-009").sign(registration_for("node-009").to_body(), "registration")
    (pki.trust / "nodes" / "node-009.pub").unlink()
    client = pki.client()
    with pytest.raises(SecurityError) as exc:
        client.verify_registration(wire)
    assert exc.value.reason == "unknown_key"


def test_registration_signer_must_be_its_identity(pki):
    """node-001 cannot register as node-002."""
    wire = pki.node("node-001").sign(registration_for("node-002").to_body(), "registration")
    with pytest.raises(SecurityError) as exc:
        pki.client().verify_registration(wire)
    assert exc.value.reason == "identity_mismatch"


def test_psk_registration_identity_is_self_asserted(psk_pair):
    client, node = psk_pair
    wire = node.sign(registration_for("node-777").to_body(), "registration")
    verified, registration = client.verify_registration(wire)
    assert verified.signer == registration.identity == "node-777"


def test_registration_purpose_separation_ed25519(pki):
    """Registration signatures never verify as requests or replies, nor the reverse."""
    node_key = load_private_key(pki.keys / "node-001.key")
    kid = key_id(node_key.public_key())
    body = registration_for().to_body()
    client, node = pki.client(), pki.node("node-002")
    for purpose in ("request", "reply"):
        wrong = encode_wire("ed25519", kid, node_key.sign(DOMAINS[purpose] + body), body)
        with pytest.raises(REJECTED):
            client.verify_registration(wrong)
    registration_wire = pki.node().sign(body, "registration")
    client.verify_registration(registration_wire)
    with pytest.raises(SecurityError) as exc:
        client.verify(registration_wire, "reply")
    assert exc.value.reason == "bad_signature"
    with pytest.raises(REJECTED):
        node.verify_request(registration_wire)
    # and a genuine reply signature does not pass as a registration
    reply_body = reply_for(request_for("cert=alice").to_body()).to_body()
    reply_wire = pki.node().sign(reply_body, "reply")
    with pytest.raises(SecurityError) as exc:
        client.verify(reply_wire, "registration")
    assert exc.value.reason == "bad_signature"


def test_registration_purpose_separation_psk(psk_pair):
    client, node = psk_pair
    wire = node.sign(registration_for().to_body(), "registration")
    for purpose in ("request", "reply"):
        with pytest.raises(SecurityError) as exc:
            client.verify(wire, purpose)
        assert exc.value.reason == "bad_signature"
    request_wire = client.sign(request_for(client.identity).to_body(), "request")
    with pytest.raises(SecurityError) as exc:
        node.verify(request_wire, "registration")
    assert exc.value.reason == "bad_signature"


def test_domains_are_distinct_and_not_prefixes_of_each_other():
    values = list(DOMAINS.values())
    assert DOMAINS["registration"] == b"collective/1 registration\n"
    for a in values:
        for b in values:
            assert a == b or not b.startswith(a)


def test_oversized_registration_refused_before_parsing(pki, monkeypatch):
    import collective.message as message_module
    from collective.message import MAX_REGISTRATION_WIRE_BYTES

    node_key = load_private_key(pki.keys / "node-001.key")
    kid = key_id(node_key.public_key())

    def signed(body: bytes) -> bytes:
        return encode_wire("ed25519", kid, node_key.sign(DOMAINS["registration"] + body), body)

    body = registration_for(facts={"blob": "x" * (MAX_REGISTRATION_BYTES - 500)}).to_body()
    pki.client().verify_registration(pki.node().sign(body, "registration"))  # under the cap
    # a signed body just over the cap (its wire is still under the wire cap): refused
    over = body.replace(b'"blob":"', b'"blob":"' + b"y" * (MAX_REGISTRATION_BYTES - len(body) + 10))
    assert len(over) == MAX_REGISTRATION_BYTES + 10
    assert len(signed(over)) <= MAX_REGISTRATION_WIRE_BYTES
    with pytest.raises(MalformedMessage) as exc:
        pki.client().verify_registration(signed(over))
    assert exc.value.reason == "oversize"
    # a wire over the wire cap is refused on its size alone, before anything is parsed
    huge = signed(over + b" " * 4096)
    assert len(huge) > MAX_REGISTRATION_WIRE_BYTES
    calls = []
    monkeypatch.setattr(message_module, "strict_loads", lambda *a, **k: calls.append(1))
    with pytest.raises(MalformedMessage) as exc:
        pki.client().verify_registration(huge)
    assert exc.value.reason == "oversize"
    assert calls == []
