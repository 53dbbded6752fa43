"""Supply chain: the embedded signing authority, sigstore bundles (sign and verify), identity policy.

Public entry points: ``diskci.supplychain.authority.SigningAuthority``,
``diskci.supplychain.bundle.sign_publication`` / ``verify_publication`` / ``verify_bundle``,
``diskci.supplychain.policy.IdentityPolicy`` (also re-exported by ``bundle``).
"""
