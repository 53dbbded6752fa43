"""sigstore-js (npm ``@sigstore/verify``): a Sigstore verifier independent of sigstore-python.

``make setup`` installs tests/interop/sigstore-js/package-lock.json's packages into
``.venv/sigstore-js`` (``npm ci``); ``verify_with_sigstore_js(...)`` runs its ``verify.js`` on one
bundle with only a trusted root, the way a third party would check a diskci bundle: the certificate
chain, the embedded SCT, the log entry's SET, the inclusion proof and its signed checkpoint, the
signature, the identity and the issuer. A missing node or module skips here and fails in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from host_tools import require_tool, unavailable

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "interop" / "sigstore-js" / "verify.js"
MODULES = Path(os.environ.get("DISKCI_SIGSTORE_JS", ROOT / ".venv" / "sigstore-js")) / "node_modules"


def verify_with_sigstore_js(
    bundle: Path, trusted_root: Path, *, identity: str, issuer: str, artifact: Path | None = None
) -> dict[str, Any]:
    """sigstore-js's verdict: ``{"ok": True, "identity", "issuer"}`` or ``{"ok": False, "code", ...}``."""
    node = require_tool("node", "Debian package 'nodejs'")
    if not (MODULES / "@sigstore" / "verify").is_dir():
        unavailable(f"sigstore-js is not installed in {MODULES}", ci_guarantee="`make setup` installs it")
    argv = [node, str(SCRIPT), str(bundle), str(trusted_root), identity, issuer]
    if artifact is not None:
        argv.append(str(artifact))
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_PATH": str(MODULES)},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    try:
        verdict: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"verify.js printed no verdict: {done.stdout!r} {done.stderr!r}") from None
    assert verdict["ok"] == (done.returncode == 0), verdict
    return verdict


__all__ = ["verify_with_sigstore_js"]
