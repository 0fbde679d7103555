"""Entry point of collective-auth-actionpolicy: hook implementations only.

Imported by every ``mco`` run and by the daemon, so it imports nothing heavy:
the authorizer and the ``mco policy`` commands are imported inside the hooks.
"""

from __future__ import annotations

from typing import Any

from collective import hookimpl


@hookimpl
def collective_authorizers() -> list[type]:
    from .authorizer import ActionPolicyAuthorizer

    return [ActionPolicyAuthorizer]


@hookimpl
def collective_cli_commands(cli: Any) -> None:
    from .cli import policy

    cli.add_command(policy)
