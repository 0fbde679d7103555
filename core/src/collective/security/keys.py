"""Ed25519 key files: generation, loading, key ids, secret-file checks and trust paths.

Private keys are PEM PKCS#8 files created with ``os.open(..., O_CREAT|O_EXCL, 0o600)``
so they are never readable by others, not even for an instant and not even under
``umask 000`` (docs/security.md S16). Public keys are PEM SubjectPublicKeyInfo files. The
key id is the first 16 hex digits of sha256 over the 32 raw public key bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..names import IDENTITY_PATTERN, IDENTITY_RE
from .base import SecurityError

log = logging.getLogger(__name__)

#: Key names (file stems): the identity grammar, so no ``/``, no leading ``.``.
NAME_RE = IDENTITY_RE
#: Sub-directories of a trust dir: client keys sign requests, node keys sign replies.
TRUST_KINDS = ("clients", "nodes")
#: Largest key file read (a PEM Ed25519 key is about 120 bytes).
MAX_KEY_FILE = 64 * 1024


class InsecureFileError(SecurityError, ValueError):
    """A secret file (private key, PSK) is readable or writable by others."""

    def __init__(self, message: str) -> None:
        super().__init__("insecure_file", message)


def validate_name(name: str, what: str = "key name") -> str:
    """Return ``name`` if it matches the identity grammar, else raise ``ValueError``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"invalid {what} {name!r}: must match {IDENTITY_PATTERN}")
    return name


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the raw 32 public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def key_path(trust_dir: Path, kind: str, name: str) -> Path:
    """``trust_dir/kind/name.pub``, checked *before* any file system access.

    The name must match the identity grammar, and the resolved path must stay inside
    ``trust_dir`` (so a symlink cannot point elsewhere either); else ``ValueError``.
    """
    if kind not in TRUST_KINDS:
        raise ValueError(f"invalid trust kind {kind!r}: must be one of {TRUST_KINDS}")
    validate_name(name)
    base = Path(trust_dir).resolve()
    path = (base / kind / f"{name}.pub").resolve()
    if not path.is_relative_to(base / kind):
        raise ValueError(f"{path} is outside {base / kind}")
    return path


def _describe_mode(path: Path, st: os.stat_result) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if mode & 0o077:
        return (f"UNPROTECTED SECRET FILE: permissions {mode:04o} for '{path}' are too open; "
                f"it must not be accessible by group or others (chmod 600 '{path}')")
    if st.st_uid not in (os.geteuid(), 0):
        return f"secret file '{path}' is owned by uid {st.st_uid}, not by this user or root"
    return None


def trust_problem(path: str | Path, st: os.stat_result, what: str) -> str | None:
    """Why a file or directory that decides whom to trust (a trusted key, a policy
    file, their directories) must not be used, or None.

    Refused: writable by group or others, or owned by a user other than root or the
    one this process runs as; each could let another local user change who is trusted.
    """
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return (f"{what} {path} has mode {mode:04o}: it must not be writable by group or others "
                f"(chmod go-w '{path}')")
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        return (f"{what} {path} is owned by uid {st.st_uid}: it must be owned by root or by the "
                f"user collectived runs as (uid {euid})")
    return None


def check_secret_file(path: str | Path) -> None:
    """Raise :class:`InsecureFileError` if ``path`` is group/world accessible or owned by
    another non-root user (like ssh's ``UNPROTECTED PRIVATE KEY FILE``)."""
    path = Path(path)
    problem = _describe_mode(path, os.stat(path))
    if problem:
        raise InsecureFileError(problem)


def read_secret_file(path: str | Path) -> bytes:
    """Read a secret file after checking, on the open descriptor, that it is private."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        problem = _describe_mode(path, os.fstat(fd))
        if problem:
            raise InsecureFileError(problem)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"{path}: larger than {MAX_KEY_FILE} bytes, not a key file")
    return data


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load an Ed25519 private key (PEM PKCS#8); refuses files others can access."""
    path = Path(path)
    data = read_secret_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Load an Ed25519 public key (PEM SubjectPublicKeyInfo)."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"{path}: larger than {MAX_KEY_FILE} bytes, not a key file")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


def _write_new(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode`` whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keypair(name: str, directory: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``directory/NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (0644).

    Raises ``ValueError`` for a bad name and ``FileExistsError`` if either file exists
    (unless ``overwrite``). Returns ``(private_path, public_path)``.
    """
    validate_name(name)
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists() or path.is_symlink():
                raise FileExistsError(f"{path} already exists (overwrite to replace it)")
    else:
        for path in (private_path, public_path):
            path.unlink(missing_ok=True)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    log.info("generated key %s (kid %s)", private_path, key_id(key.public_key()))
    return private_path, public_path
