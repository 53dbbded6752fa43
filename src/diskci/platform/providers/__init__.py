"""Compute providers: where CI workers run (``local``: this machine; ``ec2``: EC2 instances).

``provider(name, settings)`` gives the provider of that name, configured from the platform settings;
``catalog(name)`` its regions and instance types without building it. A provider module is imported
only when its provider is asked for. The interface is ``base.ComputeProvider``.
"""

from __future__ import annotations

import importlib

from diskci.errors import InvalidRequest
from diskci.platform.providers.base import ComputeProvider, ProviderCatalog
from diskci.platform.settings import PlatformSettings

__all__ = ["PROVIDERS", "UnknownProvider", "catalog", "provider"]

# name → "module:class" (imported when first asked for)
PROVIDERS: dict[str, str] = {
    "local": "diskci.platform.providers.local:LocalProvider",
    "ec2": "diskci.platform.providers.ec2:EC2Provider",
}


class UnknownProvider(InvalidRequest):
    """A provider name no provider has."""


def _class(name: str) -> type:
    if name not in PROVIDERS:
        choices = ", ".join(sorted(PROVIDERS))
        raise UnknownProvider(f"provider {name!r}: no such compute provider (choices: {choices})")
    module, _, attribute = PROVIDERS[name].partition(":")
    cls: type = getattr(importlib.import_module(module), attribute)
    return cls


def catalog(name: str) -> ProviderCatalog:
    """The regions and instance types of provider ``name``."""
    found: ProviderCatalog = _class(name).catalog  # type: ignore[attr-defined]
    return found


def provider(name: str, settings: PlatformSettings) -> ComputeProvider:
    """The provider ``name``, configured from ``settings`` (its ``from_settings``)."""
    built: ComputeProvider = _class(name).from_settings(settings)  # type: ignore[attr-defined]
    return built
