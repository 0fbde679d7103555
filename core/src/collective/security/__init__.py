"""Signing, verification, identity binding and replay protection.

Providers are resolved lazily from :data:`PROVIDERS` (``"module:Class"``), so importing
this package does not import ``cryptography``. See ``docs/contracts.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import DOMAINS, SecurityError, SecurityProvider, Verified
from .freshness import ReplayGuard

PROVIDERS: dict[str, str] = {
    "ed25519": "collective.security.ed25519:Ed25519Provider",
    "psk": "collective.security.psk:PskProvider",
}

#: Names importable from this package without importing ``cryptography`` up front.
_LAZY: dict[str, str] = {
    "Ed25519Provider": "collective.security.ed25519",
    "PskProvider": "collective.security.psk",
    "InsecureFileError": "collective.security.keys",
    "check_secret_file": "collective.security.keys",
    "generate_keypair": "collective.security.keys",
    "key_id": "collective.security.keys",
    "load_private_key": "collective.security.keys",
    "load_public_key": "collective.security.keys",
}

__all__ = [
    "DOMAINS",
    "PROVIDERS",
    "ReplayGuard",
    "SecurityError",
    "SecurityProvider",
    "Verified",
    "provider_class",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def provider_class(name: str) -> type[SecurityProvider]:
    """The built-in provider class called ``name`` (``ValueError`` if there is none)."""
    try:
        target = PROVIDERS[name]
    except KeyError:
        raise ValueError(f"unknown security provider {name!r} (built in: {', '.join(sorted(PROVIDERS))})") from None
    module, _, attr = target.partition(":")
    cls: Any = getattr(importlib.import_module(module), attr)
    return cls
