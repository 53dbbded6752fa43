"""``diskci authority serve`` as a real process; ``diskci sign --authority URL`` with a signer credential."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.errors import UsageError
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import IdentityPolicy
from diskci.supplychain.verifier import verify_publication
from polling import http_ok, wait_until

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v2"


def test_sign_through_served_authority(make_build: Callable[..., Path], tmp_path: Path) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    token = auth.add_credential(
        "runner-1", issuer="https://git.example.com", identity_prefix="https://git.example.com/"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        sys.executable,
        "-m",
        "diskci.cli.main",
        "authority",
        "serve",
        str(auth.directory),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "CI": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def serving() -> bool:
            if http_ok(f"{url}/api/v1/log"):
                return True
            assert proc.poll() is None, "authority serve did not start"
            return False

        wait_until(serving, 30, interval=0.2, what="authority serve to start")
        build = make_build()
        cred = tmp_path / "signer.token"
        cred.write_text(token + "\n")
        runner = CliRunner()
        r = runner.invoke(
            app,
            [
                "sign",
                str(build),
                "--identity",
                IDENTITY,
                "--authority",
                url,
                "--credential-file",
                str(cred),
                "--json",
            ],
        )
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["log_indexes"] == [0, 1]
        assert httpx.get(f"{url}/api/v1/log").json()["treeSize"] == 2
        # a signer without a credential gets a clear refusal
        r = runner.invoke(app, ["sign", str(build), "--identity", IDENTITY, "--authority", url])
        assert isinstance(r.exception, UsageError)
        assert "needs a signer credential" in str(r.exception)
    finally:
        proc.terminate()
        proc.wait(10)
    policy = IdentityPolicy(
        identity_regexp=r"https://git\.example\.com/ops/.*", issuer="https://git.example.com"
    )
    result = verify_publication(build, policy, trusted_root=auth.directory / "trusted_root.json")
    assert result.identity == IDENTITY
