"""A private, throw-away ActiveMQ (Classic) broker for tests: STOMP only, loopback only.

Nothing here touches a system-wide ActiveMQ: the broker gets its own temporary base
directory (``conf/activemq.xml``, ``conf/log4j.properties``, ``data/``), one STOMP
transport connector on a free port of 127.0.0.1 and nothing else that listens (no
OpenWire/AMQP/MQTT/WS connector, JMX off, no web console, no discovery), no persistence
(``persistent="false"``: the memory store) and a ``simpleAuthenticationPlugin`` with one
user and a generated password (anonymous access refused). Debian's
``/etc/activemq`` instances and ``/var/lib/activemq`` are not used.

Usage::

    with ActiveMQServer() as amq:
        amq.stomp_port, amq.user, amq.password
        amq.broker_config()   # the collective ``broker`` section, flavour "activemq"

The JVM is started directly (``java -jar /usr/share/activemq/bin/activemq.jar start
xbean:file:...``, which is what Debian's ``/usr/bin/activemq`` script runs, minus its
user switching, pid files and ``/etc`` options) in its own process group, so
:meth:`ActiveMQServer.stop` kills exactly what it started.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ..connectors.probe import stomp_login
from .processes import free_port, kill_group, port_open

log = logging.getLogger(__name__)

#: Where Debian (and the upstream tarball, unpacked there) put ActiveMQ.
ACTIVEMQ_HOMES = (Path("/usr/share/activemq"), Path("/opt/activemq"))
#: The launcher jar (``org.apache.activemq.console.Main``) below an ActiveMQ home.
RUN_JAR = Path("bin/activemq.jar")

#: JVM options: a small heap is plenty for tests; the --add-opens are those of
#: Debian's /usr/bin/activemq for Java > 8 (harmless where not needed).
JVM_OPTS = (
    "-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true",
    "--add-reads=java.xml=java.logging",
    "--add-opens", "java.base/java.security=ALL-UNNAMED",
    "--add-opens", "java.base/java.net=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.naming/javax.naming.spi=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
)


def _find_home() -> Path | None:
    env_home = os.environ.get("ACTIVEMQ_HOME")
    for home in ((Path(env_home),) if env_home else ()) + ACTIVEMQ_HOMES:
        if (home / RUN_JAR).is_file():
            return home
    return None


def _find_java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def activemq_available() -> str | None:
    """``None`` when a private ActiveMQ broker can be started here, else the reason why not."""
    if _find_home() is None:
        return (f"ActiveMQ not found ({RUN_JAR} under {', '.join(map(str, ACTIVEMQ_HOMES))} or "
                "$ACTIVEMQ_HOME); install Debian's activemq (scripts/system-deps.sh)")
    if _find_java() is None:
        return "java not found (JAVA_HOME, PATH); install a JRE (Debian's activemq pulls one in)"
    return None


def collective_authorization(nodes: list[str], clients: list[str],
                             collectives: tuple[str, ...] = ("mcollective",),
                             admin_group: str = "collective") -> tuple[dict[str, str], str]:
    """ActiveMQ groups and ``authorizationEntries`` for collective node and client users
    (the destination layout of :mod:`collective.connectors.destinations`, flavour
    ``activemq``).

    Returns ``(groups, entries_xml)``: ``groups`` maps each login to its groups
    (``collective-nodes`` or ``collective-clients,client-LOGIN``). Nodes read the
    broadcast topics ``C.*.agent`` and the shared directed queue ``C.nodes``, write
    replies and registrations; clients write requests and read only their reply queues
    ``C.reply.LOGIN.*``. ``admin_group`` keeps every right (the harness's own user).
    ActiveMQ cannot restrict the *selector* a node subscribes to ``C.nodes`` with, so
    on ActiveMQ a node login can still take another node's directed requests.
    """
    from xml.sax.saxutils import quoteattr as q

    nodes_g, clients_g = "collective-nodes", "collective-clients"
    both = f"{nodes_g},{clients_g}"
    groups = {login: nodes_g for login in nodes}
    groups.update({login: f"{clients_g},client-{login}" for login in clients})
    lines = [
        f'<authorizationEntry queue=">" read={q(admin_group)} write={q(admin_group)} '
        f'admin={q(admin_group)}/>',
        f'<authorizationEntry topic=">" read={q(admin_group)} write={q(admin_group)} '
        f'admin={q(admin_group)}/>',
        f'<authorizationEntry topic="ActiveMQ.Advisory.>" read="{both}" write="{both}" '
        f'admin="{both}"/>',
    ]
    for c in collectives:
        lines += [
            f'<authorizationEntry topic={q(c + ".*.agent")} read="{nodes_g}" write="{clients_g}" '
            f'admin="{both}"/>',
            f'<authorizationEntry queue={q(c + ".nodes")} read="{nodes_g}" write="{clients_g}" '
            f'admin="{both}"/>',
            f'<authorizationEntry topic={q(c + ".registration.agent")} read="{clients_g}" '
            f'write="{nodes_g}" admin="{both}"/>',
        ]
        for login in clients:
            group = f"client-{login}"
            lines.append(f'<authorizationEntry queue={q(f"{c}.reply.{login}.*")} '
                         f'read={q(group)} write="{nodes_g}" admin={q(f"{nodes_g},{group}")}/>')
    return groups, "\n".join(lines)


class ActiveMQError(RuntimeError):
    """The private broker could not be started."""


class ActiveMQServer:
    """A private ActiveMQ Classic broker with one STOMP connector on 127.0.0.1.

    ``start()`` takes a few seconds of JVM start-up (see ``start_seconds``; about 5 s on
    2 CPUs). One user (``collective`` by default) with a generated password.
    """

    def __init__(self, *, user: str = "collective", start_timeout: float = 90.0,
                 base_dir: str | Path | None = None, keep_base_dir: bool = False,
                 users: dict[str, str] | None = None, authorization: str | None = None) -> None:
        """:param users: more logins, each ``login -> groups`` (a password is generated:
            :attr:`passwords`)
        :param authorization: ``authorizationEntry`` elements; with them an
            ``authorizationPlugin`` is on and ``user`` (group ``collective``) needs its own
            entries (see :func:`collective_authorization`)
        """
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.users = dict(users or {})
        self.passwords = {login: secrets.token_urlsafe(18) for login in self.users}
        self.authorization = authorization
        self.start_timeout = start_timeout
        self._given_base = Path(base_dir) if base_dir else None
        self.keep_base_dir = keep_base_dir
        self.base_dir: Path | None = None
        self.home: Path | None = None
        self.stomp_port = 0
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._server_log: Any = None

    # -- files ---------------------------------------------------------------------
    @property
    def conf_dir(self) -> Path:
        assert self.base_dir is not None, "start() first"
        return self.base_dir / "conf"

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None, "start() first"
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None, "start() first"
        return self.base_dir / "broker.out"

    def activemq_xml(self) -> str:
        """The broker configuration: STOMP on 127.0.0.1 only, no JMX, no persistence."""
        data = str(self.data_dir)
        extra_users = "\n".join(
            f"          <authenticationUser username={quoteattr(login)} "
            f"password={quoteattr(self.passwords[login])} groups={quoteattr(groups)}/>"
            for login, groups in self.users.items())
        authorization = ""
        if self.authorization:
            authorization = ("      <authorizationPlugin><map><authorizationMap>"
                             "<authorizationEntries>\n" + self.authorization +
                             "\n      </authorizationEntries></authorizationMap></map>"
                             "</authorizationPlugin>")
        # Broker child elements in alphabetical order (the 5.x schema wants that).
        return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- private test broker written by collective.testing.activemq -->
<beans xmlns="http://www.springframework.org/schema/beans"
       xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
       xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
         http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core"
          brokerName="collective-test-{os.getpid()}"
          useJmx="false" persistent="false" schedulerSupport="false"
          useShutdownHook="true" advisorySupport="true"
          dataDirectory={quoteattr(data)} tmpDataDirectory={quoteattr(data + "/tmp")}>
    <managementContext>
      <managementContext createConnector="false"/>
    </managementContext>
    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users>
          <authenticationUser username={quoteattr(self.user)}
                              password={quoteattr(self.password)} groups="collective"/>
{extra_users}
        </users>
      </simpleAuthenticationPlugin>
{authorization}
    </plugins>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="64 mb"/></storeUsage>
        <tempUsage><tempUsage limit="64 mb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{self.stomp_port}?transport.closeAsync=false"/>
    </transportConnectors>
  </broker>
</beans>
"""

    def _write_files(self) -> None:
        conf, data = self.conf_dir, self.data_dir
        for path in (conf, data):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        xml = conf / "activemq.xml"
        fd = os.open(xml, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds the password
        with os.fdopen(fd, "w") as fh:
            fh.write(self.activemq_xml())
        # Debian's ActiveMQ logs through slf4j-log4j12 + log4j 1.2: console only (our log file)
        (conf / "log4j.properties").write_text("\n".join([
            "log4j.rootLogger=INFO, stdout",
            "log4j.logger.org.springframework=WARN",
            "log4j.logger.org.apache.xbean=WARN",
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender",
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout",
            "log4j.appender.stdout.layout.ConversionPattern=%d{ISO8601} %-5p %c{1} - %m%n",
            "",
        ]))

    def command(self) -> list[str]:
        assert self.home is not None and self.base_dir is not None
        java = _find_java()
        assert java is not None
        conf, data = str(self.conf_dir), str(self.data_dir)
        return [
            java, *JVM_OPTS,
            f"-Djava.io.tmpdir={data}/tmp",
            f"-Dactivemq.classpath={conf}",
            f"-Dactivemq.home={self.home}",
            f"-Dactivemq.base={self.base_dir}",
            f"-Dactivemq.conf={conf}",
            f"-Dactivemq.data={data}",
            f"-Dlog4j.configuration=file:{conf}/log4j.properties",
            "-jar", str(self.home / RUN_JAR),
            "start", f"xbean:file:{conf}/activemq.xml",
        ]

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> ActiveMQServer:
        reason = activemq_available()
        if reason:
            raise ActiveMQError(reason)
        if self._proc is not None:
            raise ActiveMQError("already started")
        t0 = time.monotonic()
        self.home = _find_home()
        if self._given_base:
            self._given_base.mkdir(parents=True, exist_ok=True)
            self.base_dir = Path(tempfile.mkdtemp(prefix="activemq-", dir=self._given_base))
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="collective-activemq-"))
        self.stomp_port = free_port()
        self._write_files()
        (self.data_dir / "tmp").mkdir(exist_ok=True)
        try:
            self._start_server()
            self._wait_ready(t0 + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        log.info("private ActiveMQ up in %.1fs (stomp 127.0.0.1:%d, base %s)",
                 self.start_seconds, self.stomp_port, self.base_dir)
        return self

    def _start_server(self) -> None:
        assert self.base_dir is not None
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ACTIVEMQ_", "COLLECTIVE_", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
                                    "JDK_JAVA_OPTIONS", "CLASSPATH"))}
        env["HOME"] = str(self.base_dir)
        self._server_log = open(self.log_file, "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self.command(), env=env, cwd=str(self.base_dir),
            stdin=subprocess.DEVNULL, stdout=self._server_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_ready(self, deadline: float) -> None:
        """Until a STOMP CONNECT with our credentials is answered with CONNECTED."""
        assert self._proc is not None
        last = "port closed"
        while True:
            if self._proc.poll() is not None:
                raise ActiveMQError(
                    f"ActiveMQ exited with {self._proc.returncode} during start-up; "
                    f"last output:\n{self.log_tail()}")
            if port_open(self.stomp_port):
                why = stomp_login(self.stomp_port, self.user, self.password)
                if why is None:
                    return
                last = why
            if time.monotonic() > deadline:
                raise ActiveMQError(
                    f"ActiveMQ STOMP on 127.0.0.1:{self.stomp_port} did not accept a CONNECT "
                    f"within {self.start_timeout:.0f}s ({last}); last output:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        if self.base_dir is None:
            return ""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    @property
    def pids(self) -> list[int]:
        """PIDs of the processes this object started (the JVM)."""
        return [self._proc.pid] if self._proc is not None else []

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """SIGTERM the JVM's process group (a clean broker shutdown), SIGKILL if needed."""
        proc, self._proc = self._proc, None
        if proc is not None:
            kill_group(proc, term_wait=15.0)
        if self._server_log is not None:
            self._server_log.close()
            self._server_log = None
        if self.base_dir is not None and not self.keep_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def broker_config(self, login: str | None = None) -> dict[str, Any]:
        """The ``broker`` section of a collective config pointing at this broker (logged in
        as ``login``, one of ``users``, when given)."""
        if login is not None:
            return {"flavour": "activemq", "host": "127.0.0.1", "port": self.stomp_port,
                    "user": login, "password": self.passwords[login]}
        return {"flavour": "activemq", "host": "127.0.0.1", "port": self.stomp_port,
                "user": self.user, "password": self.password}

    def __enter__(self) -> ActiveMQServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ActiveMQServer(stomp=127.0.0.1:{self.stomp_port}, running={self.running})"
