"""Providers, chosen by ``plugins.xen.provider``: ``libvirt``, ``xl``, or ``auto`` (the
default: libvirt when its Python binding is installed, else xl when it is on PATH)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Completed, Domain, NoSuchDomain, Provider, ProviderUnavailable, XenError

__all__ = [
    "PROVIDER_NAMES",
    "Completed",
    "Domain",
    "NoSuchDomain",
    "Provider",
    "ProviderUnavailable",
    "XenError",
    "provider_for",
]

PROVIDER_NAMES = ("libvirt", "xl")


def provider_for(settings: Mapping[str, Any], budget: float) -> Provider:
    """The provider ``settings["provider"]`` names, with ``budget`` seconds to work.

    :raises XenError: unknown name; :class:`ProviderUnavailable` when its binding or
        tool is missing
    """
    name = str(settings.get("provider") or "auto")
    if name == "auto":
        from .libvirt import available

        if available():
            name = "libvirt"
        else:
            from .xl import XlProvider

            if not XlProvider.available(settings):
                from .libvirt import INSTALL_HINT

                raise ProviderUnavailable(f"no Xen toolstack found: {INSTALL_HINT}; or install "
                                          "xl (Xen's tools) and set plugins.xen.provider: xl")
            name = "xl"
    if name == "libvirt":
        from .libvirt import LibvirtProvider

        return LibvirtProvider(settings, budget)
    if name == "xl":
        from .xl import XlProvider

        return XlProvider(settings, budget)
    raise XenError(f"unknown Xen provider {name!r} in plugins.xen.provider "
                   f"(known: auto, {', '.join(PROVIDER_NAMES)})")
