"""``diskci authority serve --oidc-issuer <platform>`` and ``diskci platform serve`` as real processes: a
CI job's ``diskci sign --authority URL`` asks the platform for its ID token (ACTIONS_ID_TOKEN_REQUEST_*)
and gets certificates naming its workflow; a forged token is refused with a clear 401 message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from loopback import free_port
from served_platform import platform_serve, serve_env
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.errors import Unauthorized, UsageError
from diskci.platform.db.session import Database
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import IdentityPolicy
from diskci.supplychain.verifier import verify_publication
from oidc_helpers import platform_row, start_job, workflow_identity
from polling import http_ok, wait_until

SECRET_KEY = "authority-serve-test-key-" + "s" * 16


def test_a_ci_job_signs_as_its_workflow_through_the_served_authority(
    make_build: Callable[..., Path], tmp_path: Path
) -> None:
    auth = SigningAuthority.init(tmp_path / "authority")
    state = tmp_path / "state"
    with platform_serve(serve_env(state, SECRET_KEY), tmp_path / "platform.log", consumer=False) as platform:
        issuer = httpx.get(f"{platform.base}/.well-known/openid-configuration").json()["issuer"]
        db = Database(f"sqlite:///{state / 'platform.db'}")
        try:
            _, runtime = start_job(db, platform_row(db, "debian-12"))
        finally:
            db.dispose()
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "diskci.cli.main",
            "authority",
            "serve",
            str(auth.directory),
            "--port",
            str(port),
            "--oidc-issuer",
            issuer,
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
            runner = CliRunner()
            job_env = {
                "ACTIONS_ID_TOKEN_REQUEST_URL": f"{platform.base}/api/actions/id-token",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": runtime,
                "DISKCI_ID_TOKEN": "",
            }
            r = runner.invoke(app, ["sign", str(build), "--authority", url, "--json"], env=job_env)
            assert r.exit_code == 0, r.output
            assert json.loads(r.stdout)["log_indexes"] == [0, 1]
            assert json.loads(r.stdout)["identity"] == workflow_identity(issuer, "debian-12")
            assert httpx.get(f"{url}/api/v1/log").json()["treeSize"] == 2

            # a token the platform did not sign, claiming the same job: refused, clearly
            real = httpx.get(
                f"{platform.base}/api/actions/id-token?audience=sigstore",
                headers={"Authorization": f"Bearer {runtime}"},
            ).json()["value"]
            claims = jwt.decode(real, options={"verify_signature": False})
            forged = jwt.encode(
                claims,
                ec.generate_private_key(ec.SECP256R1()),
                algorithm="ES256",
                headers=jwt.get_unverified_header(real),
            )
            other_build = make_build("other")
            r = runner.invoke(
                app, ["sign", str(other_build), "--authority", url, "--id-token", forged], env=job_env
            )
            assert isinstance(r.exception, Unauthorized), r.output
            assert (
                f"refused the ID token: the ID token's signature does not verify with {issuer}'s key"
                in str(r.exception)
            )
            # an identity other than the job's is refused before anything is signed
            other = workflow_identity(issuer, "other-platform")
            r = runner.invoke(app, ["sign", str(build), "--authority", url, "--identity", other], env=job_env)
            assert isinstance(r.exception, UsageError) and "is not the CI job's identity" in str(r.exception)
            # no token at all
            r = runner.invoke(
                app,
                ["sign", str(build), "--authority", url],
                env={
                    "ACTIONS_ID_TOKEN_REQUEST_URL": "",
                    "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "",
                    "DISKCI_ID_TOKEN": "",
                },
            )
            assert isinstance(r.exception, UsageError) and "needs the CI job's OIDC ID token" in str(
                r.exception
            )
            assert httpx.get(f"{url}/api/v1/log").json()["treeSize"] == 2  # nothing more was logged
        finally:
            proc.terminate()
            proc.wait(10)
    policy = IdentityPolicy(
        identity_regexp=rf"{issuer}/debian-12/\.gitea/workflows/build\.yaml@refs/tags/v.*", issuer=issuer
    )
    result = verify_publication(build, policy, trusted_root=auth.directory / "trusted_root.json")
    assert result.identity == workflow_identity(issuer, "debian-12")
