"""``served_authority(directory, verifier)``: the authority's Fulcio/Rekor app on a free loopback port
in a thread, for clients that speak HTTP themselves (sigstore-python's signer uses requests)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from loopback import free_port

from diskci.supplychain.authority_http import create_app
from diskci.supplychain.id_token import IdTokenVerifier
from polling import wait_until


@contextlib.contextmanager
def served_authority(directory: Path, verifier: IdTokenVerifier) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        create_app(directory, verifier=verifier), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, interval=0.05, what="the authority to serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
