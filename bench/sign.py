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

A third measurement, in the same rounds, is sigstore-python's own client-side work, which diskci
cannot change: the same signer (``SigstoreSigner``, new per publication) signing the publication's
two statements with every HTTP answer replayed from the answers ``authority serve`` gave once
(``RecordedAnswers``, a test double of the HTTP transport: no server, no network, no bundle files).
It is printed as a part of the API figure, with the ratio of the rest (the authority's server, HTTP
and what diskci does around the signer) to in-process; the headline ratio stays the end-to-end one.
The CPU time each path took (this process, and ``authority serve``'s from /proc) is printed too: on
a loaded machine the wall-clock figures move with the load, the CPU figures far less.

Usage: ``python bench/sign.py [--rounds 20]``.
"""

from __future__ import annotations

import argparse
import collections
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
from unittest import mock

import httpx
import jwt
import requests
import requests.adapters
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from requests.structures import CaseInsensitiveDict

from diskci import mediatypes as mt
from diskci.ci.workflow import WORKFLOW_PATH
from diskci.manifest import Artifact, BuildManifest
from diskci.registry.publication import plan_publication
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import Source, index_statement, provenance_statement, sign_publication
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


class RecordedAnswers(requests.adapters.BaseAdapter):
    """A test double of the HTTP transport under sigstore-python's ``requests`` sessions.

    ``recording()``: real requests go through, and each answer is kept by method and path, in order.
    ``answering()``: every session's requests are answered from those answers (the n-th request to a
    path gets its n-th answer, cycling), with no connection made: what a signer then spends is its
    own client-side work (key, CSR, SCT check, DSSE, entry request, parsing the answers, bundle).
    """

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[tuple[str, str], list[tuple[int, dict[str, str], bytes]]] = {}
        self._served: collections.Counter[tuple[str, str]] = collections.Counter()

    @staticmethod
    def _key(request: requests.PreparedRequest) -> tuple[str, str]:
        return str(request.method), str(request.path_url)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        real_send = requests.adapters.HTTPAdapter.send

        def send(adapter: requests.adapters.HTTPAdapter, request: requests.PreparedRequest, **kw: Any) -> Any:
            resp = real_send(adapter, request, **kw)
            answer = (resp.status_code, dict(resp.headers), resp.content)
            self.answers.setdefault(self._key(request), []).append(answer)
            return resp

        with mock.patch.object(requests.adapters.HTTPAdapter, "send", send):
            yield

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        self._served.clear()
        with mock.patch.object(requests.Session, "get_adapter", lambda session, url: self):
            yield

    def send(self, request: requests.PreparedRequest, **kw: Any) -> requests.Response:  # type: ignore[override]
        key = self._key(request)
        if key not in self.answers:
            raise SystemExit(f"no answer recorded for {key[0]} {key[1]}")
        status, headers, content = self.answers[key][self._served[key] % len(self.answers[key])]
        self._served[key] += 1
        resp = requests.Response()
        resp.status_code, resp.headers, resp._content = status, CaseInsensitiveDict(headers), content
        resp.url, resp.request, resp.encoding = str(request.url), request, "utf-8"
        return resp

    def close(self) -> None:
        pass


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def authority_serve(directory: Path, issuer: str) -> Iterator[tuple[str, int]]:
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
        yield url, proc.pid
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
        with issuer.serving(), authority_serve(authority.directory, issuer.url) as (url, server_pid):
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

            pub = plan_publication(build)
            statements = (
                index_statement(pub),
                provenance_statement(pub, identity=identity, source=Source(), run_id=""),
            )
            answers = RecordedAnswers()

            def client_side() -> int:
                signer = SigstoreSigner(trust, issuer.token())
                with answers.answering():
                    try:
                        for statement in statements:
                            signer.sign_in_toto(statement)
                    finally:
                        signer.close()
                return len(statements)

            timings: dict[str, list[float]] = {"in-process": [], "APIs": [], "client": []}
            # CPU seconds (this process, the server process) per path: what the load does not change
            cpu = {name: [0.0, 0.0] for name in timings}
            in_process()  # warm-up: imports, connections, the issuer's keys fetched
            with answers.recording():
                through_apis()
            client_side()
            bundles = 0
            for _ in range(args.rounds):
                for name, sign in (
                    ("in-process", in_process),
                    ("APIs", through_apis),
                    ("client", client_side),
                ):
                    here, there = time.process_time(), process_cpu_seconds(server_pid)
                    start = time.perf_counter()
                    bundles = sign()
                    timings[name].append((time.perf_counter() - start) / bundles)
                    cpu[name][0] += time.process_time() - here
                    cpu[name][1] += process_cpu_seconds(server_pid) - there
            size = httpx.get(f"{url}/api/v1/log").json()["treeSize"]
    local, remote, client = (statistics.median(timings[n]) * 1000 for n in ("in-process", "APIs", "client"))
    print(f"signing one publication ({bundles} bundles), {args.rounds} rounds each, median per bundle:")
    print(f"  in-process (authority's Python API)      {local:7.1f} ms/bundle")
    print(
        f"  Fulcio + Rekor APIs (authority serve)    {remote:7.1f} ms/bundle   "
        f"ratio {remote / local:.2f} (goal ≤ 1.5, under 200 ms/bundle)"
    )
    print(
        f"    of which sigstore-python's client side {client:7.1f} ms/bundle   (its signer, answers replayed)"
    )
    print(
        f"    the rest (server, HTTP, diskci)        {remote - client:7.1f} ms/bundle   "
        f"ratio {(remote - client) / local:.2f} to in-process"
    )
    signed = args.rounds * bundles / 1000  # ms per bundle
    local_cpu = sum(cpu["in-process"]) / signed
    client_cpu, server_cpu = (c / signed for c in cpu["APIs"])
    print("  CPU per bundle, every process (moves far less with the machine's load):")
    print(
        f"    in-process {local_cpu:.1f} ms; APIs {client_cpu + server_cpu:.1f} ms (signer {client_cpu:.1f}, "
        f"authority serve {server_cpu:.1f}), ratio {(client_cpu + server_cpu) / local_cpu:.2f}; "
        f"sigstore-python's client side {sum(cpu['client']) / signed:.1f} ms"
    )
    print(f"  log size at the end: {size} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
