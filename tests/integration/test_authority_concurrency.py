"""``diskci authority serve`` as a real process under load and under SIGKILL: 8 signer processes at once
(sigstore-python's signer, each with its own OIDC ID token) get 8 distinct entries in a consistent log
and 8 bundles that verify; killed while appends are in flight, the authority restarts with every entry
it acknowledged (answered 201) still in the log, and ``log verify`` passes."""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from loopback import free_port
from typer.testing import CliRunner

from diskci import mediatypes as mt
from diskci.canonical import canonical_json
from diskci.cli.main import app
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import load_trusted_root, verify_bundle
from diskci.supplychain.id_token import identity_of
from diskci.supplychain.policy import IdentityPolicy
from diskci.supplychain.tlog import leaf_hash
from oidc_helpers import FakeIssuer
from polling import http_ok, wait_until

SIGNERS = 8
IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v0.3.0"

# One signer process: reads the authority's trust configuration, waits for the go file (so that all
# of them sign at once), signs one statement through Fulcio and Rekor, writes the bundle.
SIGNER = """
import json, pathlib, sys, time
from diskci.supplychain.sigstore_signer import SigstoreSigner, trust_config_for
url, token, n, go, out = sys.argv[1:]
signer = SigstoreSigner(trust_config_for(url), token)
while not pathlib.Path(go).exists():
    time.sleep(0.01)
statement = {
    "_type": "https://in-toto.io/Statement/v1",
    "subject": [{"name": f"debian-12:1.0.{n}", "digest": {"sha256": f"{int(n):02x}" * 32}}],
    "predicateType": "https://sigstore.dev/cosign/sign/v1",
    "predicate": {},
}
bundle, index = signer.sign_in_toto(statement)
pathlib.Path(out).write_bytes(bundle)
print(index)
"""


@contextlib.contextmanager
def served_issuer(fake: FakeIssuer, port: int) -> Iterator[None]:
    """``fake``'s discovery document and JWK Set over real HTTP on 127.0.0.1 (the authority is
    another process)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = fake.transport.handle_request(httpx.Request("GET", f"{fake.url}{self.path}"))
            body = answer.read()
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def authority_serve(directory: Path, issuer: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    argv = [sys.executable, "-m", "diskci.cli.main", "authority", "serve", str(directory)]
    argv += ["--port", str(port), "--oidc-issuer", issuer]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:

        def serving() -> bool:
            assert proc.poll() is None, f"authority serve exited: {log.read_text()[-2000:]}"
            return http_ok(f"{url}/api/v1/log")

        wait_until(serving, 30, interval=0.1, what="authority serve to start")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def log_verify(directory: Path) -> dict[str, Any]:
    r = CliRunner().invoke(app, ["authority", "log", "verify", str(directory), "--json"])
    assert r.exit_code == 0, r.output
    summary: dict[str, Any] = json.loads(r.stdout)
    return summary


def test_eight_processes_signing_at_once(tmp_path: Path) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    issuer_port = free_port()
    fake = FakeIssuer(f"http://127.0.0.1:{issuer_port}")
    identity = identity_of(fake.claims())
    go = tmp_path / "go"
    with (
        served_issuer(fake, issuer_port),
        authority_serve(auth.directory, fake.url, tmp_path / "serve.log") as (url, _),
    ):
        signers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    SIGNER,
                    url,
                    fake.token(jti=f"j{n}"),
                    str(n),
                    str(go),
                    str(tmp_path / f"{n}.json"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            for n in range(SIGNERS)
        ]
        time.sleep(0.5)
        go.touch()
        indexes = []
        for n, proc in enumerate(signers):
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (n, err.decode()[-3000:])
            indexes.append(int(out))
        assert sorted(indexes) == list(range(SIGNERS))  # one entry each, none lost or duplicated
        assert httpx.get(f"{url}/api/v1/log").json()["treeSize"] == SIGNERS

    summary = log_verify(auth.directory)
    assert (summary["entries"], summary["checkpoints_checked"]) == (SIGNERS, SIGNERS)
    trusted = load_trusted_root(auth.directory / "trusted_root.json")
    policy = IdentityPolicy(identity_regexp=re.escape(identity), issuer=fake.url)
    for n in range(SIGNERS):
        verified = verify_bundle(
            (tmp_path / f"{n}.json").read_bytes(),
            subject_digest="sha256:" + f"{n:02x}" * 32,
            policy=policy,
            trusted_root=trusted,
        )
        assert verified.log_index == indexes[n] and verified.identity == identity


def _proposed_entries(auth: SigningAuthority, count: int) -> list[dict[str, Any]]:
    """``count`` distinct proposed dsse entries, each signed with its own key certified in-process."""
    proposals = []
    for n in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = auth.issue_certificate(key, identity=IDENTITY, issuer="https://git.example.com")
        payload = canonical_json(
            {
                "_type": mt.IN_TOTO_STATEMENT_V1,
                "subject": [{"name": f"crash-{n}", "digest": {"sha256": f"{n:064x}"}}],
                "predicateType": mt.COSIGN_SIGN_PREDICATE,
                "predicate": {},
            },
            ascii_only=True,
        )
        ptype = mt.IN_TOTO_PAYLOAD_TYPE
        pae = b"DSSEv1 %d %s %d %s" % (len(ptype), ptype.encode(), len(payload), payload)
        envelope = {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": ptype,
            "signatures": [{"sig": base64.b64encode(key.sign(pae, ec.ECDSA(hashes.SHA256()))).decode()}],
        }
        pem = base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode()
        content = {"envelope": json.dumps(envelope), "verifiers": [pem]}
        proposals.append({"apiVersion": "0.0.1", "kind": "dsse", "spec": {"proposedContent": content}})
    return proposals


def test_sigkill_mid_append_loses_no_acknowledged_entry(tmp_path: Path) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    proposals = _proposed_entries(auth, 200)
    acknowledged: list[tuple[int, str, bytes]] = []  # (logIndex, uuid, body)
    lock = threading.Lock()
    fake = FakeIssuer()  # no token is needed to log an entry; serve wants an issuer all the same

    with authority_serve(auth.directory, fake.url, tmp_path / "serve.log") as (url, proc):

        def append_until_killed(mine: list[dict[str, Any]]) -> None:
            with httpx.Client(timeout=10) as client:
                for proposed in mine:
                    try:
                        r = client.post(f"{url}/api/v1/log/entries", json=proposed)
                    except httpx.TransportError:
                        return  # the server is gone
                    assert r.status_code == 201, r.text
                    [(uuid, entry)] = r.json().items()
                    with lock:
                        acknowledged.append((entry["logIndex"], uuid, base64.b64decode(entry["body"])))

        threads = [threading.Thread(target=append_until_killed, args=(proposals[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acknowledged) >= 30, 60, what="30 acknowledged appends")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    assert 30 <= len(acknowledged) < len(proposals), "the kill came after every append"

    # restarted: nothing acknowledged is lost, and the log is consistent
    summary = log_verify(auth.directory)
    assert summary["entries"] >= len(acknowledged)
    with authority_serve(auth.directory, fake.url, tmp_path / "serve.log") as (url, _):
        size = httpx.get(f"{url}/api/v1/log").json()["treeSize"]
        assert size == summary["entries"]
        for index, uuid, body in acknowledged:
            assert uuid.endswith(leaf_hash(body).hex())
            r = httpx.get(f"{url}/api/v1/log/entries/{uuid}")
            assert r.status_code == 200, (index, r.text)
            [entry] = r.json().values()
            assert entry["logIndex"] == index and base64.b64decode(entry["body"]) == body
        # and it keeps appending after the crash
        r = httpx.post(f"{url}/api/v1/log/entries", json=proposals[-1])
        assert r.status_code in (201, 409), r.text
    assert log_verify(auth.directory)["entries"] >= size


@pytest.mark.parametrize("tail", [b'{"index":', b"\x00" * 37], ids=["cut-record", "zeros"])
def test_an_append_cut_short_is_dropped_at_the_next_append(tmp_path: Path, tail: bytes) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    [first, second] = _proposed_entries(auth, 2)
    auth.log_proposed(first)
    with auth.log.path.open("ab") as f:  # what a crash inside write(2) leaves
        f.write(tail)
    summary = log_verify(auth.directory)
    assert (summary["entries"], summary["partial_tail_bytes"]) == (1, len(tail))
    assert auth.log_proposed(second).log_index == 1
    summary = log_verify(auth.directory)
    assert (summary["entries"], summary["partial_tail_bytes"]) == (2, 0)
