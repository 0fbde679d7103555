"""Users and per-destination permissions of the embedded broker.

A :class:`User` has a login, a password (stored as an scrypt hash, see
:func:`hash_password`) and :class:`Permissions`: glob patterns over the STOMP
destination for what the user may *read* (SUBSCRIBE) and *write* (SEND).

Patterns: ``*`` matches one dot-free name segment, ``**`` anything (dots included),
``{user}`` the user's own login (literally); everything else is literal. The built-in
roles (:data:`ROLES`) follow the destination layout of
:mod:`collective.connectors.destinations` (flavour ``embedded``) and assume collective
names without dots (write explicit patterns with ``**`` for those):

=========  ==========================================  ==========================================
role       read (SUBSCRIBE)                            write (SEND)
=========  ==========================================  ==========================================
node       ``/topic/*.broadcast.*``,                   ``/queue/*.reply.**``,
           ``/queue/*.node.{user}``                    ``/topic/*.registration``
client     ``/queue/*.reply.{user}.*``,                ``/topic/*.broadcast.*``,
           ``/topic/*.registration``                   ``/queue/*.node.**``
admin      ``**``                                      ``**``
=========  ==========================================  ==========================================

So a node reads only its own directed queue and the broadcast topics and writes replies
and registrations; a client writes requests and reads only its own reply queues
(``COLLECTIVE.reply.LOGIN.TAG``: a client's login is its key name, the name the daemon
binds ``reply_to`` to). Nothing here is evaluated per message beyond one regex match
per new destination of a connection (see ``_Connection`` in :mod:`.server`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

__all__ = [
    "LOGIN_RE",
    "ROLES",
    "BrokerAuth",
    "Permissions",
    "User",
    "compile_pattern",
    "hash_password",
    "verify_password",
]

#: Logins: the identity / key-name grammar (dots and ``@`` allowed), at most 128 characters.
LOGIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}\Z")

#: scrypt cost: 16 MiB of memory and about 50 ms per check on the machine this was
#: written on. Checks run off the event loop and a successful login is cached, so only
#: the first login of a user (and every wrong guess) pays it.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_HASH_RE = re.compile(r"^scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9+/=]{8,128})\$"
                      r"([A-Za-z0-9+/=]{16,256})\Z")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$N$r$p$SALT$HASH`` (base64) for the broker config's ``password_hash``."""
    if not password:
        raise ValueError("empty password")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=32,
                            maxmem=_SCRYPT_MAXMEM)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def check_hash(text: str) -> None:
    """Raise ValueError unless ``text`` is a usable ``hash_password`` string."""
    match = _HASH_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not a password hash: expected scrypt$N$r$p$SALT$HASH "
                         "(make one with 'mco broker --hash-password')")
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or 128 * n * r * p > _SCRYPT_MAXMEM:
        raise ValueError(f"unusable scrypt parameters N={n} r={r} p={p}")


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    match = _HASH_RE.fullmatch(stored)
    if match is None:
        return False
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    try:
        salt = base64.b64decode(match.group(4), validate=True)
        expected = base64.b64decode(match.group(5), validate=True)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                                dklen=len(expected), maxmem=_SCRYPT_MAXMEM)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


# -- patterns ------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\*\*|\*|\{user\}|[^*{]+|\{")


def compile_pattern(pattern: str, user: str) -> re.Pattern[str]:
    """The regex of one permission pattern for ``user`` (see the module docstring)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"invalid destination pattern {pattern!r}")
    parts = []
    for token in _TOKEN_RE.findall(pattern):
        if token == "**":
            parts.append(".+")
        elif token == "*":
            parts.append("[^./]+")
        elif token == "{user}":
            parts.append(re.escape(user))
        elif token == "{":
            raise ValueError(f"destination pattern {pattern!r}: the only placeholder is {{user}}")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts) + r"\Z")


def check_pattern(pattern: str) -> None:
    """Raise ValueError for a pattern that cannot be compiled."""
    compile_pattern(pattern, "x")


@dataclass(frozen=True)
class Permissions:
    """Destination patterns a user may read (SUBSCRIBE) and write (SEND)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


#: The built-in roles (see the module docstring).
ROLES: dict[str, Permissions] = {
    "node": Permissions(read=("/topic/*.broadcast.*", "/queue/*.node.{user}"),
                        write=("/queue/*.reply.**", "/topic/*.registration")),
    "client": Permissions(read=("/queue/*.reply.{user}.*", "/topic/*.registration"),
                          write=("/topic/*.broadcast.*", "/queue/*.node.**")),
    "admin": Permissions(read=("**",), write=("**",)),
}


@dataclass
class User:
    """One broker user. ``password_hash`` is a :func:`hash_password` string; ``password``
    (plain text) exists only for in-process brokers built from ``users={login: password}``."""

    login: str
    permissions: Permissions
    password_hash: str | None = None
    password: str | None = field(default=None, repr=False)
    #: ``login`` of the role it came from, for logs
    role: str | None = None

    def __post_init__(self) -> None:
        if not LOGIN_RE.fullmatch(self.login):
            raise ValueError(f"invalid broker login {self.login!r} (must match {LOGIN_RE.pattern})")
        if (self.password_hash is None) == (self.password is None):
            raise ValueError(f"user {self.login!r}: give exactly one of password_hash, password")
        if self.password_hash is not None:
            check_hash(self.password_hash)
        self._read = [compile_pattern(p, self.login) for p in self.permissions.read]
        self._write = [compile_pattern(p, self.login) for p in self.permissions.write]

    def check_password(self, passcode: str) -> bool:
        """Slow (scrypt) for a hashed password: call off the event loop."""
        if self.password is not None:
            return hmac.compare_digest(self.password.encode("utf-8"), passcode.encode("utf-8"))
        assert self.password_hash is not None
        return verify_password(passcode, self.password_hash)

    def may_read(self, destination: str) -> bool:
        return any(rx.match(destination) for rx in self._read)

    def may_write(self, destination: str) -> bool:
        return any(rx.match(destination) for rx in self._write)


class BrokerAuth:
    """The users of one broker, and a cache of logins already verified.

    The cache keeps, per login, a keyed digest of the last passcode that verified, so a
    reconnecting node does not pay scrypt again; a different passcode is checked in full.
    """

    def __init__(self, users: Iterable[User]) -> None:
        self.users: dict[str, User] = {}
        for user in users:
            if user.login in self.users:
                raise ValueError(f"duplicate broker user {user.login!r}")
            self.users[user.login] = user
        self._pepper = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        # a fixed hash to burn the same time for unknown logins (no user enumeration)
        self._dummy = hash_password(secrets.token_urlsafe(12))

    @classmethod
    def plain(cls, users: Mapping[str, str], role: str = "admin") -> BrokerAuth:
        """In-process users from ``{login: password}``, each with ``role``."""
        return cls(User(login, ROLES[role], password=password, role=role)
                   for login, password in users.items())

    def _digest(self, login: str, passcode: str) -> bytes:
        return hmac.new(self._pepper, f"{login}\0{passcode}".encode(), hashlib.sha256).digest()

    def cached(self, login: str, passcode: str) -> User | None:
        """The user when this exact login/passcode verified before (cheap; event loop)."""
        user = self.users.get(login)
        if user is None:
            return None
        if user.password is not None:  # plain text: the full check is cheap anyway
            return user if user.check_password(passcode) else None
        known = self._verified.get(login)
        if known is not None and hmac.compare_digest(known, self._digest(login, passcode)):
            return user
        return None

    def authenticate(self, login: str, passcode: str) -> User | None:
        """Full check (scrypt); thread-safe, run it off the event loop."""
        user = self.users.get(login)
        if user is None:
            verify_password(passcode, self._dummy)
            return None
        if not user.check_password(passcode):
            return None
        self._verified[login] = self._digest(login, passcode)
        return user
