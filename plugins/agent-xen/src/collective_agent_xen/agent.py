"""The ``xen`` agent: list, find, inspect, start, stop, pause and migrate Xen domains.

Every action first checks the domain's state, then asks the provider (libvirt or xl,
see :mod:`.providers`) for one operation, then waits up to ``settle_timeout`` for
the state the operation leads to, and replies with that state. What does not make
sense in the current state is refused with status 1 and one line (``Domain db01 is
paused: resume it first``); what is already true is not done again (``start`` of a
running domain replies ``running``). ``Domain-0``, the control domain, is never
shut down, rebooted, destroyed, paused or migrated.

Settings (``plugins: {xen: {...}}`` in the daemon config) are described in the
plugin's README; the DDL timeout (300 s) is there for ``migrate``, every other
action keeps within :data:`QUICK_BUDGET`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

from collective.agent import Aborted, Agent, Reply, Request, action

from .common import ACTIVE_STATES, CONTROL_DOMAIN, QUICK_BUDGET
from .providers import Domain, NoSuchDomain, Provider, XenError, provider_for

#: seconds kept back from the DDL timeout so the reply leaves before the client gives up
MARGIN = 5.0
DEFAULT_SETTLE_TIMEOUT = 60.0
DEFAULT_MIGRATE_TIMEOUT = 240.0
RUNNING = frozenset({"running", "blocked"})


def _gone_or_off(dom: Domain | None) -> bool:
    return dom is None or dom.state == "shutoff"


class Xen(Agent):
    """Manage the Xen domains of this host."""

    name = "xen"

    # -- settings ----------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return dict(self.config.plugin("xen"))

    def _seconds(self, key: str, default: float, high: float) -> float:
        value = self.settings().get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.log.warning("plugins.xen.%s=%r is not a number; using %s", key, value, default)
            number = default
        return min(max(number, 0.5), high)

    def provider(self, budget: float | None = None) -> Provider:
        """A provider with the action's time budget."""
        if budget is None:
            budget = min(QUICK_BUDGET, self.timeout - MARGIN)
        try:
            return provider_for(self.settings(), max(budget, 1.0))
        except XenError as exc:
            raise Aborted(str(exc)) from None

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _must(provider: Provider, name: str, details: bool = False) -> Domain:
        try:
            dom = provider.details(name) if details else provider.lookup(name)
        except XenError as exc:
            raise Aborted(str(exc)) from None
        if dom is None:
            raise Aborted(f"No such domain: {name}")
        return dom

    @staticmethod
    def _protect(dom: Domain, verb: str) -> None:
        if dom.name == CONTROL_DOMAIN or dom.id == 0:
            raise Aborted(f"Refusing to {verb} {dom.name}: it is the control domain of this host")

    def _wait(self, provider: Provider, name: str, done: Callable[[Domain | None], bool],
              ) -> tuple[Domain | None, bool]:
        """Poll the domain until ``done(domain)`` or ``settle_timeout`` passes."""
        settle = self._seconds("settle_timeout", DEFAULT_SETTLE_TIMEOUT, QUICK_BUDGET)
        deadline = min(time.monotonic() + settle, provider.deadline - 1.0)
        interval = 0.1 if provider.name == "libvirt" else 0.5
        while True:
            try:
                dom = provider.lookup(name)
            except XenError as exc:
                raise Aborted(f"{name}: the operation was requested but its state could not be "
                              f"read: {exc}") from None
            if done(dom):
                return dom, True
            if time.monotonic() >= deadline:
                return dom, False
            time.sleep(interval)

    def _operate(self, provider: Provider, verb: str, name: str) -> None:
        try:
            getattr(provider, verb)(name)
        except NoSuchDomain:
            raise Aborted(f"No such domain: {name}") from None
        except XenError as exc:
            raise Aborted(str(exc)) from None

    def _settled(self, reply: Reply, provider: Provider, request: Request, verb: str,
                 done: Callable[[Domain | None], bool], want: str) -> None:
        name = request["domain"]
        dom, ok = self._wait(provider, name, done)
        reply["state"] = dom.state if dom is not None else "shutoff"
        reply["id"] = dom.id if dom is not None else None
        self.log.info("xen#%s %s for %s: now %s", verb, name, request.caller, reply["state"])
        if not ok:
            settle = self._seconds("settle_timeout", DEFAULT_SETTLE_TIMEOUT, QUICK_BUDGET)
            hint = "; destroy forces it off" if verb == "shutdown" else ""
            raise Aborted(f"Domain {name} is still {reply['state']} {settle:g}s after {verb} "
                          f"(expected {want}){hint}")

    # -- questions ---------------------------------------------------------------------
    @action
    def list(self, request: Request, reply: Reply) -> None:
        provider = self.provider()
        try:
            domains = provider.domains(include_inactive=bool(request.get("all")))
        except XenError as exc:
            raise Aborted(str(exc)) from None
        reply["domains"] = [dom.summary() for dom in domains]
        try:
            reply["host"] = provider.host()
        except XenError as exc:  # the domain list is the answer; host facts are extra
            self.log.warning("xen#list: could not read the host's facts: %s", exc)

    @action
    def find(self, request: Request, reply: Reply) -> None:
        provider = self.provider()
        try:
            dom = provider.lookup(request["domain"])
        except XenError as exc:
            raise Aborted(str(exc)) from None
        reply["found"] = dom is not None
        if dom is not None:
            reply["state"], reply["id"] = dom.state, dom.id

    @action
    def info(self, request: Request, reply: Reply) -> None:
        dom = self._must(self.provider(), request["domain"], details=True)
        for key, value in dom.details().items():
            reply[key] = value

    # -- operations --------------------------------------------------------------------
    @action
    def start(self, request: Request, reply: Reply) -> None:
        provider, name = self.provider(), request["domain"]
        dom = self._must(provider, name)
        reply["state"], reply["id"] = dom.state, dom.id
        if dom.state in RUNNING:
            return
        if dom.state == "paused":
            raise Aborted(f"Domain {name} is paused: resume it instead")
        if dom.state != "shutoff":
            raise Aborted(f"Domain {name} is {dom.state}: only a shut-off domain can be started"
                          + ("; destroy it first" if dom.state == "crashed" else ""))
        self._operate(provider, "start", name)
        self._settled(reply, provider, request, "start",
                      lambda d: d is not None and d.state in RUNNING, "running")

    @action
    def shutdown(self, request: Request, reply: Reply) -> None:
        provider, name = self.provider(), request["domain"]
        dom = self._must(provider, name)
        self._protect(dom, "shut down")
        reply["state"], reply["id"] = dom.state, dom.id
        if dom.state == "shutoff":
            return
        if dom.state == "paused":
            raise Aborted(f"Domain {name} is paused and cannot react to a shutdown request: "
                          "resume it first, or destroy it")
        if dom.state not in RUNNING | {"shutdown"}:
            raise Aborted(f"Domain {name} is {dom.state}: destroy it instead")
        if dom.state != "shutdown":
            self._operate(provider, "shutdown", name)
        self._settled(reply, provider, request, "shutdown", _gone_or_off, "shutoff")

    @action
    def reboot(self, request: Request, reply: Reply) -> None:
        provider, name = self.provider(), request["domain"]
        dom = self._must(provider, name)
        self._protect(dom, "reboot")
        if dom.state not in RUNNING:
            hint = "start it instead" if dom.state == "shutoff" else (
                "resume it first" if dom.state == "paused" else "destroy and start it")
            raise Aborted(f"Domain {name} is {dom.state}: {hint}")
        self._operate(provider, "reboot", name)
        # The guest reboots in its own time (Xen gives it a new id); report what is seen now.
        try:
            after = provider.lookup(name)
        except XenError as exc:
            raise Aborted(f"{name}: reboot was requested but its state could not be read: "
                          f"{exc}") from None
        reply["state"] = after.state if after is not None else "shutdown"
        reply["id"] = after.id if after is not None else None
        self.log.info("xen#reboot %s for %s: now %s", name, request.caller, reply["state"])

    @action
    def destroy(self, request: Request, reply: Reply) -> None:
        provider, name = self.provider(), request["domain"]
        dom = self._must(provider, name)
        self._protect(dom, "destroy")
        reply["state"], reply["id"] = dom.state, dom.id
        if dom.state == "shutoff":
            return
        self._operate(provider, "destroy", name)
        self._settled(reply, provider, request, "destroy", _gone_or_off, "shutoff")

    @action
    def suspend(self, request: Request, reply: Reply) -> None:
        provider, name = self.provider(), request["domain"]
        dom = self._must(provider, name)
        self._protect(dom, "pause")
        reply["state"], reply["id"] = dom.state, dom.id
        if dom.state == "paused":
            return
        if dom.state not in RUNNING:
            raise Aborted(f"Domain {name} is {dom.state}: only a running domain can be paused")
        self._operate(provider, "suspend", name)
        self._settled(reply, provider, request, "suspend",
                      lambda d: d is not None and d.state == "paused", "paused")

    @action
    def resume(self, request: Request, reply: Reply) -> None:
        provider, name = self.provider(), request["domain"]
        dom = self._must(provider, name)
        reply["state"], reply["id"] = dom.state, dom.id
        if dom.state in RUNNING:
            return
        if dom.state != "paused":
            raise Aborted(f"Domain {name} is {dom.state}: only a paused domain can be resumed"
                          + ("; start it instead" if dom.state == "shutoff" else ""))
        self._operate(provider, "resume", name)
        self._settled(reply, provider, request, "resume",
                      lambda d: d is not None and d.state in RUNNING, "running")

    # -- migrate -----------------------------------------------------------------------
    def _check_destination(self, destination: str) -> None:
        settings = self.settings()
        patterns = settings.get("migrate_destinations")
        if isinstance(patterns, str):
            patterns = [patterns]
        if patterns is not None and not any(
                isinstance(p, str) and fnmatch.fnmatchcase(destination.lower(), p.lower())
                for p in patterns):
            raise Aborted(f"Refusing to migrate to {destination}: it is not in "
                          "plugins.xen.migrate_destinations on this node")
        if destination.lower() in self_names(self.config.identity):
            raise Aborted(f"Refusing to migrate to {destination}: that is this host")
        try:
            if ipaddress.ip_address(destination).is_loopback:
                raise Aborted(f"Refusing to migrate to {destination}: that is this host")
        except ValueError:
            pass

    @action
    def migrate(self, request: Request, reply: Reply) -> None:
        name, destination, live = request["domain"], request["destination"], request["live"]
        if self.settings().get("allow_migrate") is not True:
            raise Aborted("migrate is disabled on this node (set plugins.xen.allow_migrate: true)")
        self._check_destination(destination)
        budget = self.timeout - MARGIN
        limit = self._seconds("migrate_timeout", DEFAULT_MIGRATE_TIMEOUT, budget - 5.0)
        provider = self.provider(budget)
        dom = self._must(provider, name)
        self._protect(dom, "migrate")
        if dom.state not in ACTIVE_STATES - {"shutdown", "dying", "crashed"}:
            raise Aborted(f"Domain {name} is {dom.state}: only a running or paused domain can be "
                          "migrated")
        reply["destination"], reply["live"] = destination, live
        self.log.info("xen#migrate %s to %s (live=%s) for %s", name, destination, live,
                      request.caller)
        try:
            reply["output"] = provider.migrate(name, destination, live, limit)
        except XenError as exc:
            reply["status"] = "failed"
            raise Aborted(str(exc)) from None
        reply["status"] = "migrated"


def self_names(identity: str | None) -> set[str]:
    """Names under which this host is known (a migration to one of them is refused)."""
    names = {"localhost", "localhost.localdomain"}
    for name in (identity, socket.gethostname()):
        if name:
            names.add(name.lower())
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return names
