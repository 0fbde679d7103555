"""The ``service()`` data plugin: ``-S 'service("nginx").status=running'``.

It asks the same provider as the agent (``plugins.service`` in the node's config)
with a short time budget. A service the init system does not know gives
``present=false`` and ``status=unknown``; a missing tool or a failing command
gives ``status=unknown`` too, so the expression just does not match.
"""

from __future__ import annotations

from typing import Any

from collective.data import DataPlugin

from .providers import UNKNOWN, NoSuchService, ServiceError, check_name, provider_for

#: seconds one lookup may take (it runs while the daemon decides whether to answer)
QUERY_TIMEOUT = 10.0


class ServiceData(DataPlugin):
    """``service("nginx").status``: running, stopped or unknown."""

    name = "service"
    description = "The status of a service: running, stopped or unknown"
    argument = "Service name, e.g. nginx"
    outputs = {
        "status": "running, stopped or unknown",
        "present": "Whether the init system knows the service",
    }
    default_output = "status"

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        check_name(argument)

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        service = check_name(argument)
        settings = self.settings(node, "service")
        try:
            provider = provider_for(settings, QUERY_TIMEOUT)
            provider.check(service)
            return {"status": provider.status(service), "present": True}
        except NoSuchService:
            return {"status": UNKNOWN, "present": False}
        except ServiceError:
            return {"status": UNKNOWN, "present": None}
