"""A local fleet for demos, tests, benchmarks and plugin authors.

``fleet_up`` starts the embedded broker (or points at a RabbitMQ) and N
``collectived`` processes in the background, each with its own Ed25519 key,
config, identity and varied sample facts, writes ``DIR/client.yaml`` and
returns once every node answers a ping. ``fleet_down`` stops exactly the
processes recorded in ``DIR/fleet.json``.

Clients: ``clients=["admin", "bob"]`` makes one key pair per name (trusted by
every node, caller id ``cert=NAME``); the first one's config is
``DIR/client.yaml``, every other one's ``DIR/client-NAME.yaml``.

On the embedded broker every node and client logs in as itself: ``DIR/broker.yaml``
(mode 0600) has one user per node (role ``node``: its own queue, the broadcast topics,
writes replies) and per client (role ``client``: writes requests, reads only its own
reply queues ``COLLECTIVE.reply.NAME.*``), with scrypt hashes of random passwords that
sit in ``DIR/keys/LOGIN.broker-password`` (mode 0600) for the configs to name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

log = logging.getLogger(__name__)

STATE_FILE = "fleet.json"
CLIENT_NAME = "admin"
ROLES = ("web", "db", "cache")
LOCATIONS = ("uk", "us", "de")
OSES = (("debian", "Debian", "12"), ("redhat", "RedHat", "9"))
#: Client key names: a file name and the ``NAME`` of caller id ``cert=NAME``.
_CLIENT_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


class FleetError(Exception):
    """The fleet could not be started or stopped; the message says why."""


@dataclass
class BrokerSpec:
    flavour: str = "embedded"
    host: str = "127.0.0.1"
    port: int = 0
    user: str | None = None
    password: str | None = None
    vhost: str | None = None

    @classmethod
    def from_url(cls, flavour: str, url: str) -> BrokerSpec:
        """``stomp://user:password@host:port/vhost`` (vhost optional, url-encoded)."""
        parts = urlsplit(url)
        if parts.scheme not in ("stomp", "stomp+ssl", ""):
            raise FleetError(f"--broker-url {url!r}: expected stomp://user:password@host:port/vhost")
        vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else None
        return cls(flavour=flavour, host=parts.hostname or "127.0.0.1", port=parts.port or 61613,
                   user=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None, vhost=vhost)


@dataclass
class Fleet:
    directory: Path
    broker: BrokerSpec
    nodes: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    #: client key names; the first one's config is ``client.yaml``
    clients: list[str] = field(default_factory=lambda: [CLIENT_NAME])

    @property
    def client_config(self) -> Path:
        return self.directory / "client.yaml"

    def client_config_for(self, name: str) -> Path:
        """The config file of client ``name`` (``client.yaml`` for the first client)."""
        if name not in self.clients:
            raise FleetError(f"no client {name!r} in this fleet (clients: {', '.join(self.clients)})")
        return self.client_config if name == self.clients[0] else self.directory / f"client-{name}.yaml"

    def save(self) -> None:
        state = {"broker": vars(self.broker) | {"password": None}, "nodes": self.nodes,
                 "pids": self.pids, "clients": self.clients}
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Fleet:
        path = directory / STATE_FILE
        if not path.exists():
            raise FleetError(f"{path} not found: no fleet was started in {directory}")
        state = json.loads(path.read_text())
        return cls(directory, BrokerSpec(**state["broker"]), state["nodes"],
                   {k: int(v) for k, v in state["pids"].items()},
                   list(state.get("clients") or [CLIENT_NAME]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_facts(index: int, identity: str) -> tuple[dict[str, Any], list[str]]:
    """Varied, deterministic facts and classes for node number ``index`` (1-based)."""
    role = ROLES[(index - 1) % len(ROLES)]
    location = LOCATIONS[(index - 1) // len(ROLES) % len(LOCATIONS)]
    family, name, release = OSES[(index - 1) % len(OSES)]
    facts = {
        "role": role,
        "location": location,
        "index": index,
        "rack": f"rack{(index - 1) // 4 + 1}",
        "hostname": identity,
        "environment": "production" if index % 5 else "development",
        "os": {"family": family, "name": name, "release": {"major": release}},
        "interfaces": ["lo", "eth0"],
    }
    classes = ["base", f"role::{role}", f"location::{location}"]
    return facts, classes


#: scrypt cost for the fleet's broker passwords: they are 144-bit random strings, so a
#: cheap setting loses nothing and 1000 nodes log in quickly (a human-chosen password in
#: a hand-written broker config gets the default, ``mco broker --hash-password``).
FLEET_SCRYPT_N = 2**10


def _broker_password_file(directory: Path, login: str) -> Path:
    return directory / "keys" / f"{login}.broker-password"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _write_embedded_broker_config(directory: Path, spec: BrokerSpec,
                                  roles: dict[str, str]) -> Path:
    """``DIR/broker.yaml`` with one user per login (``roles``: login -> role), each with a
    fresh random password written to its 0600 password file."""
    from .broker.auth import hash_password
    from .broker.config import dump_broker_config

    users = {}
    for login, role in roles.items():
        password = secrets.token_urlsafe(18)
        _write_private(_broker_password_file(directory, login), password + "\n")
        users[login] = {"password_hash": hash_password(password, n=FLEET_SCRYPT_N), "role": role}
    path = directory / "broker.yaml"
    _write_private(path, dump_broker_config([{"host": spec.host, "port": spec.port}], users))
    return path


def add_broker_login(fleet: Fleet, login: str, role: str = "node",
                     timeout: float = 10.0) -> dict[str, Any]:
    """Give ``login`` a user on the fleet's embedded broker (``role`` node, client or
    admin) and make the running broker serve it (SIGHUP): for a node or client added
    to a fleet that is up. Returns the ``broker`` config section that logs in as it.
    """
    from .broker.auth import hash_password
    from .broker.config import load_broker_config

    if fleet.broker.flavour != "embedded" or "broker" not in fleet.pids:
        raise FleetError("add_broker_login: the fleet does not run its own embedded broker")
    path = fleet.directory / "broker.yaml"
    data = yaml.safe_load(path.read_text())
    if login in data.get("users", {}):
        raise FleetError(f"broker user {login!r} exists already")
    password = secrets.token_urlsafe(18)
    _write_private(_broker_password_file(fleet.directory, login), password + "\n")
    data["users"][login] = {"password_hash": hash_password(password, n=FLEET_SCRYPT_N),
                            "role": role}
    _write_private(path, yaml.safe_dump(data, sort_keys=False))
    load_broker_config(path)  # the broker would refuse it: better to say so here
    pid = fleet.pids["broker"]
    if not (_alive(pid) and _is_ours(pid, fleet.directory)):
        raise FleetError(f"the fleet's broker (pid {pid}) is not running")
    section = _broker_section(fleet, login)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    from .connectors.probe import stomp_login

    while stomp_login(fleet.broker.port, login, password, host=fleet.broker.host) is not None:
        if time.monotonic() > deadline:
            raise FleetError(f"the broker did not take user {login!r} within {timeout:g}s")
        time.sleep(0.1)
    return section


def _broker_section(fleet: Fleet, login: str | None = None) -> dict[str, Any]:
    """The ``broker`` config section; on the embedded broker, logged in as ``login``."""
    spec = fleet.broker
    section: dict[str, Any] = {"flavour": spec.flavour, "host": spec.host, "port": spec.port}
    if spec.flavour == "embedded" and login is not None:
        section["user"] = login
        section["password_file"] = str(_broker_password_file(fleet.directory, login))
        return section
    if spec.user:
        section["user"] = spec.user
    if spec.password:
        section["password_file"] = str(fleet.directory / "broker.password")
    if spec.vhost:
        section["vhost"] = spec.vhost
    return section


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _spawn(args: list[str], log_path: Path) -> int:
    """Start a background process in its own session; return its PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=log_path.parent)
    return proc.pid


def _wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise FleetError(f"broker {host}:{port} did not accept connections within {timeout:.0f}s")


def fleet_up(directory: Path, nodes: int = 3, broker: BrokerSpec | None = None,
             timeout: float = 120.0, collectives: list[str] | None = None,
             extra_server_config: dict[str, Any] | None = None,
             facts_for: Callable[[int, str], dict[str, Any]] | None = None,
             clients: Sequence[str] | None = None,
             server_config_for: Callable[[int, str], dict[str, Any]] | None = None,
             python: str | os.PathLike[str] | None = None) -> Fleet:
    """Start a fleet in ``directory`` and return once all ``nodes`` answer.

    :param extra_server_config: top-level sections merged into every node's config
        (a mapping value is merged one level deep into the section of that name).
    :param facts_for: ``(index, identity) -> facts`` laid over the sample facts of a node.
    :param server_config_for: ``(index, identity) -> sections`` merged into that node's
        config after ``extra_server_config``, the same way (e.g. a per-node
        ``plugins.nrpe.conf_dir``).
    :param clients: client key names (default ``["admin"]``); each gets a key pair
        trusted by the nodes (caller id ``cert=NAME``) and a config file: the first
        ``client.yaml``, the others ``client-NAME.yaml``.
    :param python: the interpreter that runs the broker and the nodes (default: this
        one); another venv's python runs the code installed there.
    """
    from .security.keys import generate_keypair

    interpreter = str(python) if python is not None else sys.executable

    names = list(clients) if clients is not None else [CLIENT_NAME]
    if not names:
        raise FleetError("clients: at least one client is needed")
    for name in names:
        if not isinstance(name, str) or not _CLIENT_RE.fullmatch(name):
            raise FleetError(f"client name {name!r} does not match {_CLIENT_RE.pattern}")
    if len(set(names)) != len(names):
        raise FleetError(f"clients: duplicate names in {names}")

    directory = directory.resolve()
    if (directory / STATE_FILE).exists():
        raise FleetError(f"a fleet is already running in {directory}: run 'mco fleet down --dir {directory}' first")
    directory.mkdir(parents=True, exist_ok=True)
    spec = broker or BrokerSpec()
    if spec.flavour == "embedded" and not spec.port:
        spec.port = free_port()
    fleet = Fleet(directory, spec, clients=names)
    keys, trust = directory / "keys", directory / "trust"
    for sub in (keys, trust / "clients", trust / "nodes"):
        sub.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    if spec.password:
        pw = directory / "broker.password"
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(spec.password)
    collectives = collectives or ["mcollective"]
    identities = [f"node-{index:03d}" for index in range(1, nodes + 1)]
    if set(identities) & set(names):
        raise FleetError(f"client names {sorted(set(identities) & set(names))} are node identities")
    try:
        if spec.flavour == "embedded":
            broker_config = _write_embedded_broker_config(
                directory, spec, {**dict.fromkeys(names, "client"),
                                  **dict.fromkeys(identities, "node")})
            fleet.pids["broker"] = _spawn(
                [interpreter, "-P", "-m", "collective", "broker", "--config", str(broker_config),
                 "--pidfile", str(directory / "broker.pid"),
                 "--log-level", "WARNING"], directory / "broker.log")
            fleet.save()
            _wait_port(spec.host, spec.port, 30)
        for name in names:
            if not (keys / f"{name}.key").exists():
                generate_keypair(name, keys)
                shutil.copy(keys / f"{name}.pub", trust / "clients" / f"{name}.pub")
            _write_yaml(fleet.client_config_for(name), {
                "identity": f"{name}-client",
                "collectives": collectives,
                "broker": _broker_section(fleet, name),
                "security": {"provider": "ed25519", "identity": name,
                             "private_key": f"keys/{name}.key", "trust_dir": "trust"},
                "discovery": {"timeout": 2.0},
            })
        for index in range(1, nodes + 1):
            identity = f"node-{index:03d}"
            fleet.nodes.append(identity)
            node_dir = directory / "nodes" / identity
            if not (keys / f"{identity}.key").exists():
                generate_keypair(identity, keys)
                shutil.copy(keys / f"{identity}.pub", trust / "nodes" / f"{identity}.pub")
            facts, classes = sample_facts(index, identity)
            if facts_for is not None:
                facts.update(facts_for(index, identity))
            node_dir.mkdir(parents=True, exist_ok=True)
            (node_dir / "classes.txt").write_text("\n".join(classes) + "\n")
            config: dict[str, Any] = {
                "identity": identity,
                "collectives": collectives,
                "broker": _broker_section(fleet, identity),
                "security": {"provider": "ed25519", "private_key": f"../../keys/{identity}.key",
                             "trust_dir": "../../trust"},
                "facts": {"sources": ["static"], "static": facts},
                "classes_file": "classes.txt",
                "audit": {"file": "audit.jsonl"},
                # the fleet's own client keys may do everything; nobody else anything
                "authorization": {"provider": "callers",
                                  "callers": [f"cert={name}" for name in names]},
                "logging": {"level": "INFO", "file": "collectived.log"},
                "server": {"pidfile": "collectived.pid"},
            }
            _merge_sections(config, extra_server_config or {})
            if server_config_for is not None:
                _merge_sections(config, server_config_for(index, identity))
            _write_yaml(node_dir / "server.yaml", config)
            fleet.pids[identity] = _spawn(
                [interpreter, "-P", "-m", "collective.server.main", "-c", str(node_dir / "server.yaml")],
                node_dir / "stdout.log")
        fleet.save()
        wait_for_nodes(fleet, timeout)
    except BaseException:
        fleet_down(directory, quiet=True)
        raise
    return fleet


def load_server_config(path: Path) -> dict[str, Any]:
    """The sections of a ``mco fleet up --server-config`` file (a YAML mapping).

    :raises FleetError: unreadable, not YAML, or not a mapping of sections
    """
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FleetError(f"--server-config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise FleetError(f"--server-config {path}: not valid YAML: "
                         f"{str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise FleetError(f"--server-config {path}: expected a mapping of config sections, "
                         f"such as plugins: {{nrpe: {{conf_dir: /etc/nagios/nrpe.d}}}}")
    return data


def per_identity(sections: dict[str, Any]) -> Callable[[int, str], dict[str, Any]]:
    """A ``server_config_for`` that gives each node ``sections`` with ``{identity}`` in
    every string replaced by its identity (so each node can have its own directory)."""

    def expand(value: Any, identity: str) -> Any:
        if isinstance(value, str):
            return value.replace("{identity}", identity)
        if isinstance(value, dict):
            return {k: expand(v, identity) for k, v in value.items()}
        if isinstance(value, list):
            return [expand(v, identity) for v in value]
        return value

    return lambda index, identity: expand(sections, identity)


def _merge_sections(config: dict[str, Any], extra: dict[str, Any]) -> None:
    """Merge top-level sections; a mapping is merged one level deep into a mapping."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value


def wait_for_nodes(fleet: Fleet, timeout: float) -> None:
    """Ping until every node of ``fleet`` answered, or raise FleetError."""
    from .client import Client, ClientError
    from .config import load_config

    deadline = time.monotonic() + timeout
    missing = set(fleet.nodes)
    last_error = ""
    while missing and time.monotonic() < deadline:
        for identity, pid in fleet.pids.items():
            if not _alive(pid):
                raise FleetError(f"{identity} (pid {pid}) exited during start-up; "
                                 f"see {fleet.directory / 'nodes' / identity / 'collectived.log'}")
        try:
            with Client(load_config(fleet.client_config)) as client:
                result = client.ping(expected=sorted(missing), timeout=2.0)
            missing -= {reply.sender for reply in result.replies}
        except ClientError as exc:
            last_error = str(exc)
            time.sleep(0.5)
    if missing:
        raise FleetError(f"{len(missing)} node(s) did not answer within {timeout:.0f}s: "
                         f"{', '.join(sorted(missing)[:10])} {last_error}".rstrip())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _is_ours(pid: int, directory: Path) -> bool:
    """Only signal a PID whose command line still names our fleet (PIDs get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "collective" in cmdline and str(directory) in cmdline


def fleet_down(directory: Path, quiet: bool = False, grace: float = 10.0) -> list[str]:
    """Stop every process recorded for the fleet in ``directory``; return what was stopped."""
    directory = directory.resolve()
    fleet = Fleet.load(directory)
    stopped = []
    order = [name for name in fleet.pids if name != "broker"] + (["broker"] if "broker" in fleet.pids else [])
    for phase in (order[:-1] if order and order[-1] == "broker" else order, ["broker"] if "broker" in order else []):
        live = {name: fleet.pids[name] for name in phase
                if _alive(fleet.pids[name]) and _is_ours(fleet.pids[name], directory)}
        for pid in live.values():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(_alive(pid) for pid in live.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for name, pid in live.items():
            if _alive(pid):
                log.warning("%s (pid %d) ignored SIGTERM; killing it", name, pid)
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return stopped
