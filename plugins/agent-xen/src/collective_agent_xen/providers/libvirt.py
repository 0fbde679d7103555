"""The libvirt provider: the libvirt Python binding on ``plugins.xen.uri``
(default ``xen:///system``, libvirt's libxl driver).

One connection per URI is opened on first use and kept for the life of the daemon,
shared by the agent's worker threads and the ``xen()`` data plugin (libvirt
connections are thread-safe); a lock guards opening and reopening it. Keeping it
matters beyond speed: libvirt's ``test:///`` driver holds its domains' state in the
connection, so a fresh connection per request (as one ``virsh`` process per call
would be) would forget every start and shutdown.

The binding is an optional dependency (``collective-agent-xen[libvirt]``); without it
every action answers status 1 saying how to install it.

Migration uses ``virDomainMigrateToURI3`` with ``VIR_MIGRATE_PEER2PEER`` (the source
libvirtd talks to the destination's, which is what the libxl driver supports),
``VIR_MIGRATE_LIVE`` unless ``live`` is false, and, for a persistent domain,
``VIR_MIGRATE_PERSIST_DEST | VIR_MIGRATE_UNDEFINE_SOURCE`` so it ends up defined on
exactly one host. It runs in a helper thread; past its timeout the job is aborted
with ``virDomainAbortJob``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Mapping
from typing import Any

from .base import Domain, Provider, ProviderUnavailable, XenError

log = logging.getLogger(__name__)

DEFAULT_URI = "xen:///system"
DEFAULT_MIGRATE_URI = "xen+ssh://{destination}/system"
INSTALL_HINT = ("the libvirt Python binding is not installed on this node: "
                "pip install 'collective-agent-xen[libvirt]' (it builds against libvirt's "
                "development files: apt-get install libvirt-dev pkg-config)")

#: ``virDomainState`` values -> the agent's state names
STATE_NAMES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
               5: "shutoff", 6: "crashed", 7: "pmsuspended"}

_lock = threading.Lock()
_connections: dict[str, Any] = {}
_quiet = False


def binding() -> Any:
    """The ``libvirt`` module, imported on first use.

    :raises ProviderUnavailable: when it is not installed
    """
    global _quiet
    try:
        import libvirt
    except ImportError:
        raise ProviderUnavailable(INSTALL_HINT) from None
    if not _quiet:
        # libvirt prints every error to stderr unless a handler is registered; the
        # agent reports them in replies instead.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _quiet = True
    return libvirt


def available() -> bool:
    try:
        binding()
    except ProviderUnavailable:
        return False
    return True


def _message(exc: Exception) -> str:
    get = getattr(exc, "get_error_message", None)
    text = get() if callable(get) else None
    return str(text or exc).strip() or type(exc).__name__


def connection(uri: str) -> Any:
    """The shared connection to ``uri``, opened (or reopened once it died) under a lock.

    :raises XenError: when libvirt refuses the connection
    """
    libvirt = binding()
    with _lock:
        conn = _connections.get(uri)
        if conn is not None:
            try:
                if conn.isAlive() == 1:
                    return conn
            except libvirt.libvirtError:
                pass
            log.warning("the libvirt connection to %s died; reconnecting", uri)
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
            _connections.pop(uri, None)
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise XenError(f"cannot connect to libvirt at {uri}: {_message(exc)}") from None
        if conn is None:  # old bindings returned None instead of raising
            raise XenError(f"cannot connect to libvirt at {uri}")
        _connections[uri] = conn
        return conn


def close_all() -> None:
    """Close every shared connection (tests; a daemon keeps them)."""
    with _lock:
        for conn in _connections.values():
            try:
                conn.close()
            except Exception:  # closing is best effort
                pass
        _connections.clear()


def _record(dom: Any, libvirt: Any) -> Domain:
    state, max_kib, mem_kib, vcpus, cpu_ns = dom.info()
    domid = dom.ID()
    try:
        autostart: bool | None = bool(dom.autostart())
    except libvirt.libvirtError:
        autostart = None
    try:
        os_type: str | None = dom.OSType()
    except libvirt.libvirtError:
        os_type = None
    return Domain(
        name=dom.name(),
        id=domid if isinstance(domid, int) and domid >= 0 else None,
        state=STATE_NAMES.get(state, "nostate"),
        memory=int(mem_kib) // 1024,
        max_memory=int(max_kib) // 1024,
        vcpus=int(vcpus),
        cpu_time=round(cpu_ns / 1e9, 1),
        uuid=dom.UUIDString(),
        os_type=os_type,
        persistent=bool(dom.isPersistent()),
        autostart=autostart,
    )


def destination_host(destination: str) -> str:
    """``destination`` as it goes into a URI: IPv6 addresses in brackets."""
    try:
        if ipaddress.ip_address(destination).version == 6:
            return f"[{destination}]"
    except ValueError:
        pass
    return destination


class LibvirtProvider(Provider):
    """Xen through libvirt."""

    name = "libvirt"

    def __init__(self, settings: Mapping[str, Any] | None = None, budget: float = 60.0) -> None:
        super().__init__(settings, budget)
        self.libvirt = binding()
        self.uri = str(self.settings.get("uri") or DEFAULT_URI)

    @classmethod
    def available(cls) -> bool:
        return available()

    def conn(self) -> Any:
        return connection(self.uri)

    def _call(self, what: str, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except self.libvirt.libvirtError as exc:
            raise XenError(f"{what}: {_message(exc)}") from None

    def _domain(self, name: str) -> Any:
        """The virDomain called ``name``, or None."""
        try:
            return self.conn().lookupByName(name)
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise XenError(f"could not look up domain {name}: {_message(exc)}") from None

    def _must(self, name: str) -> Any:
        dom = self._domain(name)
        if dom is None:
            from .base import NoSuchDomain

            raise NoSuchDomain(name)
        return dom

    # -- questions -------------------------------------------------------------------
    def domains(self, include_inactive: bool) -> list[Domain]:
        flags = 0 if include_inactive else self.libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        found = self._call("could not list domains", self.conn().listAllDomains, flags)
        records = []
        for dom in found:
            try:
                records.append(_record(dom, self.libvirt))
            except self.libvirt.libvirtError as exc:  # it went away while we listed
                log.debug("skipping a domain that vanished during list: %s", _message(exc))
        return sorted(records, key=lambda d: d.name)

    def lookup(self, name: str) -> Domain | None:
        dom = self._domain(name)
        if dom is None:
            return None
        try:
            return _record(dom, self.libvirt)
        except self.libvirt.libvirtError as exc:
            if exc.get_error_code() == self.libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise XenError(f"could not read domain {name}: {_message(exc)}") from None

    def host(self) -> dict[str, Any]:
        conn = self.conn()
        model, memory_mib, cpus, *_ = self._call("could not read the host", conn.getInfo)
        version = self._call("could not read the hypervisor version", conn.getVersion)
        try:
            free = int(conn.getFreeMemory()) // (1024 * 1024)
        except self.libvirt.libvirtError:
            free = None
        major, minor, micro = version // 1_000_000, (version // 1000) % 1000, version % 1000
        return {"hypervisor": conn.getType(), "version": f"{major}.{minor}.{micro}",
                "cpus": int(cpus), "total_memory": int(memory_mib), "free_memory": free,
                "model": model}

    # -- operations --------------------------------------------------------------------
    def start(self, name: str) -> None:
        self._call(f"could not start {name}", self._must(name).create)

    def shutdown(self, name: str) -> None:
        self._call(f"could not shut down {name}", self._must(name).shutdown)

    def reboot(self, name: str) -> None:
        self._call(f"could not reboot {name}", self._must(name).reboot, 0)

    def destroy(self, name: str) -> None:
        self._call(f"could not destroy {name}", self._must(name).destroy)

    def suspend(self, name: str) -> None:
        self._call(f"could not pause {name}", self._must(name).suspend)

    def resume(self, name: str) -> None:
        self._call(f"could not resume {name}", self._must(name).resume)

    def migration_uri(self, destination: str) -> str:
        template = str(self.settings.get("migrate_uri") or DEFAULT_MIGRATE_URI)
        if "{destination}" not in template:
            raise XenError(f"plugins.xen.migrate_uri {template!r} has no {{destination}}")
        return template.replace("{destination}", destination_host(destination))

    def migrate(self, name: str, destination: str, live: bool, timeout: float) -> str:
        lv = self.libvirt
        dom = self._must(name)
        uri = self.migration_uri(destination)
        flags = lv.VIR_MIGRATE_PEER2PEER
        if live:
            flags |= lv.VIR_MIGRATE_LIVE
        if self._call(f"could not read domain {name}", dom.isPersistent):
            flags |= lv.VIR_MIGRATE_PERSIST_DEST | lv.VIR_MIGRATE_UNDEFINE_SOURCE
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                dom.migrateToURI3(uri, {}, flags)
                outcome["ok"] = True
            except lv.libvirtError as exc:
                outcome["error"] = _message(exc)
            except Exception as exc:  # reported, never lost in the thread
                outcome["error"] = f"{type(exc).__name__}: {exc}"

        worker = threading.Thread(target=work, name=f"xen-migrate-{name}", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            try:
                dom.abortJob()
            except lv.libvirtError as exc:
                log.warning("could not abort the migration of %s: %s", name, _message(exc))
            worker.join(10)
            raise XenError(f"migration of {name} to {destination} did not finish within "
                           f"{timeout:.0f}s and was aborted")
        if "error" in outcome:
            raise XenError(f"could not migrate {name} to {destination} ({uri}): "
                           f"{outcome['error']}")
        return f"migrated {name} to {uri}"
