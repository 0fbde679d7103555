"""Test harness: a private ``puppetserver`` on 127.0.0.1 and puppet agent nodes that use it.

Shared by this distribution's tests and ``tests/test_puppet_e2e.py``; nothing runs at
import and only the standard library is imported here (PyYAML inside functions).

:class:`PuppetServer` starts Debian's ``puppetserver`` jar directly with ``java`` (the
``/usr/bin/puppetserver`` wrapper switches to the ``puppet`` user and reads
``/etc/default/puppetserver``), with every directory in a temporary base: its own
``conf.d`` (webserver bound to 127.0.0.1 on a free port), ``services.d``, confdir,
codedir, vardir, rundir, logdir and ssldir. The CA and the server certificate
(certname ``localhost``) are made on the first start; agents are autosigned. The
system puppetserver service and ``/etc/puppet`` are never touched.

:class:`PuppetNode` is one agent: a confdir with a ``puppet.conf`` whose ssldir,
vardir, rundir, logdir and publicdir are all inside it (Debian's default publicdir,
``/var/cache/puppet/public``, holds ``last_run_summary.yaml`` and would be shared by
every node), pointing at the server.

:func:`shared_server` gives one server per pytest session: the plugin tests' conftest
and the end-to-end test both ask it, and the first caller pays for the start (20-60 s
on a busy 2-core machine) and for one warm-up agent run (about 5 s).

Measured while building this: with HTTP keep-alive, a puppet 7.23 agent's first
certificate download from puppetserver 7.9 waits about 30 s on the cached connection, so
test nodes set ``http_keepalive_timeout = 0``; later runs take 3-5 s each.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Debian's puppetserver (package ``puppetserver``)
PUPPETSERVER_JAR = Path("/usr/share/puppetserver/puppetserver.jar")
PUPPETSERVER_ETC = Path("/etc/puppet/puppetserver")
PUPPETSERVER_RUBY = Path("/usr/lib/puppetserver/ruby/vendor_ruby")
PUPPETSERVER_GEMS = Path("/usr/lib/puppetserver/vendored-jruby-gems")
JRUBY_LIB = Path("/usr/share/jruby/lib")
#: conf.d files copied as they are from the package
COPIED_CONF = ("auth.conf", "ca.conf", "web-routes.conf")

_counter = itertools.count(1)


def puppet_problem() -> str | None:
    """None when the real puppet agent is usable here, else why not."""
    if shutil.which("puppet") is None:
        return "the puppet command is not installed (Debian package puppet; scripts/system-deps.sh)"
    return None


def puppetserver_problem() -> str | None:
    """None when a private puppetserver can be started here, else why not."""
    problem = puppet_problem()
    if problem:
        return problem
    if not PUPPETSERVER_JAR.is_file():
        return f"{PUPPETSERVER_JAR} is missing (Debian package puppetserver; scripts/system-deps.sh)"
    if shutil.which("java") is None:
        return "java is not installed (the puppetserver package depends on it)"
    for name in COPIED_CONF:
        if not (PUPPETSERVER_ETC / "conf.d" / name).is_file():
            return f"{PUPPETSERVER_ETC / 'conf.d' / name} is missing (reinstall puppetserver)"
    if not any((PUPPETSERVER_ETC / "services.d").glob("*.cfg")):
        return f"{PUPPETSERVER_ETC / 'services.d'} has no bootstrap files (reinstall puppetserver)"
    return None


def _free_port() -> int:
    from collective.testing.processes import free_port

    return free_port()


class PuppetServerError(RuntimeError):
    """The private puppetserver could not be started or used."""


class PuppetServer:
    """A private puppetserver on ``127.0.0.1:port`` with its own CA.

    ``start()`` blocks until ``/status/v1/simple`` answers ``running`` and sets
    :attr:`start_seconds`; :meth:`warm_up` runs one agent against it and sets
    :attr:`warm_up_seconds`.

    :param start_timeout: seconds to wait for the server to answer (under pytest-timeout's
        300 s for the test whose setup starts it, with the warm-up run)
    :param heap: the JVM's ``-Xmx``
    """

    def __init__(self, base_dir: str | Path | None = None, start_timeout: float = 200.0,
                 heap: str = "512m", keep_base_dir: bool = False) -> None:
        self._given_base = Path(base_dir) if base_dir else None
        self.start_timeout = start_timeout
        self.heap = heap
        self.keep_base_dir = keep_base_dir
        self.base: Path | None = None
        self.port = 0
        self.start_seconds: float | None = None
        self.warm_up_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Any = None
        self._certnames: set[str] = set()

    # -- layout --------------------------------------------------------------------------
    @property
    def confdir(self) -> Path:
        assert self.base is not None, "start() first"
        return self.base / "confdir"

    @property
    def codedir(self) -> Path:
        return self.confdir / "code"

    @property
    def manifest(self) -> Path:
        """``site.pp`` of the ``production`` environment (re-read on every compile)."""
        return self.codedir / "environments" / "production" / "manifests" / "site.pp"

    @property
    def log_file(self) -> Path:
        assert self.base is not None
        return self.base / "logdir" / "puppetserver.log"

    def _write_files(self) -> None:
        base = self.base
        assert base is not None
        for sub in ("conf.d", "services.d", "confdir", "vardir", "rundir", "logdir", "gems", "tmp",
                    "confdir/code/environments/production/manifests"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        conf = base / "conf.d"
        for name in COPIED_CONF:
            shutil.copy(PUPPETSERVER_ETC / "conf.d" / name, conf / name)
        for cfg in (PUPPETSERVER_ETC / "services.d").glob("*.cfg"):
            shutil.copy(cfg, base / "services.d" / cfg.name)
        (conf / "puppetserver.conf").write_text(
            "jruby-puppet: {\n"
            f"  ruby-load-path: [\"{PUPPETSERVER_RUBY}\"]\n"
            f"  gem-home: \"{base / 'gems'}\"\n"
            f"  gem-path: [\"{base / 'gems'}\", \"{PUPPETSERVER_GEMS}\"]\n"
            f"  server-conf-dir: \"{self.confdir}\"\n"
            f"  server-code-dir: \"{self.codedir}\"\n"
            f"  server-var-dir: \"{base / 'vardir'}\"\n"
            f"  server-run-dir: \"{base / 'rundir'}\"\n"
            f"  server-log-dir: \"{base / 'logdir'}\"\n"
            "  max-active-instances: 1\n"
            "}\n"
            "http-client: {}\n"
            "profiler: { enabled: false }\n"
            # no phoning home from a test server
            "product: { check-for-updates: false }\n"
            "dropsonde: { enabled: false }\n")
        (conf / "webserver.conf").write_text(
            "webserver: {\n  client-auth: want\n  ssl-host: 127.0.0.1\n"
            f"  ssl-port: {self.port}\n}}\n")
        (conf / "global.conf").write_text(f"global: {{ logging-config: \"{base / 'logback.xml'}\" }}\n")
        (conf / "metrics.conf").write_text(
            "metrics: { server-id: localhost, registries: { puppetserver: "
            "{ reporters: { jmx: { enabled: false } } } } }\n")
        (base / "logback.xml").write_text(
            "<configuration scan=\"false\">\n"
            "  <appender name=\"F\" class=\"ch.qos.logback.core.FileAppender\">\n"
            f"    <file>{self.log_file}</file>\n"
            "    <encoder><pattern>%d %-5p [%c{2}] %m%n</pattern></encoder>\n"
            "  </appender>\n"
            "  <root level=\"info\"><appender-ref ref=\"F\"/></root>\n"
            "</configuration>\n")
        (self.confdir / "puppet.conf").write_text(
            "[main]\n"
            "certname = localhost\n"
            f"ssldir = {self.confdir / 'ssl'}\n"
            f"vardir = {base / 'vardir'}\n"
            f"logdir = {base / 'logdir'}\n"
            f"rundir = {base / 'rundir'}\n"
            f"codedir = {self.codedir}\n"
            "[server]\n"
            "autosign = true\n"
            "environment_timeout = 0\n"
            # reports stay on the agents (their last_run_report.yaml)
            "reports = none\n")
        if not self.manifest.exists():
            self.manifest.write_text("node default { }\n")

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> PuppetServer:
        problem = puppetserver_problem()
        if problem:
            raise PuppetServerError(problem)
        if self._proc is not None:
            raise PuppetServerError("already started")
        t0 = time.monotonic()
        if self._given_base is not None:
            self._given_base.mkdir(parents=True, exist_ok=True)
            self.base = Path(tempfile.mkdtemp(prefix="puppetserver-", dir=self._given_base))
        else:
            self.base = Path(tempfile.mkdtemp(prefix="collective-puppetserver-"))
        self.port = _free_port()
        self._write_files()
        argv = [
            shutil.which("java") or "java", "-Xms256m", f"-Xmx{self.heap}", "-XX:+UseSerialGC",
            # C1 only: start-up and the first compiles matter more than peak speed here
            "-XX:TieredStopAtLevel=1", "-XX:+CrashOnOutOfMemoryError",
            f"-XX:ErrorFile={self.base / 'logdir' / 'java_err_pid%p.log'}",
            f"-Djava.io.tmpdir={self.base / 'tmp'}",
            "-Djruby.logger.class=com.puppetlabs.jruby_utils.jruby.Slf4jLogger",
            f"-Djruby.lib={JRUBY_LIB}",
            "-jar", str(PUPPETSERVER_JAR),
            "--config", str(self.base / "conf.d"),
            "--bootstrap-config", str(self.base / "services.d"),
            "--restart-file", str(self.base / "rundir" / "restart"),
        ]
        self._out = open(self.base / "logdir" / "stdout.log", "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAVA_", "_JAVA", "JDK_"))}
        env["HOME"] = str(self.base)
        try:
            self._proc = subprocess.Popen(argv, cwd=str(self.base), env=env,
                                          stdin=subprocess.DEVNULL, stdout=self._out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            self._wait_ready(t0 + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        log.info("private puppetserver up in %.1fs on 127.0.0.1:%d (base %s)", self.start_seconds,
                 self.port, self.base)
        return self

    def _probe(self) -> str | None:
        # The CA is made during start-up, so there is nothing to verify against yet: this
        # readiness probe (and only it) does not verify the certificate.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/status/v1/simple",
                                        context=context, timeout=5) as response:
                return response.read().decode("utf-8", "replace").strip()
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise PuppetServerError(f"puppetserver exited with {self._proc.returncode} during "
                                        f"start-up; last output:\n{self.log_tail()}")
            if self._probe() == "running":
                return
            if time.monotonic() > deadline:
                raise PuppetServerError(f"puppetserver on 127.0.0.1:{self.port} not running after "
                                        f"{self.start_timeout:.0f}s; last output:\n{self.log_tail()}")
            time.sleep(0.5)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """Stop the JVM (SIGTERM, then SIGKILL to its process group) and remove the base."""
        from collective.testing.processes import kill_group

        proc, self._proc = self._proc, None
        if proc is not None:
            kill_group(proc, term_wait=20.0)
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.base is not None and not self.keep_base_dir:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PuppetServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        if self.base is None:
            return ""
        out: list[str] = []
        for path in (self.base / "logdir" / "stdout.log", self.log_file):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"--- {path.name}")
            out.extend(text[-lines:])
        return "\n".join(out)

    # -- catalogs and nodes ----------------------------------------------------------------
    def write_manifest(self, text: str) -> None:
        """Replace ``site.pp``; the next compile uses it (``environment_timeout = 0``)."""
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.manifest)

    def compiled(self) -> list[tuple[datetime.datetime, str]]:
        """``(when, certname)`` of every "Compiled catalog" line in the server's log."""
        found = []
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return []
        for match in re.finditer(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Compiled catalog for "
                                 r"(\S+) in environment", text, re.MULTILINE):
            when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found.append((when, match.group(2)))
        return found

    def node(self, directory: str | Path, certname: str | None = None) -> PuppetNode:
        """A new agent node in ``directory`` (its confdir); certnames are unique per server."""
        certname = certname or f"node-{os.getpid()}-{next(_counter)}"
        if certname in self._certnames:
            raise PuppetServerError(f"certname {certname} is already used on this server")
        self._certnames.add(certname)
        return PuppetNode(Path(directory), certname, self.port)

    def warm_up(self, directory: str | Path | None = None) -> float:
        """One agent run against the server, so that no test pays for the server's first
        catalog compile (JRuby warm-up); returns and records its seconds (about 5 s here,
        the new node's certificate included)."""
        assert self.base is not None, "start() first"
        node = self.node(Path(directory) if directory else self.base / "warm-up-node",
                         f"warm-up-{os.getpid()}-{next(_counter)}")
        t0 = time.monotonic()
        proc = node.run_agent(timeout=90.0)
        self.warm_up_seconds = time.monotonic() - t0
        if proc.returncode not in (0, 2):
            raise PuppetServerError(f"warm-up agent run failed ({proc.returncode}):\n"
                                    f"{proc.stdout[-3000:]}\n{self.log_tail()}")
        return self.warm_up_seconds

    def __repr__(self) -> str:
        return f"PuppetServer(127.0.0.1:{self.port}, running={self.running})"


def site_manifest(directory: str | Path, token: str, failing: tuple[str, ...] = ()) -> str:
    """A ``site.pp`` giving every node one file resource, ``DIRECTORY/<certname>.txt`` with
    the content ``TOKEN <certname>``, and the nodes named in ``failing`` also an ``exec``
    of ``/bin/false`` (a resource that fails)."""
    if any(c in str(directory) + token for c in "\"'$\\\n"):
        raise ValueError("directory and token must not need quoting in Puppet")
    names = ", ".join(f"'{name}'" for name in failing)
    return (
        "node default {\n"
        f"  file {{ \"{directory}/${{trusted['certname']}}.txt\":\n"
        f"    content => \"{token} ${{trusted['certname']}}\\n\",\n"
        "  }\n"
        f"  if $trusted['certname'] in [{names}] {{\n"
        "    exec { 'collective-test-fail': command => '/bin/false' }\n"
        "  }\n"
        "}\n")


def load_ruby_yaml(text: str) -> Any:
    """YAML that Ruby wrote (``!ruby/object:Puppet::Transaction::Report`` tags become
    plain mappings)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct(loader: Any, suffix: str, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    Loader.add_multi_constructor("!ruby/", construct)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def iso_seconds(value: Any) -> float:
    """Unix seconds of a Puppet report time (``2026-12-01T21:54:56.966352287+00:00``)."""
    return datetime.datetime.fromisoformat(str(value)).timestamp()


class PuppetNode:
    """A puppet agent whose every directory is inside ``confdir``.

    :param confdir: the agent's ``--confdir``; ``puppet.conf`` is written there
    :param certname: its certificate name on the server
    :param port: the server's port (the server is ``localhost``, its certname)
    """

    def __init__(self, confdir: Path, certname: str, port: int, server: str = "localhost") -> None:
        self.confdir = confdir
        self.certname = certname
        self.port = port
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.write_conf(server=server, port=port)

    def write_conf(self, server: str = "localhost", port: int | None = None) -> None:
        c = self.confdir
        (c / "puppet.conf").write_text(
            "[main]\n"
            f"certname = {self.certname}\n"
            f"server = {server}\n"
            f"serverport = {port if port is not None else self.port}\n"
            f"ssldir = {c / 'ssl'}\n"
            f"vardir = {c / 'var'}\n"
            f"rundir = {c / 'run'}\n"
            f"logdir = {c / 'log'}\n"
            f"publicdir = {c / 'public'}\n"
            # puppet 7.23 against puppetserver 7.9: with keep-alive the agent's first
            # certificate download waits ~30 s on the cached connection
            "http_keepalive_timeout = 0\n"
            "[agent]\n"
            "splay = false\n")

    # -- the files puppet keeps (what the agent reads) -------------------------------------
    @property
    def lastrunfile(self) -> Path:
        return self.confdir / "public" / "last_run_summary.yaml"

    @property
    def lastrunreport(self) -> Path:
        return self.confdir / "var" / "state" / "last_run_report.yaml"

    @property
    def run_lock(self) -> Path:
        return self.confdir / "var" / "state" / "agent_catalog_run.lock"

    @property
    def disabled_lock(self) -> Path:
        return self.confdir / "var" / "state" / "agent_disabled.lock"

    @property
    def pidfile(self) -> Path:
        return self.confdir / "run" / "agent.pid"

    @property
    def resourcefile(self) -> Path:
        return self.confdir / "var" / "state" / "resources.txt"

    def plugin_config(self, **extra: Any) -> dict[str, Any]:
        """``plugins.puppet`` for a collective node managing this puppet agent."""
        return {"confdir": str(self.confdir), **extra}

    def explicit_paths(self) -> dict[str, str]:
        """The ``paths`` override (no ``puppet config print`` needed)."""
        return {"lastrunfile": str(self.lastrunfile), "lastrunreport": str(self.lastrunreport),
                "agent_catalog_run_lockfile": str(self.run_lock),
                "agent_disabled_lockfile": str(self.disabled_lock), "pidfile": str(self.pidfile),
                "resourcefile": str(self.resourcefile), "logdir": str(self.confdir / "log")}

    # -- running the real agent directly ---------------------------------------------------
    def agent_argv(self, *extra: str) -> list[str]:
        return [shutil.which("puppet") or "puppet", "agent", "--confdir", str(self.confdir),
                "--onetime", "--no-daemonize", "--detailed-exitcodes", "--color=false",
                "--verbose", *extra]

    def run_agent(self, *extra: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """``puppet agent --onetime --no-daemonize --detailed-exitcodes`` in the foreground."""
        return subprocess.run(self.agent_argv(*extra), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)

    def start_daemon(self) -> subprocess.Popen[bytes]:
        """``puppet agent --no-daemonize``: the daemon in the foreground (it writes its pid
        file and runs once at start, then every day; SIGUSR1 starts a run at once)."""
        log_file = open(self.confdir / "daemon.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                [shutil.which("puppet") or "puppet", "agent", "--confdir", str(self.confdir),
                 "--no-daemonize", "--runinterval", "1d", "--color=false", "--verbose"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log_file.close()

    @staticmethod
    def stop_daemon(proc: subprocess.Popen[bytes]) -> None:
        from collective.testing.processes import kill_group

        kill_group(proc)

    def summary(self) -> dict[str, Any] | None:
        """``last_run_summary.yaml``, or None before the first run."""
        import yaml

        try:
            data = yaml.safe_load(self.lastrunfile.read_text())
        except OSError:
            return None
        return data if isinstance(data, dict) else None

    def lastrun(self) -> int:
        summary = self.summary() or {}
        return int((summary.get("time") or {}).get("last_run") or 0)

    def report(self) -> dict[str, Any] | None:
        """``last_run_report.yaml`` as a mapping, or None."""
        try:
            data = load_ruby_yaml(self.lastrunreport.read_text())
        except OSError:
            return None
        return data if isinstance(data, dict) else None

    def run_interval(self) -> tuple[float, float]:
        """When the last run began and ended (report start time; its last log line)."""
        report = self.report() or {}
        start = iso_seconds(report["time"])
        ends = [iso_seconds(item["time"]) for item in report.get("logs") or [] if item.get("time")]
        return start, max(ends) if ends else start

    def applying_pid(self) -> int | None:
        """The pid in the run lock if that process is alive."""
        try:
            pid = int(self.run_lock.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def wait_for_run(self, after: int, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until a run that ended at or after ``after`` (unix seconds) is recorded and
        no run holds the lock; return the summary."""
        deadline = time.monotonic() + timeout
        while True:
            if self.lastrun() >= after and self.applying_pid() is None:
                return self.summary() or {}
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.certname}: no completed run since {after} within "
                                   f"{timeout}s (lastrun {self.lastrun()})")
            time.sleep(0.2)

    def puppet_pids(self) -> list[int]:
        """Live processes whose command line names this node's confdir."""
        needle = str(self.confdir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"puppet" in cmdline and needle in cmdline:
                found.append(int(entry.name))
        return found

    def kill_runs(self) -> None:
        """SIGKILL every process of this node (test clean-up)."""
        for pid in self.puppet_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"PuppetNode({self.certname}, {self.confdir})"


# -- one server per pytest session -----------------------------------------------------------

_SHARED: PuppetServer | None = None


def shared_server(pytest_config: Any) -> PuppetServer:
    """The session's puppetserver, started (and warmed up) by the first caller and stopped
    when pytest ends (``pytest_config.add_cleanup``). Missing puppetserver skips locally and
    fails under ``CI=true``."""
    global _SHARED
    from collective.testing import require

    problem = puppetserver_problem()
    require(problem is None, f"puppetserver is not usable: {problem}")
    if _SHARED is None:
        server = PuppetServer()
        try:
            server.start()
            server.warm_up()
        except BaseException:
            server.stop()
            raise
        _SHARED = server
        pytest_config.add_cleanup(_stop_shared)
        pytest_config.pluginmanager.register(_Timings(server), "collective-puppetserver-timings")
    return _SHARED


class _Timings:
    """Prints how long the session's puppetserver took at the end of the pytest run."""

    def __init__(self, server: PuppetServer) -> None:
        self.start_seconds = server.start_seconds
        self.warm_up_seconds = server.warm_up_seconds

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_line(
            f"puppetserver: started in {self.start_seconds:.1f}s, warm-up agent run "
            f"{self.warm_up_seconds:.1f}s")


def _stop_shared() -> None:
    global _SHARED
    server, _SHARED = _SHARED, None
    if server is not None:
        server.stop()
