"""The ``package()`` data plugin: ``-S 'package("nginx").installed=true'``,
``package("openssl").version``, ``package("vim").status`` (MCollective's
``package('x').installed`` / ``.status``).

It asks the same provider as the agent (``plugins.package`` in the node's config) for the
package's state, with a short time budget, because it runs while the node decides
whether a request is for it. A package the database does not know is ``installed=false``
with ``status`` ``purged`` (dpkg) or ``absent``; a missing tool or a failing query gives
null values, so a comparison just does not match.
"""

from __future__ import annotations

from typing import Any

from collective.data import DataPlugin
from collective.formats import SERVICE_NAME_RE, regex_check

#: seconds one lookup may take
QUERY_TIMEOUT = 10.0

_package_name = regex_check(SERVICE_NAME_RE)


class PackageData(DataPlugin):
    """``package("nginx").installed``: whether and which version of a package is installed."""

    name = "package"
    description = "Whether a package is installed, its version and its state"
    argument = "Package name, e.g. nginx"
    outputs = {
        "installed": "Whether the package is installed",
        "status": "The installed version, or absent / purged (MCollective's ensure)",
        "version": "The installed version as the agent's status reports it, null when not installed",
        "arch": "The installed architecture, null when not installed",
    }
    default_output = "status"

    @classmethod
    def validate(cls, argument: str | None) -> None:
        super().validate(argument)
        if not _package_name(argument or ""):
            raise ValueError("package() takes a package name: letters, digits and @._+:- "
                             "starting with a letter or digit")

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        from .providers import ProviderError, select_provider

        settings = self.settings(node, "package")
        try:
            state = select_provider(settings, QUERY_TIMEOUT).status(argument or "")
        except ProviderError:
            return {"installed": None, "status": None, "version": None, "arch": None}
        return {"installed": state.installed, "status": state.ensure,
                "version": state.version if state.installed else None,
                "arch": state.arch if state.installed else None}
