"""OCI publication: push, pull and delete with oras-py; OCI image layout store; media types.

The face of the room: ``open_registry(ref)`` picks the back end for a reference (an OCI image layout
directory or a distribution registry repository) and returns it as a ``RegistryClient``
(``diskci.registry.store``). Publishing and fetching whole publications: ``diskci.registry.push`` and
``diskci.registry.pull``.
"""

from __future__ import annotations

from diskci.registry.reference import Reference
from diskci.registry.store import BlobSource, Descriptor, RegistryClient

__all__ = ["BlobSource", "Descriptor", "Reference", "RegistryClient", "open_registry"]


def open_registry(ref: Reference | str, *, insecure: bool | None = None) -> RegistryClient:
    """A client for ``ref``'s registry repository or layout directory.

    ``insecure`` (plain HTTP) defaults to True only for loopback hosts (127.0.0.1, localhost).
    """
    if isinstance(ref, str):
        ref = Reference.parse(ref)
    if ref.is_layout:  # each back end is imported only when used (the remote one pulls in oras-py)
        from diskci.registry.layout import LayoutRegistry

        return LayoutRegistry(ref)
    from diskci.registry.remote import RemoteRegistry

    return RemoteRegistry(ref, insecure=ref.is_loopback if insecure is None else insecure)
