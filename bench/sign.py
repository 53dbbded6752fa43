"""Benchmark: signing a publication through the authority's Fulcio/Rekor HTTP APIs against in-process.

One run, same machine, same authority, same publication (its two statements: the index digest and
the provenance, so two bundles):

1. **in-process** (the reference): ``sign_publication(BUILD, authority=SigningAuthority)``: the
   certificate issued and the entry appended by calling the authority's Python API, no HTTP;
2. **through the APIs**: ``diskci authority serve`` as its own process on 127.0.0.1, a CI job's OIDC
   ID token (a stand-in issuer on 127.0.0.1 serving its discovery document and JWK Set), and
   sigstore-python's signer (``SigstoreSigner``, a new one per publication, as a CI job makes it):
   ``POST /api/v2/signingCert`` (token verified, proof of possession, certificate with an SCT; the
   signer keeps its key and certificate for both statements) and per bundle ``POST
   /api/v1/log/entries`` (inclusion proof, checkpoint, SET), the client checking the SCT and the
   log's answer.

The two alternate for ``--rounds`` publications each (default 20, after one untimed warm-up of each);
the median ms per bundle of each and the ratio API / in-process are printed (goal: ≤ 1.5 and under
200 ms per bundle). Both sign into the same log, so each bundle is appended to the same tree.

Usage: ``python bench/sign.py [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from diskci import mediatypes as mt
from diskci.ci.workflow import WORKFLOW_PATH
from diskci.manifest import Artifact, BuildManifest
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import sign_publication
from diskci.supplychain.sigstore_signer import SigstoreSigner, trust_config_for

REF = "refs/tags/v1.0.0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def small_build(dest: Path) -> Path:
    """A build of one architecture with three small artifacts: what is signed is their digests."""
    m = BuildManifest(
        platform="debian-12-amd64",
        version="bench",
        spec_digest="ab" * 32,
        spec={},
        source_date_epoch=1764000000,
    )
    arch = dest / "amd64"
    arch.mkdir(parents=True)
    for name, media_type in (
        ("vmlinuz", mt.KERNEL),
        ("initramfs.img", mt.INITRAMFS),
        ("rootfs.img", mt.ROOT_IMAGE),
    ):
        (arch / name).write_bytes(os.urandom(256 * 1024))
        m.arch("amd64").add(Artifact.from_file(dest, arch / name, media_type))
    m.save(dest)
    return dest


class Issuer:
    """An OIDC issuer on 127.0.0.1 (discovery document and JWK Set) minting CI job ID tokens."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = ec.generate_private_key(ec.SECP256R1())

    def token(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "sub": f"repo:debian-12:ref:{REF}",
            "aud": "sigstore",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "repository": "debian-12",
            "ref": REF,
            "sha": "0" * 40,
            "workflow_ref": f"debian-12/{WORKFLOW_PATH}@{REF}",
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "k1"})

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        jwk = {**ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True), "kid": "k1", "alg": "ES256"}
        documents = {
            "/.well-known/openid-configuration": {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"},
            "/jwks": {"keys": [jwk]},
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                doc = documents.get(self.path)
                body = json.dumps(doc).encode()
                self.send_response(200 if doc else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


@contextlib.contextmanager
def authority_serve(directory: Path, issuer: str) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "diskci.cli.main", "authority", "serve", str(directory)]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), "--oidc-issuer", issuer],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/api/v1/log", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("diskci authority serve did not start")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="publications signed by each path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="diskci-bench-sign-") as tmp_name:
        tmp = Path(tmp_name)
        authority = SigningAuthority.init(tmp / "authority")
        build = small_build(tmp / "build")
        issuer = Issuer()
        identity = f"{issuer.url}/debian-12/{WORKFLOW_PATH}@{REF}"
        with issuer.serving(), authority_serve(authority.directory, issuer.url) as url:
            trust = trust_config_for(url)

            def in_process() -> int:
                return len(
                    sign_publication(build, authority=authority, identity=identity, issuer=issuer.url).bundles
                )

            def through_apis() -> int:
                signer = SigstoreSigner(trust, issuer.token())  # a CI job: its token, its signer
                try:
                    return len(sign_publication(build, authority=signer, identity=signer.identity).bundles)
                finally:
                    signer.close()

            timings: dict[str, list[float]] = {"in-process": [], "APIs": []}
            in_process(), through_apis()  # warm-up: imports, connections, the issuer's keys fetched
            bundles = 0
            for _ in range(args.rounds):
                for name, sign in (("in-process", in_process), ("APIs", through_apis)):
                    start = time.perf_counter()
                    bundles = sign()
                    timings[name].append((time.perf_counter() - start) / bundles)
            size = httpx.get(f"{url}/api/v1/log").json()["treeSize"]
    local = statistics.median(timings["in-process"]) * 1000
    remote = statistics.median(timings["APIs"]) * 1000
    print(f"signing one publication ({bundles} bundles), {args.rounds} rounds each, median per bundle:")
    print(f"  in-process (authority's Python API)      {local:7.1f} ms/bundle")
    print(
        f"  Fulcio + Rekor APIs (authority serve)    {remote:7.1f} ms/bundle   "
        f"ratio {remote / local:.2f} (goal ≤ 1.5, under 200 ms/bundle)"
    )
    print(f"  log size at the end: {size} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
