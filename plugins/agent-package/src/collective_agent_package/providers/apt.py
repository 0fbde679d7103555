"""The apt provider: ``apt-get`` for changes, ``dpkg-query`` for the database.

Every apt-get call gets ``-o APT::Cmd::Pattern-Only=true``: without it apt-get treats a
name it cannot find as a *regular expression* (``apt-get remove e2fsprog.`` removes
``e2fsprogs``, measured on Debian 12's apt 2.6.1), so a valid-looking package name could
select many packages. apt-get also reads a trailing ``-`` on an install argument as
"remove" and a trailing ``+`` on a remove argument as "install" when no package has the
exact name; the DDL refuses a trailing ``-`` and uninstall/purge first check that the
exact name is in the dpkg database, so neither can turn one action into another.

Extra apt configuration comes from ``plugins.package``: ``apt_options`` (a list of
``Key=Value``, each passed as ``-o Key=Value``) and ``apt_config`` (a file, exported as
``APT_CONFIG``). Tests use them to make a local file repository apt's only source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .base import CheckUpdates, CommandResult, PackageState, Provider, ProviderError

__all__ = ["AptProvider", "parse_dpkg_query", "parse_simulation", "split_debian_version"]

#: ``Key=Value`` with an apt configuration key (``Dir::Etc::sourcelist``, ``Acquire::http::Proxy``)
_APT_OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*=[^\x00-\x1f\x7f]*", re.ASCII)
#: ``dpkg-query -W`` format: one tab-separated line per matching package
DPKG_FORMAT = "${db:Status-Status}\t${Package}\t${Version}\t${Architecture}\n"
_INSTALLED_STATES = {"installed", "triggers-awaited", "triggers-pending"}
_LOCK_MARKERS = (
    "could not get lock",
    "unable to acquire the dpkg frontend lock",
    "unable to lock the administration directory",
    "unable to lock directory",
    "dpkg status database is locked",
    "dpkg frontend lock was locked by another process",
)
# Inst NAME [CURRENT] (NEW REPO... [ARCH]) -- CURRENT is absent for new packages, REPO may
# be empty or hold spaces and commas ("Debian:12.5/stable, Debian-Security:12/stable-security").
_INST = re.compile(r"^Inst (\S+)(?: \[([^\]]*)\])? \((\S+)(?: (.*?))? \[([^\]]+)\]\)", re.ASCII)


def split_debian_version(version: str) -> tuple[str | None, str | None]:
    """``(epoch, debian_revision)`` of a dpkg version; None for the parts it lacks."""
    epoch, sep, rest = version.partition(":")
    if not sep:
        epoch, rest = "", version
    _, dash, revision = rest.rpartition("-")
    return (epoch or None), (revision if dash else None)


def parse_dpkg_query(name: str, text: str) -> PackageState:
    """The state of ``name`` from :data:`DPKG_FORMAT` lines (an installed line wins)."""
    rows = [line.split("\t") for line in text.splitlines() if line.count("\t") == 3]
    if not rows:
        return PackageState(name=name, ensure="purged")
    rows.sort(key=lambda row: row[0] not in _INSTALLED_STATES)
    status, package, version, arch = rows[0]
    if status in _INSTALLED_STATES:
        ensure = version
    elif status == "config-files":
        ensure = "absent"
    elif status == "not-installed":
        ensure = "purged"
    else:  # half-installed, unpacked, half-configured: say so rather than hide it
        ensure = status
    epoch, release = split_debian_version(version) if version else (None, None)
    return PackageState(name=package or name, ensure=ensure, version=version or None,
                        arch=arch or None, epoch=epoch, release=release)


def parse_simulation(text: str) -> list[dict[str, Any]]:
    """``outdated_packages`` from ``apt-get -s dist-upgrade`` output (its ``Inst`` lines)."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        match = _INST.match(line.strip())
        if match:
            package, current, version, repo, arch = match.groups()
            out.append({"package": package, "version": version, "repo": (repo or "").strip(),
                        "arch": arch, "current": current})
    return out


def apt_failure(action: str, result: CommandResult) -> ProviderError:
    """A clear one-line reason: the lock message, or apt's ``E:`` lines."""
    text = f"{result.stdout}\n{result.stderr}"
    errors = [line.strip() for line in text.splitlines() if line.startswith(("E:", "dpkg: error"))]
    detail = "; ".join(errors[-3:]) or (text.strip().splitlines() or ["no output"])[-1]
    if any(marker in text.lower() for marker in _LOCK_MARKERS):
        return ProviderError(f"could not get the apt/dpkg lock (another package manager is "
                             f"running?): {detail}")
    return ProviderError(f"apt-get {action} failed with exit code {result.exitcode}: {detail}")


class AptProvider(Provider):
    """Debian and Ubuntu: apt-get, dpkg-query."""

    name = "apt"
    tools = ("apt-get", "dpkg-query")

    def __init__(self, settings: Mapping[str, Any], timeout: float) -> None:
        super().__init__(settings, timeout)
        options = self.settings.get("apt_options") or []
        if isinstance(options, str) or not isinstance(options, list):
            raise ProviderError("plugins.package.apt_options must be a list of Key=Value strings")
        for option in options:
            if not isinstance(option, str) or not _APT_OPTION.fullmatch(option):
                raise ProviderError(f"plugins.package.apt_options: {option!r} is not Key=Value")
        self.apt_options: list[str] = list(options)
        self.lock_timeout = int(self.settings.get("lock_timeout", 60))

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["DEBIAN_FRONTEND"] = "noninteractive"
        env["APT_LISTCHANGES_FRONTEND"] = "none"
        if self.settings.get("apt_config"):
            env["APT_CONFIG"] = str(self.settings["apt_config"])
        return env

    # -- argv ------------------------------------------------------------------------------
    def common_args(self) -> list[str]:
        args = [arg for option in self.apt_options for arg in ("-o", option)]
        return [*args, "-o", "APT::Cmd::Pattern-Only=true", "-q"]

    def change_args(self) -> list[str]:
        """Options for apt-get calls that change the system."""
        return [*self.common_args(), "-y", "-o", f"DPkg::Lock::Timeout={self.lock_timeout}",
                "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]

    def apt_get(self, action: str, *args: str, change: bool = True) -> CommandResult:
        base = self.change_args() if change else self.common_args()
        result = self.run("apt-get", [*base, action, *args])
        if result.exitcode != 0:
            raise apt_failure(action, result)
        return result

    # -- operations ------------------------------------------------------------------------
    def status(self, package: str) -> PackageState:
        result = self.run("dpkg-query", ["-W", f"-f={DPKG_FORMAT}", "--", package])
        if result.exitcode not in (0, 1):
            raise ProviderError(f"dpkg-query failed with exit code {result.exitcode}: "
                                f"{result.stderr.strip()}")
        return parse_dpkg_query(package, result.stdout)

    def install(self, package: str, version: str | None = None) -> CommandResult | None:
        state = self.status(package)
        if state.installed and (version is None or version == state.version):
            return None
        if version is None:
            return self.apt_get("install", "--", package)
        return self.apt_get("install", "--allow-downgrades", "--", f"{package}={version}")

    def update(self, package: str) -> CommandResult | None:
        return self.apt_get("install", "--", package)

    def uninstall(self, package: str) -> CommandResult | None:
        if not self.status(package).installed:
            return None
        return self.apt_get("remove", "--", package)

    def purge(self, package: str) -> CommandResult | None:
        if self.status(package).ensure == "purged":
            return None
        return self.apt_get("purge", "--", package)

    def installed_packages(self) -> list[str]:
        result = self.run("dpkg-query", [
            "-W", "-f=${db:Status-Status} ${binary:Package} ${Version} ${Architecture}\n"])
        if result.exitcode != 0:
            raise ProviderError(f"dpkg-query failed with exit code {result.exitcode}: "
                                f"{result.stderr.strip()}")
        lines = []
        for line in result.stdout.splitlines():
            status, _, rest = line.partition(" ")
            if status in _INSTALLED_STATES:
                lines.append(rest)
        return lines

    def checkupdates(self) -> CheckUpdates:
        # A simulation changes nothing, so it need not wait for (or take) the lock.
        result = self.run("apt-get", [*self.common_args(), "-o", "Debug::NoLocking=true", "-s",
                                      "dist-upgrade"])
        if result.exitcode != 0:
            raise apt_failure("dist-upgrade --simulate", result)
        return CheckUpdates(output=result.output, exitcode=result.exitcode,
                            outdated_packages=parse_simulation(result.stdout))

    def refresh(self) -> CommandResult:
        """``apt-get update``; by default any index that fails to download is an error."""
        strict = self.settings.get("apt_update_strict", True)
        args = ["-o", f"DPkg::Lock::Timeout={self.lock_timeout}"]
        if strict:
            args.append("--error-on=any")
        result = self.run("apt-get", [*self.common_args(), *args, "update"])
        if result.exitcode != 0:
            raise apt_failure("update", result)
        return result
