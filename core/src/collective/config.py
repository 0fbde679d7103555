"""YAML configuration, validated by a JSON Schema, with clear errors naming file and key.

Files: ``/etc/collective/server.yaml`` for the daemon; for the client
``~/.config/collective/client.yaml`` then ``/etc/collective/client.yaml``;
``-c FILE`` or ``COLLECTIVE_CONFIG`` override. ``COLLECTIVE_<SECTION>__<KEY>=value``
overrides one key (``COLLECTIVE_BROKER__PORT=61614``). Relative paths in a file
are relative to that file's directory.
"""

from __future__ import annotations

import copy
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from .names import IDENTITY

Kind = Literal["server", "client"]

SERVER_PATHS = (Path("/etc/collective/server.yaml"),)
CLIENT_PATHS = (Path("~/.config/collective/client.yaml"), Path("/etc/collective/client.yaml"))

_path = {"type": ["string", "null"]}
_bool = {"type": "boolean"}
_int = {"type": "integer"}
_num = {"type": "number"}
_str = {"type": "string"}
#: identity, collectives: the identity grammar; ``\Z``, since JSON Schema patterns search
_name = {"type": "string", "pattern": rf"^{IDENTITY}\Z"}


#: the largest ``security.ttl`` / ``security.max_ttl`` any config may set, in seconds
MAX_TTL_BOUND = 3600
#: the largest ``security.skew`` any config may set, in seconds
MAX_SKEW_BOUND = 300
#: where a node writes its audit log unless ``audit.file`` says otherwise (``null``: nowhere)
DEFAULT_AUDIT_FILE = "/var/log/collective/audit.jsonl"


def _obj(props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "additionalProperties": False, **extra}


SCHEMA: dict[str, Any] = _obj(
    {
        "identity": _name,
        "collectives": {"type": "array", "items": _name, "minItems": 1},
        "main_collective": _name,
        "broker": _obj(
            {
                "connector": _str,
                "flavour": {"enum": ["embedded", "rabbitmq", "activemq"]},
                "host": _str,
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "user": {"type": ["string", "null"]},
                "password": {"type": ["string", "null"]},
                "password_file": _path,
                "password_env": {"type": ["string", "null"]},
                "vhost": {"type": ["string", "null"]},
                "heartbeat_ms": {"type": "integer", "minimum": 0},
                "connect_timeout": _num,
                "publish_timeout": _num,
                "reconnect_max": _num,
                # most unacknowledged messages per subscription of a node (0: no bound)
                "prefetch": {"type": "integer", "minimum": 0, "maximum": 10000},
                "tls": _obj(
                    {
                        "enabled": _bool,
                        "ca_file": _path,
                        "cert_file": _path,
                        "key_file": _path,
                        "verify": _bool,
                    }
                ),
            }
        ),
        "security": _obj(
            {
                "provider": _str,
                "identity": {"type": ["string", "null"]},
                "private_key": _path,
                "trust_dir": _path,
                "psk_file": _path,
                # upper bounds: a request may not stay valid (or be accepted early) for
                # longer than an hour, whatever a config says (docs/security.md, S3)
                "ttl": {"type": "integer", "minimum": 1, "maximum": MAX_TTL_BOUND},
                "max_ttl": {"type": "integer", "minimum": 1, "maximum": MAX_TTL_BOUND},
                "skew": {"type": "integer", "minimum": 0, "maximum": MAX_SKEW_BOUND},
                "replay_cache": {"type": "integer", "minimum": 16},
                "max_request_bytes": {"type": "integer", "minimum": 1024},
            }
        ),
        "facts": _obj(
            {
                "sources": {"type": "array", "items": _str},
                "files": {"type": "array", "items": _str},
                "static": {"type": "object"},
                "refresh": {"type": "number", "minimum": 0},
            }
        ),
        "classes_file": _path,
        "authorization": _obj({
            "provider": {"type": ["string", "null"]},
            # without a provider every request is denied unless this is set (loudly)
            "allow_unconfigured": _bool,
            # provider "callers": the callers allowed every agent and action
            "callers": {"type": "array", "items": _str},
        }),
        "audit": _obj(
            {
                "sinks": {"type": "array", "items": _str},
                "file": _path,
                "fail_closed": _bool,
                # audit lines for discovery pings, per second (bursts of 10x); 0: none
                "discovery_rate": {"type": "number", "minimum": 0},
                # lines for refused messages that did not verify, per second (bursts of 10x)
                "unverified_rate": {"type": "number", "minimum": 0},
                # the syslog sink: a unix socket path, or host:port for UDP
                "syslog_address": _str,
                "syslog_facility": {"enum": [
                    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news",
                    "syslog", "user", "uucp", *(f"local{i}" for i in range(8))]},
            }
        ),
        "server": _obj(
            {
                "max_concurrent": {"type": "integer", "minimum": 1},
                "max_queued": {"type": "integer", "minimum": 1},
                "pidfile": _path,
                "registration_interval": {"type": "integer", "minimum": 0},
                # -- worker processes (server/workers.py) --
                # where actions run: worker processes (stopped at their timeout) or, for
                # embedding and debugging only, threads of the daemon (never stopped)
                "workers": {"enum": ["processes", "threads"]},
                # worker processes started with the daemon (more are forked on demand, up
                # to max_concurrent)
                "min_workers": {"type": "integer", "minimum": 0},
                # SIGTERM: seconds in-flight actions may take to finish and reply
                "stop_grace": {"type": "number", "minimum": 0, "maximum": 3600},
            }
        ),
        "discovery": _obj({
            "timeout": _num,
            "method": _str,
            # the SQLite inventory `mco registry collect` fills (inventory discovery)
            "inventory": _path,
            # seconds after which an inventory node counts as stale (default: 3 intervals)
            "stale_after": {"type": ["number", "null"], "exclusiveMinimum": 0},
        }),
        "rpc": _obj({"timeout": {"type": ["number", "null"]}, "batch_size": _int, "batch_sleep": _num}),
        # DDLs of agents not installed on the client, fetched from the nodes (client only)
        "ddl": _obj({
            "fetch": _bool,
            "cache_dir": _path,
            "cache_ttl": {"type": "number", "minimum": 0},
            "fetch_timeout": {"type": "number", "exclusiveMinimum": 0},
        }),
        "logging": _obj(
            {
                "level": {"enum": ["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"]},
                "file": _path,
            }
        ),
        "plugins": {"type": "object", "additionalProperties": {"type": "object"}},
    }
)

DEFAULTS: dict[str, Any] = {
    "collectives": ["mcollective"],
    "main_collective": None,  # first of collectives
    "broker": {
        "connector": "stomp",
        "flavour": "embedded",
        "host": "127.0.0.1",
        "port": 61613,
        "heartbeat_ms": 10000,
        "connect_timeout": 5.0,
        "publish_timeout": 5.0,
        "reconnect_max": 30.0,
        "prefetch": 8,
        "tls": {"enabled": False, "verify": True},
    },
    "security": {
        "provider": "ed25519",
        "ttl": 60,
        "max_ttl": 600,
        "skew": 10,
        "replay_cache": 100_000,
        "max_request_bytes": 512 * 1024,
    },
    "facts": {"sources": ["static"], "files": [], "static": {}, "refresh": 1.0},
    "authorization": {"provider": None, "allow_unconfigured": False, "callers": []},
    "audit": {"sinks": ["jsonl"], "fail_closed": False, "syslog_address": "/dev/log",
              "syslog_facility": "authpriv", "discovery_rate": 5.0,
              "unverified_rate": 5.0},
    "server": {"max_concurrent": 8, "max_queued": 256, "registration_interval": 0,
               "workers": "processes", "min_workers": 1, "stop_grace": 10.0},
    "discovery": {"timeout": 2.0, "method": "broadcast", "inventory": None, "stale_after": None},
    "rpc": {"timeout": None},
    "ddl": {"fetch": True, "cache_dir": None, "cache_ttl": 3600, "fetch_timeout": 2.0},
    "logging": {"level": "INFO"},
    "plugins": {},
}

#: Keys whose values are relative paths to resolve against the config file's directory.
PATH_KEYS = (
    "broker.password_file",
    "broker.tls.ca_file",
    "broker.tls.cert_file",
    "broker.tls.key_file",
    "security.private_key",
    "security.trust_dir",
    "security.psk_file",
    "classes_file",
    "audit.file",
    "server.pidfile",
    "logging.file",
    "discovery.inventory",
    "ddl.cache_dir",
)

#: Keys ``rpcutil get_config_item`` may return (an allow-list; secrets are never in it).
READABLE_KEYS = (
    "identity",
    "collectives",
    "main_collective",
    "broker.connector",
    "broker.flavour",
    "broker.host",
    "broker.port",
    "broker.heartbeat_ms",
    "security.provider",
    "security.ttl",
    "security.max_ttl",
    "security.skew",
    "facts.sources",
    "classes_file",
    "authorization.provider",
    "audit.sinks",
    "audit.fail_closed",
    "server.max_concurrent",
    "server.max_queued",
    "discovery.timeout",
    "logging.level",
)


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith("COLLECTIVE_") or "__" not in name:
            continue
        parts = [p.lower() for p in name[len("COLLECTIVE_") :].split("__") if p]
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = yaml.safe_load(raw) if raw else raw
    return out


class Config:
    """A validated configuration: sections are plain dicts, paths are resolved."""

    def __init__(self, data: Mapping[str, Any] | None = None, path: str | Path | None = None,
                 kind: Kind = "client", env: Mapping[str, str] | None = None) -> None:
        self.kind: Kind = kind
        self.path = Path(path).resolve() if path else None
        self.dir = self.path.parent if self.path else Path.cwd()
        source = str(self.path) if self.path else "<config>"
        raw = dict(data or {})
        raw = _merge(raw, _env_overrides(env if env is not None else os.environ))
        _validate(raw, source)
        merged = _merge(DEFAULTS, raw)
        if kind == "server" and "file" not in raw.get("audit", {}):
            merged["audit"]["file"] = DEFAULT_AUDIT_FILE
        if not merged.get("main_collective"):
            merged["main_collective"] = merged["collectives"][0]
        if merged["main_collective"] not in merged["collectives"]:
            raise ConfigError(
                f"{source}: main_collective: {merged['main_collective']!r} is not one of "
                f"collectives {merged['collectives']}"
            )
        merged.setdefault("identity", socket.gethostname().split(".")[0])
        for key in PATH_KEYS:
            value = self.get(key, None, data=merged)
            if value:
                self._set(merged, key, str((self.dir / Path(value).expanduser()).resolve()))
        self.data = merged

    # -- access ----------------------------------------------------------------
    def get(self, dotted: str, default: Any = None, data: Mapping[str, Any] | None = None) -> Any:
        node: Any = self.data if data is None else data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    @staticmethod
    def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
        parts = dotted.split(".")
        for part in parts[:-1]:
            data = data.setdefault(part, {})
        data[parts[-1]] = value

    def __getitem__(self, section: str) -> Any:
        return self.data[section]

    def plugin(self, name: str) -> dict[str, Any]:
        """The ``plugins.<name>`` section (empty when absent)."""
        return dict(self.data.get("plugins", {}).get(name, {}))

    @property
    def identity(self) -> str:
        return str(self.data["identity"])

    @property
    def collectives(self) -> list[str]:
        return list(self.data["collectives"])

    @property
    def main_collective(self) -> str:
        return str(self.data["main_collective"])

    def broker_password(self) -> str | None:
        """The broker password from ``password_file``, ``password_env`` or ``password``."""
        broker = self.data["broker"]
        if broker.get("password_file"):
            return Path(broker["password_file"]).read_text().strip()
        if broker.get("password_env"):
            return os.environ.get(broker["password_env"])
        return broker.get("password")

    def __repr__(self) -> str:
        return f"Config(kind={self.kind!r}, path={str(self.path) if self.path else None!r})"


def schema_problem(schema: Mapping[str, Any], data: Any) -> str | None:
    """The first problem of ``data`` against the JSON Schema ``schema``, as
    ``"dotted.key: message"`` (``"key: unknown key"`` for one the schema does not
    know), or None; for config files, whose errors name the key."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    err = errors[0]
    key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator == "additionalProperties":
        unknown = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        key = ".".join([*map(str, err.absolute_path), unknown[0]]) if unknown else key
        return f"{key}: unknown key"
    return f"{key}: {err.message}"


def _validate(raw: Mapping[str, Any], source: str) -> None:
    problem = schema_problem(SCHEMA, raw)
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")


def find_config(kind: Kind, explicit: str | Path | None = None) -> Path | None:
    """The config file to read: ``explicit``, ``$COLLECTIVE_CONFIG`` or the first default that exists."""
    if explicit:
        return Path(explicit)
    if os.environ.get("COLLECTIVE_CONFIG"):
        return Path(os.environ["COLLECTIVE_CONFIG"])
    for candidate in SERVER_PATHS if kind == "server" else CLIENT_PATHS:
        candidate = candidate.expanduser()
        if candidate.exists():
            return candidate
    return None


def missing_client_config() -> str:
    """What to say when ``mco`` found no client config: the paths tried, how to make one."""
    tried = ", ".join(str(p.expanduser()) for p in CLIENT_PATHS)
    return ("no client config found (tried -c FILE, $COLLECTIVE_CONFIG, " + tried + "). "
            "Make one: 'mco fleet up --dir DIR' starts a local fleet and writes DIR/client.yaml "
            "(then: mco ping -c DIR/client.yaml); for a real fleet, 'mco keys generate NAME "
            "--dir ~/.config/collective' and a ~/.config/collective/client.yaml with "
            "identity, broker: {host, port, user, password_file} and security: "
            "{private_key: ~/.config/collective/NAME.key, trust_dir: DIR} "
            "(NAME.pub goes to the nodes' trust_dir/clients/)")


def load_config(path: str | Path | None = None, kind: Kind = "client",
                env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return a config; defaults only when no file exists."""
    found = find_config(kind, path)
    if found is None:
        return Config({}, None, kind, env)
    try:
        text = found.read_text()
    except OSError as exc:
        raise ConfigError(f"{found}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{found}:{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{found}: the top level must be a mapping, not {type(data).__name__}")
    return Config(data, found, kind, env)
