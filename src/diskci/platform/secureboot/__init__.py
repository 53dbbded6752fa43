"""Secure Boot: the platform signs the UKIs of verified publications with the fleet's key.

``keys``: the fleet key pair in files (never in the database), created and rotated here, exported for
enrolment. ``signer``: the ``UkiSigner`` interface (``sbsign`` with the key file by default, or a
plug-in such as an HSM's). ``signing``: what the processor calls after a publication is published:
each architecture's verified ``uki.efi`` gets the URLs the initramfs needs and a validity window
appended to its ``.cmdline``, is signed, enters the blob cache and is recorded as ``uki.signed.efi``.
``varstore``: OVMF/AAVMF variable stores with the key enrolled as PK, KEK and db (virt-fw-vars).
``ipxe``: iPXE's EFI binary signed by the same signer, the boot loader a Secure Boot machine's
firmware starts (it fetches ``/boot.ipxe`` and chains the signed UKI through the firmware's LoadImage).
"""
