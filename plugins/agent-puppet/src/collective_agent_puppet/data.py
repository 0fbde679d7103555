"""Data plugins for ``-S`` filters and action policies (MCollective's ``puppet`` and
``resource`` data plugins).

- ``puppet()`` takes no argument: ``applying``, ``enabled``, ``daemon_present``,
  ``idling``, ``lastrun``, ``since_lastrun``, ``status``, ``disable_message``::

      mco rpc service restart service=httpd -S "puppet().enabled=false"

- ``resource()`` gives the figures of the last run (``failed_resources``,
  ``changed_resources``, ``total_time``, ...); with a resource reference as argument,
  ``managed`` also says whether the last catalog had that resource::

      mco find -S "resource().failed_resources>0"
      mco find -S "resource('file[/srv/www]').managed=true"

Both read the files of the node's puppet agent (``plugins.puppet``) as the agent does.
A failure (no puppet, unreadable files) makes the expression not match.
"""

from __future__ import annotations

from typing import Any

from collective.data import DataPlugin

from .common import RESOURCE_DESCRIPTION, parse_resource

#: seconds a ``puppet config print`` (first use only; then cached) may take
QUERY_TIMEOUT = 10.0


def _paths(node: Any) -> dict[str, str]:
    """The puppet files of the node; a problem is a ValueError (logged without a
    traceback, and the expression does not match)."""
    from . import state

    try:
        settings = state.Settings.from_config(DataPlugin.settings(node, "puppet"))
        return state.locate(settings, min(settings.command_timeout, QUERY_TIMEOUT))
    except state.PuppetError as exc:
        raise ValueError(str(exc)) from None


class PuppetData(DataPlugin):
    """``puppet().enabled``: the state of the node's Puppet agent."""

    name = "puppet"
    description = "The state of the Puppet agent: enabled, applying, idling, last run, ..."
    argument = None
    outputs = {
        "applying": "Whether a catalog is being applied",
        "enabled": "Whether the agent is enabled (not disabled with a lock)",
        "daemon_present": "Whether the puppet agent daemon runs",
        "idling": "Whether the daemon runs but is not applying a catalog",
        "lastrun": "When the last run completed, unix seconds (0: never)",
        "since_lastrun": "Seconds since the last completed run",
        "status": "applying a catalog, idling, stopped or disabled",
        "disable_message": "The message given when the agent was disabled",
    }
    default_output = "status"

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        from . import state

        try:
            current = state.status(_paths(node))
        except state.PuppetError as exc:
            raise ValueError(str(exc)) from None
        return {key: current[key] for key in self.outputs}


class ResourceData(DataPlugin):
    """``resource().failed_resources``, ``resource('file[/srv/www]').managed``."""

    name = "resource"
    description = "Figures of the last Puppet run, and whether a resource is managed"
    argument = "Optional resource reference, e.g. file[/srv/www] (for managed)"
    outputs = {
        "managed": "Whether the last catalog had the resource given as argument",
        "out_of_sync_resources": "Resources that were not in the desired state",
        "failed_resources": "Resources that failed to apply",
        "corrected_resources": "Resources that were correctively changed",
        "changed_resources": "Resources that were changed",
        "total_resources": "Resources in the last catalog",
        "total_time": "Seconds the last run took",
        "config_retrieval_time": "Seconds the catalog retrieval took",
        "lastrun": "When the last run completed, unix seconds (0: never)",
        "since_lastrun": "Seconds since the last completed run",
        "config_version": "Config version of the last catalog",
    }
    default_output = "managed"

    @classmethod
    def validate(cls, argument: str | None) -> None:
        if argument is None:  # the argument is optional
            return
        super().validate(argument)
        try:
            parse_resource(argument)
        except ValueError:
            raise ValueError(f"resource() takes {RESOURCE_DESCRIPTION}, not "
                             f"{argument[:60]!r}") from None

    def query(self, argument: str | None, node: Any) -> dict[str, Any]:
        from . import state

        paths = _paths(node)
        result: dict[str, Any] = {"managed": False}
        if argument is not None:
            kind, title = parse_resource(argument)
            result["managed"] = f"{kind}[{title}]" in state.managed_resources(paths)
        try:
            figures = state.run_figures(state.load_summary(paths))
        except state.PuppetError as exc:
            raise ValueError(str(exc)) from None
        result.update({key: figures[key] for key in self.outputs if key in figures})
        return result
