"""Registers the built-in ``rpcutil`` agent; cheap to import (the agent loads lazily)."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.resources import files
from typing import Any

from collective import hookimpl


@hookimpl
def collective_ddls() -> Iterable[Any]:
    return [files("collective.agents.rpcutil") / "rpcutil.json"]


@hookimpl
def collective_agents() -> Iterable[type]:
    from .agent import Rpcutil  # only the daemon pays for this import

    return [Rpcutil]
