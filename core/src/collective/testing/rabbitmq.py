"""A private, throw-away RabbitMQ node for tests (STOMP plugin on, loopback only).

Nothing here touches a system-wide RabbitMQ: the node gets its own name
(``collective-<pid>-<n>@localhost``), its own temporary base directory (data, logs,
config, enabled-plugins file, ``HOME`` with a fresh Erlang cookie), its own ports on
127.0.0.1 and even its own ``epmd`` on a private port, which :meth:`RabbitMQServer.stop`
kills again. ``/etc/rabbitmq/rabbitmq-env.conf`` is bypassed.

Usage::

    with RabbitMQServer() as rmq:
        rmq.stomp_port, rmq.user, rmq.password, rmq.vhost
        rmq.rabbitmqctl("close_all_connections", "test")

Debian's ``/usr/sbin/rabbitmq-server`` wrapper switches to the ``rabbitmq`` user when
run as root; we call ``/usr/lib/rabbitmq/bin/rabbitmq-server`` directly instead, which
runs fine as root with a private ``HOME``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .processes import free_port, kill_group, port_open

log = logging.getLogger(__name__)

#: Where Debian puts the real scripts (the ones in /usr/sbin are wrappers).
RABBITMQ_BIN_DIRS = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/local/lib/rabbitmq/bin"))

_counter = itertools.count(1)


def _find_bin(name: str) -> Path | None:
    for directory in RABBITMQ_BIN_DIRS:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def rabbitmq_available() -> str | None:
    """``None`` when a private RabbitMQ node can be started here, else the reason why not."""
    for name in ("rabbitmq-server", "rabbitmqctl"):
        if _find_bin(name) is None:
            return (f"{name} not found (looked in {', '.join(map(str, RABBITMQ_BIN_DIRS))} and "
                    "PATH); install Debian's rabbitmq-server (scripts/system-deps.sh)")
    if shutil.which("epmd") is None and shutil.which("erl") is None:
        return "Erlang (erl/epmd) not found; install Debian's rabbitmq-server"
    return None




def collective_permissions(role: str, login: str,
                           collectives: tuple[str, ...] = ("mcollective",)) -> dict[str, str]:
    """The RabbitMQ permissions of a collective ``node`` or ``client`` user (the same rules
    as the embedded broker's roles, :mod:`collective.broker.auth`).

    Returns the regexes for ``rabbitmqctl set_permissions`` (``configure``, ``write``,
    ``read``) and ``set_topic_permissions`` on ``amq.topic`` (``topic_write``,
    ``topic_read``). A node declares and reads only its own queue ``C.node.LOGIN`` and
    binds only to the broadcast routing keys; a client declares and reads only its reply
    queues ``C.reply.LOGIN.TAG`` and publishes only broadcast routing keys. Both publish to
    ``amq.default`` (directed requests and replies go to ``/amq/queue/NAME``), which
    RabbitMQ cannot restrict by queue name: a node could still push a message into another
    node's queue, where the signature check refuses it (a node key cannot sign requests).
    ``stomp-subscription-*`` are the STOMP plugin's own queues for ``/topic/``
    subscriptions.
    """
    c = "(" + "|".join(re.escape(name) for name in collectives) + ")"
    user = re.escape(login)
    sub = r"stomp-subscription-.+"
    write = rf"^(amq\.default|amq\.topic|{sub})$"
    if role == "node":
        own = rf"{c}\.node\.{user}"
        return {"configure": rf"^({own}|{sub})$", "write": write,
                "read": rf"^({own}|amq\.topic|{sub})$",
                "topic_write": rf"^{c}\.registration$", "topic_read": rf"^{c}\.broadcast\.[^.]+$"}
    if role == "client":
        own = rf"{c}\.reply\.{user}\.[^.]+"
        return {"configure": rf"^({own}|{sub})$", "write": write,
                "read": rf"^({own}|amq\.topic|{sub})$",
                "topic_write": rf"^{c}\.broadcast\.[^.]+$", "topic_read": rf"^{c}\.registration$"}
    raise ValueError(f"unknown role {role!r} (node or client)")


class RabbitMQError(RuntimeError):
    """The private node could not be started or controlled."""


class RabbitMQServer:
    """A private RabbitMQ node with ``rabbitmq_stomp``, bound to 127.0.0.1 only.

    ``start()`` takes a few seconds (see ``start_seconds``). The node has a vhost
    (``/collective`` by default) and one user with a generated password and full
    permissions on it; ``guest`` is deleted.
    """

    def __init__(self, *, vhost: str = "/collective", user: str = "collective",
                 start_timeout: float = 60.0, base_dir: str | Path | None = None,
                 keep_base_dir: bool = False) -> None:
        self.vhost = vhost
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.start_timeout = start_timeout
        self.nodename = f"collective-{os.getpid()}-{next(_counter)}@localhost"
        self._given_base = Path(base_dir) if base_dir else None
        self.keep_base_dir = keep_base_dir
        self.base_dir: Path | None = None
        self.stomp_port = 0
        self.amqp_port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server_log: Any = None

    # -- environment -------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """The environment both ``rabbitmq-server`` and ``rabbitmqctl`` need for this node."""
        assert self.base_dir is not None, "start() first"
        base = self.base_dir
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_", "COLLECTIVE_"))}
        env.update(
            HOME=str(base / "home"),
            LANG=env.get("LANG", "C.UTF-8"),
            LC_ALL="C.UTF-8",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_BASE=str(base),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(base / "mnesia"),
            RABBITMQ_LOG_BASE=str(base / "log"),
            RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        env.update(extra)
        return env

    def _write_files(self) -> None:
        assert self.base_dir is not None
        base = self.base_dir
        for sub in ("home", "mnesia", "log"):
            (base / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        cookie = base / "home" / ".erlang.cookie"
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(20).upper())
        (base / "rabbitmq-env.conf").write_text("# private test node: nothing here\n")
        (base / "enabled_plugins").write_text("[rabbitmq_stomp].\n")
        (base / "rabbitmq.conf").write_text(
            "\n".join([
                f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}",
                f"stomp.listeners.tcp.1 = 127.0.0.1:{self.stomp_port}",
                "listeners.ssl = none",
                # The node is for loopback tests: a low disk limit so a nearly full
                # /tmp does not block publishers.
                "disk_free_limit.absolute = 10MB",
                "log.console = false",
                "log.file.level = info",
                "",
            ])
        )
        (base / "advanced.config").write_text("[].\n")

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> RabbitMQServer:
        reason = rabbitmq_available()
        if reason:
            raise RabbitMQError(reason)
        if self._proc is not None:
            raise RabbitMQError("already started")
        t0 = time.monotonic()
        if self._given_base:
            self._given_base.mkdir(parents=True, exist_ok=True)
            self.base_dir = Path(tempfile.mkdtemp(prefix="rabbitmq-", dir=self._given_base))
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="collective-rabbitmq-"))
        ports: set[int] = set()
        while len(ports) < 4:
            ports.add(free_port())
        self.amqp_port, self.stomp_port, self.dist_port, self.epmd_port = sorted(ports)
        self._write_files()
        try:
            self._start_epmd()
            self._start_server()
            self._wait_ready(t0 + self.start_timeout)
            self._setup_access()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        log.info("private RabbitMQ %s up in %.1fs (stomp 127.0.0.1:%d, base %s)",
                 self.nodename, self.start_seconds, self.stomp_port, self.base_dir)
        return self

    def _start_epmd(self) -> None:
        epmd = shutil.which("epmd")
        if epmd is None:  # erl starts one itself; it then listens on our private port
            return
        assert self.base_dir is not None
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_open(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise RabbitMQError(f"private epmd on 127.0.0.1:{self.epmd_port} did not start")
            time.sleep(0.02)

    def _start_server(self) -> None:
        server = _find_bin("rabbitmq-server")
        assert server is not None and self.base_dir is not None
        self._server_log = open(self.base_dir / "log" / "server.out", "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [str(server)], env=self.env(), cwd=str(self.base_dir),
            stdin=subprocess.DEVNULL, stdout=self._server_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise RabbitMQError(
                    f"rabbitmq-server exited with {self._proc.returncode} during start-up; "
                    f"last output:\n{self.log_tail()}")
            if port_open(self.stomp_port):
                return
            if time.monotonic() > deadline:
                raise RabbitMQError(
                    f"RabbitMQ STOMP port 127.0.0.1:{self.stomp_port} not accepting connections "
                    f"after {self.start_timeout:.0f}s; last output:\n{self.log_tail()}")
            time.sleep(0.1)

    def _setup_access(self) -> None:
        self.rabbitmqctl("add_vhost", self.vhost)
        self.rabbitmqctl("add_user", self.user, self.password)
        self.rabbitmqctl("set_permissions", "-p", self.vhost, self.user, ".*", ".*", ".*")
        self.rabbitmqctl("delete_user", "guest", check=False)

    def rabbitmqctl(self, *args: str, timeout: float = 60.0,
                    check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS...`` against this node; raises on failure if ``check``."""
        ctl = _find_bin("rabbitmqctl")
        if ctl is None or self.base_dir is None:
            raise RabbitMQError("rabbitmqctl unavailable or node not started")
        ctl_port = str(free_port())
        env = self.env(RABBITMQ_CTL_DIST_PORT_MIN=ctl_port, RABBITMQ_CTL_DIST_PORT_MAX=ctl_port)
        cmd = [str(ctl), "-n", self.nodename, *args]
        try:
            proc = subprocess.run(cmd, env=env, cwd=str(self.base_dir), capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise RabbitMQError(f"{' '.join(cmd[1:])} timed out after {timeout}s") from exc
        if check and proc.returncode != 0:
            raise RabbitMQError(f"rabbitmqctl {' '.join(args)} failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def add_collective_user(self, login: str, role: str,
                            collectives: tuple[str, ...] = ("mcollective",)) -> dict[str, Any]:
        """Create ``login`` with a fresh password and :func:`collective_permissions` on the
        vhost; returns the ``broker`` config section that logs in as it."""
        password = secrets.token_urlsafe(18)
        perms = collective_permissions(role, login, collectives)
        self.rabbitmqctl("add_user", login, password)
        self.rabbitmqctl("set_permissions", "-p", self.vhost, login,
                         perms["configure"], perms["write"], perms["read"])
        self.rabbitmqctl("set_topic_permissions", "-p", self.vhost, login, "amq.topic",
                         perms["topic_write"], perms["topic_read"])
        return {**self.broker_config(), "user": login, "password": password}

    def log_tail(self, lines: int = 30) -> str:
        if self.base_dir is None:
            return ""
        out: list[str] = []
        for path in sorted((self.base_dir / "log").glob("*")):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if text:
                out.append(f"--- {path.name}")
                out.extend(text[-lines:])
        return "\n".join(out)

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes this object started (server script, private epmd)."""
        return [p.pid for p in (self._proc, self._epmd) if p is not None]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node (``rabbitmqctl stop``), then kill whatever we started that is left."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    self.rabbitmqctl("stop", timeout=timeout, check=False)
                except RabbitMQError as exc:
                    log.warning("rabbitmqctl stop: %s", exc)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            kill_group(proc)
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            kill_group(epmd)
        if self._server_log is not None:
            self._server_log.close()
            self._server_log = None
        if self.base_dir is not None and not self.keep_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def broker_config(self) -> dict[str, Any]:
        """The ``broker`` section of a collective config pointing at this node."""
        return {"flavour": "rabbitmq", "host": "127.0.0.1", "port": self.stomp_port,
                "user": self.user, "password": self.password, "vhost": self.vhost}

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"RabbitMQServer(node={self.nodename!r}, stomp=127.0.0.1:{self.stomp_port}, "
                f"running={self.running})")
