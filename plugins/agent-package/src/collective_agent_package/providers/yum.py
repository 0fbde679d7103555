"""The dnf and yum providers: ``dnf``/``yum`` for changes, ``rpm -q`` for the database.

``ensure`` is ``[EPOCH:]VERSION-RELEASE`` (the epoch only when it is not 0), ``version``
the upstream VERSION and ``release`` the RELEASE, as MCollective's yum provider reported
them. RPM keeps no configuration-only state, so a package that is not installed is
``absent``, and purge removes like uninstall (Puppet's yum provider does the same).

``check-update`` output is parsed from the documented format: ``NAME.ARCH VERSION REPO``
columns after a header, a long name wrapping its columns onto the next line, and an
``Obsoleting Packages`` section that is not an update list. Exit code 100 means
"updates available", 0 "none", anything else an error (dnf(8), yum(8)).

dnf takes extra options from ``plugins.package.dnf_options``: a list of long options
from an allow-list (:data:`DNF_OPTIONS`), each ``--NAME`` or ``--NAME=VALUE`` and each
passed as one argv element before the verb. ``--installroot=PATH`` (absolute) also makes
every ``rpm`` query read that root (``rpm --root PATH``), so status, count and md5
describe the same database dnf changed. Tests use this to work in a private root.

dnf always runs with ``--setopt=exit_on_lock=True``: without it dnf waits silently and
for ever while another dnf holds its lock (measured with dnf 4.14). With it dnf exits
200 with "... already locked by PID"; the provider retries for ``lock_timeout`` seconds
(default 60) and then replies "could not get the dnf/rpm lock". dnf and rpm accept ``--``
before package names (checked with dnf 4.14 and rpm 4.18).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from .base import CheckUpdates, CommandResult, PackageState, Provider, ProviderError

__all__ = ["DNF_OPTIONS", "DnfProvider", "YumProvider", "parse_check_update", "parse_rpm_query",
           "validate_dnf_options"]

#: ``rpm -q --qf`` format: one tab-separated line per installed instance
RPM_FORMAT = "%{NAME}\t%{EPOCHNUM}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\n"
_HEADER_PREFIXES = ("Last metadata expiration check", "Loaded plugins", "Loading mirror speeds",
                    "Security:", "Updating Subscription Management", "This system is")
_LOCK_MARKERS = ("another app is currently holding the yum lock", "waiting for process with pid",
                 "rpmdb is locked", "can't create transaction lock", "already locked by")
#: dnf's exit code when ``exit_on_lock`` is set and another process holds a dnf lock
DNF_LOCKED_EXIT = 200

#: ``dnf_options`` allow-list: option name -> whether it takes ``=VALUE``
DNF_OPTIONS: dict[str, bool] = {
    "installroot": True, "releasever": True, "setopt": True, "disablerepo": True,
    "enablerepo": True, "repofrompath": True, "repo": True, "config": True,
    "disableplugin": True, "enableplugin": True, "nogpgcheck": False, "noplugins": False,
    "cacheonly": False, "nobest": False,
}
_DNF_OPTION = re.compile(r"--([a-z]+)(?:=([^\x00-\x1f\x7f]+))?", re.ASCII)
_SETOPT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.*-]*=.*", re.ASCII)


def validate_dnf_options(options: Any) -> tuple[list[str], str | None]:
    """``(argv, installroot)`` from ``plugins.package.dnf_options``.

    :raises ProviderError: not a list of strings, an option outside :data:`DNF_OPTIONS`,
        a value missing or given where none belongs, a ``--setopt`` without ``KEY=VALUE``,
        or an ``--installroot`` that is not an absolute path
    """
    if options is None:
        return [], None
    if isinstance(options, str) or not isinstance(options, (list, tuple)):
        raise ProviderError("plugins.package.dnf_options must be a list of options")
    argv: list[str] = []
    root: str | None = None
    for option in options:
        match = _DNF_OPTION.fullmatch(option) if isinstance(option, str) else None
        if match is None or match.group(1) not in DNF_OPTIONS:
            raise ProviderError(f"plugins.package.dnf_options: {option!r} is not an allowed dnf "
                                f"option (allowed: {', '.join('--' + n for n in DNF_OPTIONS)})")
        name, value = match.groups()
        if DNF_OPTIONS[name] != (value is not None):
            need = "needs --NAME=VALUE" if DNF_OPTIONS[name] else "takes no value"
            raise ProviderError(f"plugins.package.dnf_options: --{name} {need}")
        if name == "setopt" and not _SETOPT.fullmatch(value or ""):
            raise ProviderError(f"plugins.package.dnf_options: {option!r} is not --setopt=KEY=VALUE")
        if name == "installroot":
            if not (value or "").startswith("/"):
                raise ProviderError("plugins.package.dnf_options: --installroot needs an absolute path")
            root = value
        argv.append(option)
    return argv, root


def rpm_ensure(epoch: str, version: str, release: str) -> str:
    evr = f"{version}-{release}"
    return evr if epoch in ("", "0", "(none)") else f"{epoch}:{evr}"


def parse_rpm_query(name: str, text: str) -> PackageState:
    """The state of ``name`` from :data:`RPM_FORMAT` lines (the last instance wins, as rpm
    lists them in install order)."""
    rows = [line.split("\t") for line in text.splitlines() if line.count("\t") == 4]
    if not rows:
        return PackageState(name=name, ensure="absent")
    package, epoch, version, release, arch = rows[-1]
    return PackageState(name=package, ensure=rpm_ensure(epoch, version, release), version=version,
                        arch=arch, epoch=epoch if epoch not in ("", "(none)") else "0",
                        release=release)


def parse_check_update(text: str) -> list[dict[str, Any]]:
    """``outdated_packages`` from ``dnf check-update`` / ``yum check-update`` output."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("Obsoleting Packages"):
            break
        if not line.strip() or line.startswith(_HEADER_PREFIXES) or line.startswith(" * "):
            pending = []
            continue
        tokens = pending + line.split()
        if len(tokens) == 1 and "." in tokens[0] and not raw[:1].isspace():
            pending = tokens  # a long NAME.ARCH; its columns follow on the next line
            continue
        pending = []
        if len(tokens) != 3 or "." not in tokens[0]:
            continue
        package, _, arch = tokens[0].rpartition(".")
        out.append({"package": package, "version": tokens[1], "repo": tokens[2], "arch": arch,
                    "current": None})
    return out


def _failure(tool: str, action: str, result: CommandResult) -> ProviderError:
    text = f"{result.stdout}\n{result.stderr}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "no match", "problem"))]
    detail = "; ".join(errors[-3:]) or (lines or ["no output"])[-1]
    held = [line for line in lines if any(marker in line.lower() for marker in _LOCK_MARKERS)]
    if held:
        detail = held[0]
        return ProviderError(f"could not get the {tool}/rpm lock (another package manager is "
                             f"running?): {detail}")
    return ProviderError(f"{tool} {action} failed with exit code {result.exitcode}: {detail}")


class YumProvider(Provider):
    """RHEL 7 and older: yum, rpm."""

    name = "yum"
    #: the front end binary
    command = "yum"
    tools = ("yum", "rpm")
    upgrade_verb = "update"

    def __init__(self, settings: Mapping[str, Any], timeout: float) -> None:
        super().__init__(settings, timeout)
        #: options before the verb of every front-end call
        self.options: list[str] = []
        #: ``rpm --root`` for every query (the front end's ``--installroot``)
        self.root: str | None = None

    def front(self, args: list[str]) -> CommandResult:
        """Run the front end with :attr:`options` before ``args``."""
        return self.run(self.command, [*self.options, *args])

    def rpm(self, args: list[str]) -> CommandResult:
        return self.run("rpm", [*(["--root", self.root] if self.root else []), *args])

    def tool(self, action: str, *args: str) -> CommandResult:
        result = self.front(["-y", action, *args])
        if result.exitcode != 0:
            raise _failure(self.command, action, result)
        return result

    def status(self, package: str) -> PackageState:
        result = self.rpm(["-q", "--qf", RPM_FORMAT, "--", package])
        if result.exitcode not in (0, 1):
            raise ProviderError(f"rpm -q failed with exit code {result.exitcode}: "
                                f"{result.stderr.strip()}")
        return parse_rpm_query(package, result.stdout)

    @staticmethod
    def matches(state: PackageState, version: str) -> bool:
        return version in {state.ensure, state.version, f"{state.version}-{state.release}"}

    def install(self, package: str, version: str | None = None) -> CommandResult | None:
        state = self.status(package)
        if state.installed and (version is None or self.matches(state, version)):
            return None
        # NAME-VERSION[-RELEASE]: dnf moves an installed package up or down to it.
        return self.tool("install", "--", package if version is None else f"{package}-{version}")

    def update(self, package: str) -> CommandResult | None:
        if not self.status(package).installed:
            return self.tool("install", "--", package)
        return self.tool(self.upgrade_verb, "--", package)

    def uninstall(self, package: str) -> CommandResult | None:
        if not self.status(package).installed:
            return None
        return self.tool("remove", "--", package)

    def purge(self, package: str) -> CommandResult | None:
        return self.uninstall(package)

    def installed_packages(self) -> list[str]:
        result = self.rpm(["-qa", "--qf", "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\n"])
        if result.exitcode != 0:
            raise ProviderError(f"rpm -qa failed with exit code {result.exitcode}: "
                                f"{result.stderr.strip()}")
        return [line for line in result.stdout.splitlines() if line.strip()]

    def checkupdates(self) -> CheckUpdates:
        result = self.front(["-q", "check-update"])
        if result.exitcode not in (0, 100):
            raise _failure(self.command, "check-update", result)
        return CheckUpdates(output=result.output, exitcode=result.exitcode,
                            outdated_packages=parse_check_update(result.stdout))

    def clean(self, mode: str) -> CommandResult:
        result = self.front(["clean", mode])
        if result.exitcode != 0:
            raise _failure(self.command, "clean", result)
        return result


class DnfProvider(YumProvider):
    """Fedora, RHEL 8 and later: dnf, rpm."""

    name = "dnf"
    command = "dnf"
    tools = ("dnf", "rpm")
    upgrade_verb = "upgrade"

    def __init__(self, settings: Mapping[str, Any], timeout: float) -> None:
        super().__init__(settings, timeout)
        options, self.root = validate_dnf_options(self.settings.get("dnf_options"))
        self.options = ["--setopt=exit_on_lock=True", *options]
        self.lock_timeout = float(self.settings.get("lock_timeout", 60))

    def front(self, args: list[str]) -> CommandResult:
        """As :meth:`YumProvider.front`, retried while another dnf holds a lock (exit 200,
        "already locked by") until ``lock_timeout`` has passed."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            result = super().front(args)
            locked = result.exitcode == DNF_LOCKED_EXIT and "already locked by" in result.stderr
            if not locked or time.monotonic() >= deadline:
                return result
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
