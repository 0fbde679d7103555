"""Package providers, chosen by ``plugins.package.provider``: ``apt``, ``dnf``, ``yum``, or
``auto`` (the default: the first of apt, dnf, yum whose tool exists on the node)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .apt import AptProvider
from .base import CheckUpdates, CommandResult, PackageState, Provider, ProviderError
from .yum import DnfProvider, YumProvider

__all__ = [
    "PROVIDERS",
    "AptProvider",
    "CheckUpdates",
    "CommandResult",
    "DnfProvider",
    "PackageState",
    "Provider",
    "ProviderError",
    "YumProvider",
    "select_provider",
]

#: name -> class, in the order ``auto`` tries them
PROVIDERS: dict[str, type[Provider]] = {"apt": AptProvider, "dnf": DnfProvider, "yum": YumProvider}


def select_provider(settings: Mapping[str, Any], timeout: float) -> Provider:
    """The provider ``settings["provider"]`` names (default ``auto``).

    :raises ProviderError: unknown name, or ``auto`` found no package manager
    """
    name = str(settings.get("provider") or "auto")
    if name == "auto":
        for cls in PROVIDERS.values():
            if cls.available():
                return cls(settings, timeout)
        raise ProviderError("no package manager found on this node (looked for apt-get, dnf, yum)")
    if name not in PROVIDERS:
        raise ProviderError(f"unknown package provider {name!r} in plugins.package.provider "
                            f"(known: auto, {', '.join(PROVIDERS)})")
    return PROVIDERS[name](settings, timeout)
