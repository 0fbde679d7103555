"""The ``xen()`` data plugin: ``-S 'xen("web01").present=true'``, ``xen("web01")=running``.

It asks the same provider as the agent (``plugins.xen`` in the node's config), with
``plugins.xen.data_timeout`` seconds (default 5): it runs while the daemon decides
whether a request is meant for it. With libvirt it shares the agent's connection,
so it sees what the agent just did. A domain the hypervisor does not know gives
``present=false``; a missing binding or tool, or a failing lookup, gives
``present=null`` and ``state=unknown``, so the expression does not match.

``mco xen find`` and the other ``mco xen DOMAIN`` commands send
``xen("DOMAIN").present=true`` as a filter, so only the host that has the domain
answers.
"""

from __future__ import annotations

from typing import Any

from collective.data import DataPlugin

from .common import DOMAIN_DESCRIPTION, domain_ok

#: default seconds one lookup may take
DEFAULT_DATA_TIMEOUT = 5.0


class XenData(DataPlugin):
    """``xen("web01").state``: running, paused, shutoff, ... or unknown."""

    name = "xen"
    description = "Whether this host has a Xen domain, and its state"
    argument = "Domain name, e.g. web01"
    outputs = {
        "present": "Whether the hypervisor knows the domain (running or defined)",
        "state": "running, blocked, paused, shutdown, shutoff, crashed, ... or unknown",
        "id": "The domain id, null while shut off",
    }
    default_output = "state"

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        if not domain_ok(argument):
            raise ValueError(f"xen() needs {DOMAIN_DESCRIPTION}, not {str(argument)[:70]!r}")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        from .providers import XenError, provider_for

        settings = self.settings(node, "xen")
        try:
            budget = float(settings.get("data_timeout", DEFAULT_DATA_TIMEOUT))
        except (TypeError, ValueError):
            budget = DEFAULT_DATA_TIMEOUT
        if not domain_ok(argument):
            return {"present": None, "state": "unknown", "id": None}
        try:
            provider = provider_for({**settings, "command_timeout": budget}, budget)
            dom = provider.lookup(str(argument))
        except XenError:
            return {"present": None, "state": "unknown", "id": None}
        if dom is None:
            return {"present": False, "state": "unknown", "id": None}
        return {"present": True, "state": dom.state, "id": dom.id}
