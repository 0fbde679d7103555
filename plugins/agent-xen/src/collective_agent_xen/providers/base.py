"""What both providers share: the domain record, the errors, the time budget, and a
safe way to run a command.

A provider answers questions (:meth:`Provider.domains`, :meth:`Provider.lookup`,
:meth:`Provider.host`) and performs one operation at a time (``start``,
``shutdown``, ...). It does not decide whether an operation makes sense: the agent
checks the domain's state first and waits for the result afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

__all__ = [
    "Completed",
    "Domain",
    "NoSuchDomain",
    "Provider",
    "ProviderUnavailable",
    "XenError",
    "run_command",
]

#: At most this much of a command's output is read.
MAX_OUTPUT = 4 * 1024 * 1024


class XenError(Exception):
    """The operation could not be done; the agent replies status 1 with the message."""


class NoSuchDomain(XenError):
    """The hypervisor does not know the domain."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No such domain: {name}")
        self.name = name


class ProviderUnavailable(XenError):
    """The provider's binding or tool is missing on this node."""


@dataclass
class Domain:
    """One domain as a provider sees it. Memory in MiB, CPU time in seconds."""

    name: str
    #: the hypervisor's domain id, None while the domain is shut off
    id: int | None
    #: one of :data:`collective_agent_xen.common.STATES`
    state: str
    memory: int | None = None
    max_memory: int | None = None
    vcpus: int | None = None
    cpu_time: float | None = None
    uuid: str | None = None
    #: ``hvm``, ``pv``, ``pvh`` (xl) or libvirt's OS type (``linux`` means PV, ``hvm``)
    os_type: str | None = None
    #: defined on the host even while shut off (libvirt), or has a config file (xl)
    persistent: bool | None = None
    autostart: bool | None = None
    #: the raw ``xl list`` state flags such as ``-b----`` (xl only)
    flags: str | None = None

    def summary(self) -> dict[str, Any]:
        """The record ``list`` returns for each domain."""
        return {"name": self.name, "id": self.id, "state": self.state, "memory": self.memory,
                "vcpus": self.vcpus}

    def details(self) -> dict[str, Any]:
        """Every field (``info``)."""
        return asdict(self)


@dataclass(frozen=True)
class Completed:
    """A finished command: its argv, exit status and output (stdout and stderr apart)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def why(self) -> str:
        """The last non-empty line of stderr (else stdout), for error messages."""
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1][:300]
        return "no output"


def _environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key in ("PATH", "HOME", "TMPDIR")}
    env.update(LC_ALL="C", LANG="C")  # the messages and numbers parsed are the C locale's
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return env


def run_command(argv: Sequence[str], timeout: float) -> Completed:
    """Run ``argv`` (a list, never a shell) for at most ``timeout`` seconds.

    The command gets its own session, stdin from ``/dev/null`` and its output in
    temporary files (a child that keeps inherited pipes open cannot hang the
    agent); when the time is up its whole process group is killed.

    :raises ProviderUnavailable: when ``argv[0]`` does not exist
    :raises XenError: on timeout or when it cannot be started
    """
    argv = [str(a) for a in argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=_environment(), start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise ProviderUnavailable(f"{argv[0]} not found on this node") from None
        except OSError as exc:
            raise XenError(f"could not run {argv[0]}: {exc.strerror or exc}") from None
        try:
            returncode = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            proc.wait()
            raise XenError(f"{' '.join(argv[:3])} ... did not finish within {timeout:.0f}s "
                           "and was killed") from None
        out.seek(0)
        err.seek(0)
        stdout = out.read(MAX_OUTPUT).decode("utf-8", "replace")
        stderr = err.read(MAX_OUTPUT).decode("utf-8", "replace")
    return Completed(tuple(argv), returncode, stdout, stderr)


class Provider:
    """Base class of the providers.

    :param settings: the ``plugins.xen`` config section
    :param budget: seconds everything one action does may take together
    """

    #: the value of ``plugins.xen.provider`` that selects it
    name: ClassVar[str] = ""

    def __init__(self, settings: Mapping[str, Any] | None = None, budget: float = 60.0) -> None:
        self.settings = dict(settings or {})
        self.deadline = time.monotonic() + budget

    def remaining(self, what: str) -> float:
        """Seconds left in the action's budget.

        :raises XenError: when none is left
        """
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise XenError(f"the action ran out of time before {what}")
        return left

    # -- questions -----------------------------------------------------------------------
    def domains(self, include_inactive: bool) -> list[Domain]:
        """Every domain (``include_inactive``) or only the active ones, sorted by name."""
        raise NotImplementedError

    def lookup(self, name: str) -> Domain | None:
        """The domain called ``name``, or None when the hypervisor does not know it."""
        raise NotImplementedError

    def details(self, name: str) -> Domain | None:
        """Like :meth:`lookup`, with every field the provider can read."""
        return self.lookup(name)

    def host(self) -> dict[str, Any]:
        """Facts about the hypervisor host: ``hypervisor``, ``version``, ``cpus``,
        ``total_memory`` and ``free_memory`` (MiB)."""
        raise NotImplementedError

    # -- operations (one call each; the agent waits for the result) ----------------------
    def start(self, name: str) -> None:
        raise NotImplementedError

    def shutdown(self, name: str) -> None:
        raise NotImplementedError

    def reboot(self, name: str) -> None:
        raise NotImplementedError

    def destroy(self, name: str) -> None:
        raise NotImplementedError

    def suspend(self, name: str) -> None:
        raise NotImplementedError

    def resume(self, name: str) -> None:
        raise NotImplementedError

    def migrate(self, name: str, destination: str, live: bool, timeout: float) -> str:
        """Move the domain to ``destination``; returns what the tool said (may be '').

        :param timeout: seconds the migration may take before it is aborted
        """
        raise NotImplementedError
