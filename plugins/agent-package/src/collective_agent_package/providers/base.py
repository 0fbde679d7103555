"""What every package provider shares: running a tool safely, and the result types.

Every command is an argument list (never a shell) run with a timeout, with the
executable resolved on ``PATH`` first so a missing tool is a clear
:class:`ProviderError` ("apt-get not found on this node") rather than a crash.
Package names reach the command line only after ``--``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CheckUpdates",
    "CommandResult",
    "PackageState",
    "Provider",
    "ProviderError",
    "digest_lines",
    "tail",
]

#: at most this many characters of a command's output go into a reply
MAX_OUTPUT = 16384


class ProviderError(Exception):
    """The provider could not do what was asked; the agent replies statuscode 1 with the message."""


@dataclass
class PackageState:
    """One package as the package database sees it.

    ``ensure`` is the installed version, or ``absent`` (not installed; on dpkg:
    configuration files remain) or ``purged`` (dpkg knows nothing of it).
    """

    name: str
    ensure: str
    version: str | None = None
    arch: str | None = None
    epoch: str | None = None
    release: str | None = None

    @property
    def installed(self) -> bool:
        return self.ensure not in ("absent", "purged")

    def as_reply(self) -> dict[str, Any]:
        return {"name": self.name, "ensure": self.ensure, "version": self.version, "arch": self.arch,
                "epoch": self.epoch, "release": self.release}


@dataclass
class CommandResult:
    argv: list[str]
    exitcode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr, trimmed to the last :data:`MAX_OUTPUT` characters."""
        text = self.stdout
        if self.stderr.strip():
            text = f"{text.rstrip()}\n{self.stderr.strip()}" if text.strip() else self.stderr
        return tail(text.strip())


@dataclass
class CheckUpdates:
    output: str
    exitcode: int
    #: ``[{"package", "version", "repo", "arch", "current"}]``
    outdated_packages: list[dict[str, Any]] = field(default_factory=list)


def tail(text: str, limit: int = MAX_OUTPUT) -> str:
    return text if len(text) <= limit else "...\n" + text[-limit:]


def digest_lines(lines: Sequence[str]) -> str:
    """MD5 (hex) of the sorted lines, newline-terminated: the same package set gives the
    same digest on every node whatever order the tool listed it in."""
    return hashlib.md5("".join(f"{line}\n" for line in sorted(lines)).encode(),
                       usedforsecurity=False).hexdigest()


class Provider:
    """Base class: subclasses set :attr:`name` and implement the operations.

    :param settings: the ``plugins.package`` config section
    :param timeout: seconds any one command may run
    """

    #: what the agent reports as ``provider``
    name = ""
    #: the executables this provider needs; the first decides availability
    tools: tuple[str, ...] = ()

    def __init__(self, settings: Mapping[str, Any], timeout: float) -> None:
        self.settings = dict(settings)
        self.timeout = timeout

    # -- availability ------------------------------------------------------------------
    @classmethod
    def available(cls) -> bool:
        return bool(cls.tools) and shutil.which(cls.tools[0]) is not None

    @staticmethod
    def which(tool: str) -> str:
        path = shutil.which(tool)
        if path is None:
            raise ProviderError(f"{tool} not found on this node")
        return path

    # -- running -------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LC_ALL"] = "C"  # messages we parse ("Could not get lock") are the C locale's
        env.pop("LANGUAGE", None)
        return env

    def run(self, tool: str, args: Sequence[str], *, timeout: float | None = None) -> CommandResult:
        """Run ``tool`` (looked up on PATH) with ``args``; never a shell, always a timeout."""
        argv = [self.which(tool), *args]
        limit = self.timeout if timeout is None else timeout
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                  timeout=limit, env=self.environment(), stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise ProviderError(f"{tool} did not finish within {limit:g} seconds") from None
        except FileNotFoundError:
            raise ProviderError(f"{tool} not found on this node") from None
        except OSError as exc:
            raise ProviderError(f"could not run {tool}: {exc.strerror or exc}") from None
        return CommandResult([tool, *args], proc.returncode, proc.stdout, proc.stderr)

    # -- operations (subclasses) ----------------------------------------------------------
    def status(self, package: str) -> PackageState:
        raise NotImplementedError

    def install(self, package: str, version: str | None = None) -> CommandResult | None:
        """Install (a specific ``version`` when given); None when nothing needed doing."""
        raise NotImplementedError

    def update(self, package: str) -> CommandResult | None:
        raise NotImplementedError

    def uninstall(self, package: str) -> CommandResult | None:
        raise NotImplementedError

    def purge(self, package: str) -> CommandResult | None:
        raise NotImplementedError

    def installed_packages(self) -> list[str]:
        """One ``name version arch`` line per installed package."""
        raise NotImplementedError

    def checkupdates(self) -> CheckUpdates:
        raise NotImplementedError
