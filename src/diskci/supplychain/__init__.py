"""Supply chain: the embedded signing authority, sigstore bundles, the one publication verifier, policy.

Public entry points: ``diskci.supplychain.authority.SigningAuthority``,
``diskci.supplychain.bundle.sign_publication`` / ``verify_bundle``,
``diskci.supplychain.verifier.PublicationVerifier`` / ``verify_publication`` (what a valid publication
is, for ``diskci verify`` and the platform alike; it reads through ``diskci.supplychain.readers`` and
records ``diskci.supplychain.verified.PublicationArtifacts``),
``diskci.supplychain.policy.IdentityPolicy`` (also re-exported by ``bundle``).
"""
