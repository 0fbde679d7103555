"""The ``package`` agent (MCollective ``agent/package.ddl`` 4.7.0, timeout 180).

Configuration (``plugins.package`` in the daemon config):

``provider``
    ``auto`` (default: the first of apt, dnf, yum found on the node), ``apt``, ``dnf``, ``yum``.
``apt_options``
    list of ``Key=Value`` apt settings, each passed as ``-o Key=Value`` to every apt-get call.
``apt_config``
    an apt configuration file, exported to apt-get as ``APT_CONFIG``.
``apt_update_strict``
    ``apt_update`` fails when any index could not be fetched (``--error-on=any``; default true).
``lock_timeout``
    seconds apt-get waits for the dpkg lock (``DPkg::Lock::Timeout``), and dnf retries while
    another dnf holds its lock (default 60).
``dnf_options``
    list of allowed dnf long options (``--installroot=PATH``, ``--setopt=KEY=VALUE``, ...), each
    one argv element before the verb; ``--installroot`` also makes rpm queries use ``--root``.
``command_timeout``
    seconds any one command may run (default: the DDL timeout minus 10).

Changes are serialised inside one daemon; between processes the package manager's
own lock decides, and "could not get lock" is a statuscode 1 reply that says so.
"""

from __future__ import annotations

import threading
from typing import Any

from collective.agent import Aborted, Agent, Reply, Request, action

from .providers import (
    AptProvider,
    DnfProvider,
    Provider,
    ProviderError,
    YumProvider,
    select_provider,
)
from .providers.base import digest_lines

#: one package change at a time per daemon (apt/dpkg and rpm lock the whole database anyway)
_CHANGE_LOCK = threading.Lock()


class Package(Agent):
    """Install, update, remove and query packages."""

    name = "package"

    # -- helpers (not actions) ---------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return self.config.plugin("package")

    def command_timeout(self) -> float:
        default = max(self.timeout - 10, 5)
        return float(self.settings().get("command_timeout", default))

    def provider(self, cls: type[Provider] | None = None) -> Provider:
        try:
            if cls is not None:
                return cls(self.settings(), self.command_timeout())
            return select_provider(self.settings(), self.command_timeout())
        except ProviderError as exc:
            raise Aborted(str(exc)) from None

    def change(self, operation: str, request: Request, reply: Reply) -> None:
        provider = self.provider()
        package = request["package"]
        with _CHANGE_LOCK:
            try:
                method = getattr(provider, operation)
                if operation == "install":
                    result = method(package, request.get("version"))
                else:
                    result = method(package)
                state = provider.status(package)
            except ProviderError as exc:
                raise Aborted(str(exc)) from None
        reply.update(state.as_reply())
        reply["provider"] = provider.name
        reply["output"] = result.output if result is not None else f"nothing to do: {package} is {state.ensure}"
        if operation == "install" and request.get("version") and state.version != request["version"] \
                and state.ensure != request["version"]:
            reply.fail(f"{package} is {state.ensure} after installing version {request['version']}")

    def checkupdates_with(self, provider: Provider, reply: Reply) -> None:
        try:
            result = provider.checkupdates()
        except ProviderError as exc:
            raise Aborted(str(exc)) from None
        reply["package_manager"] = provider.name
        reply["output"] = result.output
        reply["outdated_packages"] = result.outdated_packages
        reply["exitcode"] = result.exitcode

    # -- package actions -----------------------------------------------------------------------
    @action
    def install(self, request: Request, reply: Reply) -> None:
        self.change("install", request, reply)

    @action
    def update(self, request: Request, reply: Reply) -> None:
        self.change("update", request, reply)

    @action
    def uninstall(self, request: Request, reply: Reply) -> None:
        self.change("uninstall", request, reply)

    @action
    def purge(self, request: Request, reply: Reply) -> None:
        self.change("purge", request, reply)

    @action
    def status(self, request: Request, reply: Reply) -> None:
        provider = self.provider()
        try:
            state = provider.status(request["package"])
        except ProviderError as exc:
            raise Aborted(str(exc)) from None
        reply.update(state.as_reply())
        reply["provider"] = provider.name
        reply["output"] = None

    # -- whole-system actions -------------------------------------------------------------------
    @action
    def count(self, request: Request, reply: Reply) -> None:
        try:
            reply["output"] = len(self.provider().installed_packages())
        except ProviderError as exc:
            raise Aborted(str(exc)) from None
        reply["exitcode"] = 0

    @action
    def md5(self, request: Request, reply: Reply) -> None:
        try:
            reply["output"] = digest_lines(self.provider().installed_packages())
        except ProviderError as exc:
            raise Aborted(str(exc)) from None
        reply["exitcode"] = 0

    @action
    def checkupdates(self, request: Request, reply: Reply) -> None:
        self.checkupdates_with(self.provider(), reply)

    @action
    def apt_checkupdates(self, request: Request, reply: Reply) -> None:
        self.checkupdates_with(self.provider(AptProvider), reply)

    @action
    def yum_checkupdates(self, request: Request, reply: Reply) -> None:
        cls = DnfProvider if DnfProvider.available() and not YumProvider.available() else YumProvider
        self.checkupdates_with(self.provider(cls), reply)

    @action
    def apt_update(self, request: Request, reply: Reply) -> None:
        provider = self.provider(AptProvider)
        assert isinstance(provider, AptProvider)
        with _CHANGE_LOCK:
            try:
                result = provider.refresh()
            except ProviderError as exc:
                raise Aborted(str(exc)) from None
        reply["output"] = result.output
        reply["exitcode"] = result.exitcode

    @action
    def yum_clean(self, request: Request, reply: Reply) -> None:
        cls = DnfProvider if DnfProvider.available() and not YumProvider.available() else YumProvider
        provider = self.provider(cls)
        assert isinstance(provider, YumProvider)
        try:
            result = provider.clean(request.get("mode") or "all")
        except ProviderError as exc:
            raise Aborted(str(exc)) from None
        reply["output"] = result.output
        reply["exitcode"] = result.exitcode
