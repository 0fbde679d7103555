"""The xl provider: Xen's own toolstack command, ``xl``.

What it runs (argument lists, never a shell; the domain name after ``--`` where xl's
getopt takes one; each command bounded by ``plugins.xen.command_timeout`` and the
action's budget, its process group killed when time is up):

==============  ===============================================================
question        ``xl list`` (the state table), ``xl list -l`` (libxl's JSON domain
                configs: uuid, type, maximum memory and vcpus), ``xl info``
                (``key : value`` lines about the host)
start           ``xl create CONFIG_DIR/NAME.cfg`` (xl has no defined-but-off
                domains: a shut-off domain is a config file)
shutdown        ``xl shutdown -- NAME``      reboot   ``xl reboot -- NAME``
destroy         ``xl destroy -- NAME``       pause    ``xl pause -- NAME``
resume          ``xl unpause -- NAME``
migrate         ``xl migrate -- NAME HOST`` (always live: libxl suspends with
                ``LIBXL_SUSPEND_LIVE`` and xl ignores ``--live``; xl runs
                ``ssh HOST xl migrate-receive`` through ``sh -c``, which is why HOST
                must pass the ``xen_destination`` allow-list)
==============  ===============================================================

``xl list`` flags become states: ``p`` paused, ``s`` shutdown (``crashed`` when the
shutdown reason is ``c``), ``d`` dying, anything else (``r``, ``b`` or neither:
on a CPU, idle, or waiting for one) running. The raw flags are kept in ``flags``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..common import domain_ok
from .base import (
    Completed,
    Domain,
    NoSuchDomain,
    Provider,
    ProviderUnavailable,
    XenError,
    run_command,
)

DEFAULT_CONFIG_DIR = "/etc/xen"
#: seconds one xl command may run unless ``plugins.xen.command_timeout`` says otherwise
DEFAULT_COMMAND_TIMEOUT = 30.0

# "%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f" (xl_info.c list_domains); names longer
# than 40 characters push the columns right, so the row is matched, not sliced.
_ROW = re.compile(r"(?P<name>\S.*?)\s+(?P<id>\d+)\s+(?P<mem>\d+)\s+(?P<vcpus>\d+)\s+"
                  r"(?P<flags>[-a-zA-Z?]{6})\s+(?P<time>\d+(?:\.\d+)?)(?:\s.*)?")
_INFO = re.compile(r"(?P<key>[a-z_][a-z0-9_ ]*?)\s*:\s?(?P<value>.*)")


def flags_state(flags: str) -> str:
    """The state name for ``xl list`` flags such as ``-b----``."""
    flags = (flags + "------")[:6]
    if flags[5] == "d":
        return "dying"
    if flags[3] == "s":
        return "crashed" if flags[4] == "c" else "shutdown"
    if flags[2] == "p":
        return "paused"
    return "running"


def parse_list(text: str) -> list[Domain]:
    """Rows of ``xl list`` (the header and anything unparsable skipped)."""
    domains = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("Name "):
            continue
        match = _ROW.fullmatch(line.rstrip())
        if match is None:
            continue
        domains.append(Domain(
            name=match["name"], id=int(match["id"]), state=flags_state(match["flags"]),
            memory=int(match["mem"]), vcpus=int(match["vcpus"]),
            cpu_time=float(match["time"]), flags=match["flags"]))
    return domains


def parse_list_long(text: str) -> dict[str, dict[str, Any]]:
    """``xl list -l``: ``[{"domid": N, "config": {libxl_domain_config}}]`` -> by name.

    Each value holds ``domid``, ``uuid``, ``type`` (``pv``/``hvm``/``pvh``),
    ``max_memory`` (MiB) and ``max_vcpus``.

    :raises XenError: when the output is not that JSON document
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise XenError(f"xl list -l did not print JSON ({exc}); is output_format=json in "
                       "xl.conf?") from None
    if not isinstance(doc, list):
        raise XenError("xl list -l printed JSON that is not a list of domains")
    out: dict[str, dict[str, Any]] = {}
    for entry in doc:
        config = entry.get("config") if isinstance(entry, dict) else None
        c_info = config.get("c_info") if isinstance(config, dict) else None
        if not isinstance(c_info, dict) or not isinstance(c_info.get("name"), str):
            continue
        b_info = config.get("b_info") if isinstance(config.get("b_info"), dict) else {}
        max_kib = b_info.get("max_memkb")
        out[c_info["name"]] = {
            "domid": entry.get("domid"),
            "uuid": c_info.get("uuid"),
            "type": c_info.get("type"),
            "max_memory": max_kib // 1024 if isinstance(max_kib, int) else None,
            "max_vcpus": b_info.get("max_vcpus"),
        }
    return out


def parse_info(text: str) -> dict[str, str]:
    """``xl info``: ``key : value`` lines; a line without a key continues the last value."""
    info: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        match = _INFO.fullmatch(line.rstrip()) if not line.startswith(" ") else None
        if match is not None:
            last = match["key"].strip()
            info[last] = match["value"].strip()
        elif last is not None and line.strip():
            info[last] = f"{info[last]} {line.strip()}"
    return info


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


class XlProvider(Provider):
    """Xen through ``xl``."""

    name = "xl"

    def __init__(self, settings: Mapping[str, Any] | None = None, budget: float = 60.0) -> None:
        super().__init__(settings, budget)
        self.xl = self.find_xl(self.settings.get("xl"))
        self.config_dir = Path(str(self.settings.get("config_dir") or DEFAULT_CONFIG_DIR))
        if not self.config_dir.is_absolute() or "=" in str(self.config_dir):
            raise XenError(f"plugins.xen.config_dir {str(self.config_dir)!r} must be an absolute "
                           "path without '='")
        try:
            self.command_timeout = float(self.settings.get("command_timeout",
                                                           DEFAULT_COMMAND_TIMEOUT))
        except (TypeError, ValueError):
            self.command_timeout = DEFAULT_COMMAND_TIMEOUT

    @staticmethod
    def find_xl(setting: object = None) -> str:
        """The absolute path of ``xl`` (``plugins.xen.xl``: a path, or a name on PATH).

        :raises ProviderUnavailable: when it is not there
        """
        candidate = setting if isinstance(setting, str) and setting else "xl"
        if "/" in candidate:
            if (os.path.isabs(candidate) and os.path.isfile(candidate)
                    and os.access(candidate, os.X_OK)):
                return candidate
            raise ProviderUnavailable(f"{candidate} not found on this node (plugins.xen.xl)")
        found = shutil.which(candidate)
        if not found:
            raise ProviderUnavailable(f"{candidate} not found on this node: install Xen's tools "
                                      "or set plugins.xen.xl")
        return os.path.abspath(found)

    @classmethod
    def available(cls, settings: Mapping[str, Any] | None = None) -> bool:
        try:
            cls.find_xl((settings or {}).get("xl"))
        except ProviderUnavailable:
            return False
        return True

    # -- running xl ----------------------------------------------------------------------
    def xl_run(self, *args: str, timeout: float | None = None) -> Completed:
        what = "xl " + " ".join(args)
        limit = min(self.command_timeout if timeout is None else timeout, self.remaining(what))
        return run_command([self.xl, *args], limit)

    def xl_must(self, *args: str, timeout: float | None = None) -> Completed:
        done = self.xl_run(*args, timeout=timeout)
        if done.returncode != 0:
            shown = " ".join(a for a in args if a != "--")
            raise XenError(f"xl {shown} failed with exit status {done.returncode}: {done.why()}")
        return done

    # -- questions -----------------------------------------------------------------------
    def config_file(self, name: str) -> Path:
        return self.config_dir / f"{name}.cfg"

    def _defined(self, name: str) -> bool:
        return self.config_file(name).is_file()

    def _running(self) -> list[Domain]:
        domains = parse_list(self.xl_must("list").stdout)
        for dom in domains:
            dom.persistent = self._defined(dom.name)
            dom.autostart = (self.config_dir / "auto" / f"{dom.name}.cfg").is_file()
        return domains

    def _shut_off(self, name: str) -> Domain:
        return Domain(name=name, id=None, state="shutoff", persistent=True,
                      autostart=(self.config_dir / "auto" / f"{name}.cfg").is_file())

    def domains(self, include_inactive: bool) -> list[Domain]:
        found = {dom.name: dom for dom in self._running()}
        if include_inactive and self.config_dir.is_dir():
            for path in sorted(self.config_dir.glob("*.cfg")):
                if path.is_file() and domain_ok(path.stem) and path.stem not in found:
                    found[path.stem] = self._shut_off(path.stem)
        return sorted(found.values(), key=lambda d: d.name)

    def lookup(self, name: str) -> Domain | None:
        for dom in self._running():
            if dom.name == name:
                return dom
        return self._shut_off(name) if self._defined(name) else None

    def details(self, name: str) -> Domain | None:
        dom = self.lookup(name)
        if dom is None or dom.id is None:
            return dom
        extra = parse_list_long(self.xl_must("list", "-l").stdout).get(name, {})
        dom.uuid = extra.get("uuid")
        dom.os_type = extra.get("type")
        dom.max_memory = extra.get("max_memory")
        return dom

    def host(self) -> dict[str, Any]:
        info = parse_info(self.xl_must("info").stdout)
        version = info.get("xen_version") or (
            f"{info.get('xen_major', '?')}.{info.get('xen_minor', '?')}{info.get('xen_extra', '')}")
        return {"hypervisor": "Xen", "version": version, "cpus": _int(info.get("nr_cpus")),
                "total_memory": _int(info.get("total_memory")),
                "free_memory": _int(info.get("free_memory")),
                "model": info.get("machine")}

    # -- operations ----------------------------------------------------------------------
    def start(self, name: str) -> None:
        path = self.config_file(name)
        if not path.is_file():
            raise NoSuchDomain(name)
        self.xl_must("create", str(path))

    def shutdown(self, name: str) -> None:
        self.xl_must("shutdown", "--", name)

    def reboot(self, name: str) -> None:
        self.xl_must("reboot", "--", name)

    def destroy(self, name: str) -> None:
        self.xl_must("destroy", "--", name)

    def suspend(self, name: str) -> None:
        self.xl_must("pause", "--", name)

    def resume(self, name: str) -> None:
        self.xl_must("unpause", "--", name)

    def migrate(self, name: str, destination: str, live: bool, timeout: float) -> str:
        if not live:
            raise XenError("xl always migrates live (libxl has no other mode); live=false "
                           "needs the libvirt provider")
        done = self.xl_must("migrate", "--", name, destination, timeout=timeout)
        return (done.stderr.strip() or done.stdout.strip())[-2000:]
