"""The ``mco broker --config FILE`` file: listeners, users, roles and limits.

A YAML mapping, validated with a JSON Schema; a bad file gives one error that names the
file and the key (``broker.yaml: users.node-001.role: 'nod' is not one of ...``).
Relative paths are relative to the file's directory. Example::

    listeners:
      - {host: 127.0.0.1, port: 61613}
      - host: 0.0.0.0
        port: 61614
        tls: {cert_file: broker.pem, key_file: broker.key, ca_file: ca.pem,
              require_client_cert: true}
    users:
      node-001: {password_hash: "scrypt$16384$8$1$...", role: node}
      admin:    {password_hash: "scrypt$16384$8$1$...", role: client}
      backup:   {password_hash: "...", read: ["/topic/*.registration"], write: []}
    roles:                       # more roles, or the built-in ones redefined
      collector: {read: ["/topic/*.registration"], write: []}
    limits: {max_queues: 10000, max_stored_bytes: 67108864, max_connections: 4096}
    pidfile: /run/collective-broker.pid

A user has a ``role`` (``node``, ``client``, ``admin`` or one of ``roles``) and/or
explicit ``read`` / ``write`` patterns (added to the role's); see
:mod:`collective.broker.auth` for the pattern syntax. ``password_hash`` comes from
``mco broker --hash-password``; plain-text passwords are not accepted in the file.
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .auth import ROLES, BrokerAuth, Permissions, User, check_hash, check_pattern
from .server import BrokerLimits, Listener

__all__ = ["BrokerConfig", "BrokerConfigError", "load_broker_config", "parse_broker_config"]


class BrokerConfigError(ValueError):
    """The broker config file is unusable; the message names the file and the key."""


_patterns = {"type": "array", "items": {"type": "string", "minLength": 1}}


def _limits_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for f in dataclasses.fields(BrokerLimits):
        kind = "integer" if f.type in (int, "int") else "number"
        props[f.name] = {"type": kind, "minimum": 0}
    return {"type": "object", "properties": props, "additionalProperties": False}


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["users"],
    "properties": {
        "listeners": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {
                    "host": {"type": "string", "minLength": 1},
                    "port": {"type": "integer", "minimum": 0, "maximum": 65535},
                    "tls": {
                        "type": "object", "additionalProperties": False,
                        "required": ["cert_file", "key_file"],
                        "properties": {
                            "cert_file": {"type": "string"},
                            "key_file": {"type": "string"},
                            "ca_file": {"type": "string"},
                            "require_client_cert": {"type": "boolean"},
                        },
                    },
                },
            },
        },
        "users": {
            "type": "object", "minProperties": 1,
            "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["password_hash"],
                "properties": {
                    "password_hash": {"type": "string"},
                    "role": {"type": "string"},
                    "read": _patterns,
                    "write": _patterns,
                },
            },
        },
        "roles": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "additionalProperties": False,
                "properties": {"read": _patterns, "write": _patterns},
            },
        },
        "limits": _limits_schema(),
        "pidfile": {"type": "string"},
    },
}


@dataclass
class BrokerConfig:
    """What ``mco broker`` serves."""

    listeners: list[Listener]
    auth: BrokerAuth
    limits: BrokerLimits
    pidfile: Path | None = None
    path: Path | None = None
    #: the raw, validated mapping
    data: dict[str, Any] = field(default_factory=dict, repr=False)


def load_broker_config(path: str | Path) -> BrokerConfig:
    """Read and check ``path``; raise :class:`BrokerConfigError` naming file and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BrokerConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BrokerConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_broker_config(data, source=str(path), base=path.resolve().parent)


def parse_broker_config(data: Any, source: str = "<broker config>",
                        base: Path | None = None) -> BrokerConfig:
    """Check an already-parsed mapping (``base`` resolves relative paths)."""
    base = base or Path.cwd()
    if not isinstance(data, dict):
        raise BrokerConfigError(f"{source}: (top level): expected a mapping with users:, "
                                "listeners:, limits:")
    _validate(data, source)

    def fail(key: str, message: str) -> BrokerConfigError:
        return BrokerConfigError(f"{source}: {key}: {message}")

    roles: dict[str, Permissions] = dict(ROLES)
    for name, spec in (data.get("roles") or {}).items():
        for i, pattern in enumerate([*spec.get("read", ()), *spec.get("write", ())]):
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise fail(f"roles.{name}", f"pattern {i + 1}: {exc}") from None
        roles[name] = Permissions(tuple(spec.get("read", ())), tuple(spec.get("write", ())))

    users = []
    for login, spec in data["users"].items():
        key = f"users.{login}"
        role = spec.get("role")
        if role is None and "read" not in spec and "write" not in spec:
            raise fail(key, "give a role (node, client, admin or one of roles:) or read/write "
                            "patterns")
        if role is not None and role not in roles:
            raise fail(f"{key}.role", f"{role!r} is not one of {', '.join(sorted(roles))}")
        base_perms = roles[role] if role is not None else Permissions()
        perms = Permissions(base_perms.read + tuple(spec.get("read", ())),
                            base_perms.write + tuple(spec.get("write", ())))
        try:
            check_hash(spec["password_hash"])
        except ValueError as exc:
            raise fail(f"{key}.password_hash", str(exc)) from None
        try:
            users.append(User(login, perms, password_hash=spec["password_hash"], role=role))
        except ValueError as exc:
            raise fail(key, str(exc)) from None

    listeners = []
    for i, spec in enumerate(data.get("listeners") or [{"host": "127.0.0.1", "port": 61613}]):
        key = f"listeners.{i}"
        context = _tls_context(spec["tls"], base, f"{key}.tls", fail) if spec.get("tls") else None
        listeners.append(Listener(spec.get("host", "127.0.0.1"), int(spec["port"]), context))

    limits = BrokerLimits(**(data.get("limits") or {}))
    pidfile = data.get("pidfile")
    return BrokerConfig(listeners=listeners, auth=BrokerAuth(users), limits=limits,
                        pidfile=(base / pidfile) if pidfile else None, path=Path(source),
                        data=data)


def _tls_context(spec: dict[str, Any], base: Path, key: str, fail: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, private = base / spec["cert_file"], base / spec["key_file"]
    try:
        context.load_cert_chain(str(cert), str(private))
    except (OSError, ssl.SSLError) as exc:
        raise fail(f"{key}.cert_file", f"cannot load {cert} / {private}: {exc}") from None
    if spec.get("ca_file"):
        ca = base / spec["ca_file"]
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise fail(f"{key}.ca_file", f"cannot load {ca}: {exc}") from None
    if spec.get("require_client_cert"):
        if not spec.get("ca_file"):
            raise fail(f"{key}.require_client_cert", "needs ca_file (the CA client certificates "
                                                     "must be signed by)")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _validate(data: dict[str, Any], source: str) -> None:
    from ..config import schema_problem

    problem = schema_problem(SCHEMA, data)
    if problem is not None:
        raise BrokerConfigError(f"{source}: {problem}")


def dump_broker_config(listeners: list[dict[str, Any]], users: dict[str, dict[str, Any]],
                       limits: dict[str, Any] | None = None,
                       pidfile: str | None = None) -> str:
    """YAML text of a broker config (what the fleet writes); checked before it is returned."""
    data: dict[str, Any] = {"listeners": listeners, "users": users}
    if limits:
        data["limits"] = limits
    if pidfile:
        data["pidfile"] = pidfile
    _validate(data, "<generated broker config>")
    return yaml.safe_dump(data, sort_keys=False)
