"""The ``service`` agent (MCollective/Choria ``service`` agent 3.x).

``status``, ``start``, ``stop`` and ``restart`` reply with the service's status
after the action (``running``, ``stopped`` or ``unknown``); ``enable`` and
``disable`` reply with whether it starts at boot. The work is done by a
provider from :mod:`.providers` (``plugins.service.provider``: ``systemd``,
``sysv`` or ``auto``).

Settings (``plugins: {service: {...}}`` in the daemon config):

- ``provider``: ``auto`` (default), ``systemd`` or ``sysv``
- ``systemctl``, ``service``, ``update_rc_d``: the binaries (a path, or a name on ``PATH``)
- ``command_timeout``: seconds one command may run (default 45)
- ``settle_timeout``: seconds ``start``/``stop``/``restart`` wait for the status
  to become ``running``/``stopped`` (default 10)

Every failure (tool missing, unknown service, a command that failed or timed
out, a status that did not settle) is a status 1 reply with one clear line.
"""

from __future__ import annotations

from collective.agent import Aborted, Agent, Reply, Request, action

from .providers import RUNNING, STOPPED, Provider, ServiceError, provider_for

#: seconds kept back from the DDL timeout so the reply leaves before the client gives up
MARGIN = 5.0
#: boot states after which ``enable`` failed (systemd may also say static, indirect, ...)
NOT_ENABLED = frozenset({"disabled", "masked", "masked-runtime", "unknown"})


class Service(Agent):
    """Start, stop, restart, query, enable and disable services."""

    name = "service"

    def provider(self) -> Provider:
        """A provider for one action, with the action's time budget."""
        try:
            return provider_for(self.config.plugin("service"), max(self.timeout - MARGIN, 1.0))
        except ServiceError as exc:
            raise Aborted(str(exc)) from None

    def settle_timeout(self) -> float:
        try:
            return float(self.config.plugin("service").get("settle_timeout", 10))
        except (TypeError, ValueError):
            return 10.0

    @action
    def status(self, request: Request, reply: Reply) -> None:
        provider, service = self.provider(), request["service"]
        try:
            provider.check(service)
            reply["status"] = provider.status(service)
        except ServiceError as exc:
            raise Aborted(str(exc)) from None

    @action
    def start(self, request: Request, reply: Reply) -> None:
        self._change(request, reply, "start", RUNNING)

    @action
    def stop(self, request: Request, reply: Reply) -> None:
        self._change(request, reply, "stop", STOPPED)

    @action
    def restart(self, request: Request, reply: Reply) -> None:
        self._change(request, reply, "restart", RUNNING)

    @action
    def enable(self, request: Request, reply: Reply) -> None:
        self._boot(request, reply, "enable")

    @action
    def disable(self, request: Request, reply: Reply) -> None:
        self._boot(request, reply, "disable")

    def _change(self, request: Request, reply: Reply, verb: str, want: str) -> None:
        provider, service = self.provider(), request["service"]
        try:
            provider.check(service)
        except ServiceError as exc:
            raise Aborted(str(exc)) from None
        try:
            getattr(provider, verb)(service)
        except ServiceError as exc:
            reply["status"] = self._quiet_status(provider, service)
            raise Aborted(f"Could not {verb} service {service}: {exc}") from None
        try:
            reply["status"] = provider.wait_for(service, want, self.settle_timeout())
        except ServiceError as exc:
            raise Aborted(f"{verb} of service {service} finished but its status could not be "
                          f"read: {exc}") from None
        self.log.info("%s service %s for %s: now %s", verb, service, request.caller, reply["status"])
        if reply["status"] != want:
            raise Aborted(f"service {service} is {reply['status']} after {verb}, expected {want}")

    def _boot(self, request: Request, reply: Reply, verb: str) -> None:
        provider, service = self.provider(), request["service"]
        try:
            provider.check(service)
        except ServiceError as exc:
            raise Aborted(str(exc)) from None
        try:
            getattr(provider, verb)(service)
            reply["enabled"] = provider.enabled(service)
        except ServiceError as exc:
            raise Aborted(f"Could not {verb} service {service}: {exc}") from None
        self.log.info("%s service %s for %s: now %s", verb, service, request.caller, reply["enabled"])
        state = reply["enabled"]
        if (verb == "enable" and state in NOT_ENABLED) or (verb == "disable" and state.startswith("enabled")):
            raise Aborted(f"service {service} is {state} after {verb}")

    @staticmethod
    def _quiet_status(provider: Provider, service: str) -> str:
        try:
            return provider.status(service)
        except ServiceError:
            return "unknown"
