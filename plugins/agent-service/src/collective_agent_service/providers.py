"""Service providers: how one init system maps the agent's actions to argument lists
and interprets their exit codes.

- :class:`SystemdProvider` runs ``systemctl ACTION -- NAME`` (``is-active``,
  ``is-enabled``, ``show --property=LoadState``); ``is-active`` prints ``active``
  (exit 0) or ``inactive``/``failed`` (exit 3).
- :class:`SysvProvider` runs ``service NAME ACTION`` for ``/etc/init.d/NAME`` and
  reads ``status`` with the LSB exit codes (0 running; 1, 2, 3 stopped; 4
  unknown); ``enable``/``disable`` use ``update-rc.d``, and "enabled" means an
  ``S??NAME`` link in ``/etc/rc[2345].d``.

``plugins.service.provider`` picks one: ``systemd``, ``sysv`` or ``auto``
(systemd when ``/run/systemd/system`` exists, as ``sd_booted(3)`` checks, else
sysv). Commands always run as argument lists, never through a shell, with the
service name after ``--`` where the tool supports it, a timeout, stdin from
``/dev/null`` and output to a temporary file (a daemon that keeps inherited
pipes open cannot hang the agent). Service names are checked again here
against the same allow-list as the DDL's ``service_name`` format, because the
``service()`` data plugin calls providers without the DDL in between.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "PROVIDERS",
    "RUNNING",
    "STOPPED",
    "UNKNOWN",
    "Completed",
    "NoSuchService",
    "Provider",
    "ServiceError",
    "SystemdProvider",
    "SysvProvider",
    "ToolNotFound",
    "check_name",
    "detect",
    "provider_for",
]

RUNNING, STOPPED, UNKNOWN = "running", "stopped", "unknown"
#: ``collective.formats.SERVICE_NAME_RE``: no leading ``-``, no ``/``, no shell characters.
SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._+:-]{0,254}", re.ASCII)
#: At most this much of a command's output is read.
MAX_OUTPUT = 64 * 1024
#: The directory that means "systemd is the running init" (``sd_booted(3)``).
SYSTEMD_RUNTIME_DIR = "/run/systemd/system"


class ServiceError(Exception):
    """The action could not be done; the agent turns it into status 1 (Request Aborted)."""


class ToolNotFound(ServiceError):
    """``systemctl``, ``service`` or ``update-rc.d`` is not installed here."""


class NoSuchService(ServiceError):
    """The init system does not know the service."""


@dataclass(frozen=True)
class Completed:
    """A finished command: its argv, exit status and (at most 64 KiB of) output."""

    argv: tuple[str, ...]
    returncode: int
    output: str

    def last_line(self) -> str:
        """The last non-empty output line (the usual place of the error), or ''."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def first_word(self) -> str:
        words = self.output.split()
        return words[0] if words else ""


def check_name(name: object) -> str:
    """Return ``name`` if it is an acceptable service name, else raise :class:`ValueError`."""
    if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
        raise ValueError(f"invalid service name {str(name)[:60]!r}: use letters, digits and "
                         "@._+:- starting with a letter or digit, at most 255 characters")
    return name


def find_tool(setting: object, default: str) -> str:
    """The absolute path of a tool: ``setting`` (an absolute path, or a name looked up
    on ``PATH``) or ``default`` looked up on ``PATH``.

    :raises ToolNotFound: "<tool> not found on this node"
    """
    candidate = setting if isinstance(setting, str) and setting else default
    if "/" in candidate:
        if os.path.isabs(candidate) and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        raise ToolNotFound(f"{candidate} not found on this node")
    found = shutil.which(candidate)
    if not found:
        raise ToolNotFound(f"{candidate} not found on this node")
    return os.path.abspath(found)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # Untranslated, uncoloured, unpaged output that the parsers below understand.
    env.update(LC_ALL="C", LANG="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
    return env


def run(argv: list[str], timeout: float) -> Completed:
    """Run ``argv`` (never a shell) and wait at most ``timeout`` seconds.

    The command gets its own session so that, on timeout, it and whatever it
    started in its process group are killed. Daemons it starts keep running:
    they detach into their own session, as init scripts make them.

    :raises ToolNotFound: when ``argv[0]`` does not exist
    :raises ServiceError: on timeout or when it cannot be started
    """
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=_environment(),
                                    start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise ToolNotFound(f"{argv[0]} not found on this node") from None
        except OSError as exc:
            raise ServiceError(f"could not run {argv[0]}: {exc.strerror or exc}") from None
        try:
            returncode = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait()
            raise ServiceError(f"{' '.join(argv)} did not finish within {timeout:.0f}s and was "
                               "killed") from None
        out.seek(0)
        data = out.read(MAX_OUTPUT)
    return Completed(tuple(argv), returncode, data.decode("utf-8", "replace"))


class Provider:
    """Base class: one init system.

    :param settings: the ``plugins.service`` config section
    :param timeout: seconds all commands of one action may take together
    """

    #: the value of ``plugins.service.provider`` that selects it
    name: ClassVar[str] = ""
    #: how often :meth:`wait_for` asks for the status
    poll_interval: ClassVar[float] = 0.2

    def __init__(self, settings: Mapping[str, Any] | None = None, timeout: float = 50.0) -> None:
        self.settings = dict(settings or {})
        self.deadline = time.monotonic() + timeout
        #: seconds one command may take (``plugins.service.command_timeout``, default 45)
        self.command_timeout = float(self.settings.get("command_timeout", 45))

    # -- running commands --------------------------------------------------------------
    def run(self, argv: list[str]) -> Completed:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceError("the action ran out of time before " + " ".join(argv))
        return run(argv, min(self.command_timeout, remaining))

    def must(self, argv: list[str], what: str) -> Completed:
        """Run ``argv``; a non-zero exit raises :class:`ServiceError` naming ``what``."""
        done = self.run(argv)
        if done.returncode != 0:
            detail = done.last_line() or "no output"
            raise ServiceError(f"{what} failed with exit status {done.returncode}: {detail}")
        return done

    # -- what every provider implements ----------------------------------------------
    def check(self, service: str) -> None:
        """Raise :class:`ToolNotFound` or :class:`NoSuchService` unless ``service`` can be managed."""
        raise NotImplementedError

    def status(self, service: str) -> str:
        """``running``, ``stopped`` or ``unknown``."""
        raise NotImplementedError

    def start(self, service: str) -> None:
        raise NotImplementedError

    def stop(self, service: str) -> None:
        raise NotImplementedError

    def restart(self, service: str) -> None:
        raise NotImplementedError

    def enable(self, service: str) -> None:
        raise ServiceError(f"the {self.name} provider cannot enable services")

    def disable(self, service: str) -> None:
        raise ServiceError(f"the {self.name} provider cannot disable services")

    def enabled(self, service: str) -> str:
        """Whether it starts at boot: ``enabled``, ``disabled`` (systemd may say
        ``static``, ``masked``, ...) or ``unknown``."""
        return UNKNOWN

    # -- shared ----------------------------------------------------------------------
    def wait_for(self, service: str, want: str, settle: float) -> str:
        """Ask for the status until it is ``want`` or ``settle`` seconds passed; return the last."""
        deadline = min(time.monotonic() + settle, self.deadline)
        while True:
            current = self.status(service)
            if current == want or time.monotonic() + self.poll_interval > deadline:
                return current
            time.sleep(self.poll_interval)


class SystemdProvider(Provider):
    """``systemctl``; ``plugins.service.systemctl`` names another binary (path or name)."""

    name = "systemd"
    #: ``is-active`` answers meaning the unit is up / down
    ACTIVE = frozenset({"active", "reloading", "refreshing"})
    INACTIVE = frozenset({"inactive", "failed", "dead", "deactivating"})

    @property
    def systemctl(self) -> str:
        return find_tool(self.settings.get("systemctl"), "systemctl")

    def check(self, service: str) -> None:
        check_name(service)
        done = self.must([self.systemctl, "show", "--property=LoadState", "--", service],
                         f"systemctl show {service}")
        state = ""
        for line in done.output.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "LoadState":
                state = value.strip()
        if state == "not-found":
            raise NoSuchService(f"service {service} not found on this node")

    def status(self, service: str) -> str:
        check_name(service)
        done = self.run([self.systemctl, "is-active", "--", service])
        word = done.first_word()
        if done.returncode == 0 and word in self.ACTIVE | {""}:
            return RUNNING
        if word in self.INACTIVE or (done.returncode == 3 and word in ("", "unknown")):
            return STOPPED
        return UNKNOWN

    def _act(self, action: str, service: str) -> None:
        check_name(service)
        self.must([self.systemctl, action, "--", service], f"systemctl {action} {service}")

    def start(self, service: str) -> None:
        self._act("start", service)

    def stop(self, service: str) -> None:
        self._act("stop", service)

    def restart(self, service: str) -> None:
        self._act("restart", service)

    def enable(self, service: str) -> None:
        self._act("enable", service)

    def disable(self, service: str) -> None:
        self._act("disable", service)

    def enabled(self, service: str) -> str:
        check_name(service)
        word = self.run([self.systemctl, "is-enabled", "--", service]).first_word()
        return word if re.fullmatch(r"[a-z][a-z-]{0,30}", word) else UNKNOWN


class SysvProvider(Provider):
    """``service NAME ACTION`` for scripts in ``/etc/init.d``; ``update-rc.d`` for enable/disable.

    ``plugins.service.service`` and ``plugins.service.update_rc_d`` name other
    binaries. ``service`` (init-system-helpers) runs the script with a clean
    environment, as at boot.
    """

    name = "sysv"
    INIT_DIR = Path("/etc/init.d")
    RC_ROOT = Path("/etc")
    #: runlevels whose ``S`` links mean "enabled" (Debian's multi-user levels)
    RUNLEVELS = ("2", "3", "4", "5")

    @property
    def service_command(self) -> str:
        return find_tool(self.settings.get("service"), "service")

    @property
    def update_rc_d(self) -> str:
        return find_tool(self.settings.get("update_rc_d"), "update-rc.d")

    def script(self, service: str) -> Path:
        return self.INIT_DIR / check_name(service)

    def check(self, service: str) -> None:
        self.service_command  # noqa: B018 - raises ToolNotFound when missing
        script = self.script(service)
        if not (script.is_file() and os.access(script, os.X_OK)):
            raise NoSuchService(f"service {service} not found on this node (no {script})")

    def status(self, service: str) -> str:
        done = self.run([self.service_command, check_name(service), "status"])
        if done.returncode == 0:
            return RUNNING
        if done.returncode in (1, 2, 3):  # LSB: dead with pid file, dead with lock, not running
            return STOPPED
        return UNKNOWN

    def _act(self, action: str, service: str) -> None:
        self.must([self.service_command, check_name(service), action], f"service {service} {action}")

    def start(self, service: str) -> None:
        self._act("start", service)

    def stop(self, service: str) -> None:
        self._act("stop", service)

    def restart(self, service: str) -> None:
        self._act("restart", service)

    def links(self, service: str, runlevels: str = "S0123456") -> list[str]:
        """``[SK]NNname`` links to the script in ``/etc/rcN.d`` for the given runlevels."""
        pattern = re.compile(r"[SK][0-9]{2}" + re.escape(check_name(service)))
        found: list[str] = []
        for level in runlevels:
            directory = self.RC_ROOT / f"rc{level}.d"
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            found.extend(str(directory / n) for n in sorted(names) if pattern.fullmatch(n))
        return found

    def enabled(self, service: str) -> str:
        starts = [p for p in self.links(service, "".join(self.RUNLEVELS))
                  if os.path.basename(p).startswith("S")]
        return "enabled" if starts else "disabled"

    def enable(self, service: str) -> None:
        tool = self.update_rc_d
        name = check_name(service)
        if not self.links(service):  # never installed: create the links from the LSB header
            self.must([tool, name, "defaults"], f"update-rc.d {name} defaults")
        self.must([tool, name, "enable"], f"update-rc.d {name} enable")

    def disable(self, service: str) -> None:
        tool = self.update_rc_d
        name = check_name(service)
        if not self.links(service):  # no links: it never starts at boot already
            return
        self.must([tool, name, "disable"], f"update-rc.d {name} disable")


#: ``plugins.service.provider`` values.
PROVIDERS: dict[str, type[Provider]] = {"systemd": SystemdProvider, "sysv": SysvProvider}


def detect(runtime_dir: str = SYSTEMD_RUNTIME_DIR) -> str:
    """``systemd`` when systemd is the running init, else ``sysv``."""
    return "systemd" if os.path.isdir(runtime_dir) else "sysv"


def provider_for(settings: Mapping[str, Any] | None, timeout: float) -> Provider:
    """The provider named by ``settings["provider"]`` (default ``auto``).

    :raises ServiceError: for an unknown provider name
    """
    settings = dict(settings or {})
    name = settings.get("provider", "auto") or "auto"
    if name == "auto":
        name = detect()
    if name not in PROVIDERS:
        raise ServiceError(f"unknown service provider {name!r} in plugins.service.provider "
                           f"(use {', '.join(sorted(PROVIDERS))} or auto)")
    return PROVIDERS[name](settings, timeout)
