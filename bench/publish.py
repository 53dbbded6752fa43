"""Benchmark: publishing a build against copying its bytes, and verifying it against ``sha256sum``.

One run, same machine, same bytes:

1. ``cp -r BUILD COPY`` (the baseline for moving the bytes; coreutils may clone or use
   copy_file_range, so ``cp -r --reflink=never`` is timed too), then the copy is signed in-process;
2. ``push_publication(COPY, registry)`` to Debian's docker-registry on 127.0.0.1 (fresh storage);
3. ``verify_publication(REF)``: pull with every digest checked, sha256 and fs-verity of every artifact,
   both sigstore bundles — against ``sha256sum`` of the same artifact files;
4. ``verify_publication(COPY)`` (a local directory: no download) against the same ``sha256sum``.

The build is ``--build DIR`` (or ``$DISKCI_BENCH_BUILD``); without one, a synthetic build of about
300 MB of random (incompressible) data shaped like a real one. The output says which was used.
Usage: ``python bench/publish.py [--build DIR] [--size-mib 300]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from diskci import mediatypes as mt
from diskci.manifest import Artifact, BuildManifest
from diskci.registry.push import push_publication
from diskci.supplychain.authority import SigningAuthority
from diskci.supplychain.bundle import IdentityPolicy, sign_publication, verify_publication

IDENTITY = "https://git.example.com/ops/images/.gitea/workflows/build.yaml@refs/tags/v1"
ISSUER = "https://git.example.com"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def synthetic_build(dest: Path, size_mib: int) -> Path:
    """Random data in the proportions of a real amd64 build (rootfs.tar the biggest part)."""
    shares = [
        ("rootfs.tar", mt.ROOTFS_TAR, 0.40, False),
        ("rootfs.img", mt.ROOT_IMAGE, 0.25, True),
        ("disk.qcow2", mt.DISK_QCOW2, 0.20, False),
        ("initramfs.img", mt.INITRAMFS, 0.10, False),
        ("vmlinuz", mt.KERNEL, 0.05, False),
    ]
    m = BuildManifest(
        platform="debian-12-amd64",
        version="bench",
        spec_digest="ab" * 32,
        spec={},
        source_date_epoch=1764000000,
    )
    arch_dir = dest / "amd64"
    arch_dir.mkdir(parents=True)
    for name, media_type, share, verity in shares:
        with open(arch_dir / name, "wb") as f:
            for _ in range(max(1, int(size_mib * share))):
                f.write(os.urandom(1 << 20))
        m.arch("amd64").add(Artifact.from_file(dest, arch_dir / name, media_type, with_fsverity=verity))
    m.save(dest)
    return dest


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                return proc, address
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--build", type=Path, default=os.environ.get("DISKCI_BENCH_BUILD") or None)
    parser.add_argument("--size-mib", type=int, default=300)
    args = parser.parse_args()
    if shutil.which("docker-registry") is None:
        print("docker-registry (Debian package docker-registry) is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-publish-", dir="/var/tmp") as tmpdir:
        tmp = Path(tmpdir)
        if args.build:
            source, kind = Path(args.build), f"real build {args.build}"
        else:
            source = synthetic_build(tmp / "synthetic", args.size_mib)
            kind = f"synthetic build ({args.size_mib} MiB of random data, shaped like an amd64 build)"
        build = BuildManifest.load(source)
        files = [str(source / a.path) for a in build.all_artifacts()]
        total = sum(a.size for a in build.all_artifacts())
        print(f"input: {kind}: {len(files)} artifacts, {total / 1e6:.0f} MB")

        cp_t, _ = timed(lambda: subprocess.run(["cp", "-r", str(source), str(tmp / "copy")], check=True))
        copy = tmp / "copy"
        cp_full_t, _ = timed(
            lambda: subprocess.run(
                ["cp", "-r", "--reflink=never", str(source), str(tmp / "copy2")], check=True
            )
        )
        shutil.rmtree(tmp / "copy2")
        shutil.rmtree(copy / "signatures", ignore_errors=True)
        authority = SigningAuthority.init(tmp / "authority", default_issuer=ISSUER)
        sign_t, _ = timed(
            lambda: sign_publication(copy, authority=authority, identity=IDENTITY, issuer=ISSUER)
        )
        proc, address = start_registry(tmp / "registry")
        try:
            ref = f"{address}/bench/disk-images/{build.platform}:{build.version}"
            push_t, pushed = timed(lambda: push_publication(copy, ref))
            repush_t, _ = timed(lambda: push_publication(copy, ref))
            policy = IdentityPolicy(identity_regexp=r"https://git\.example\.com/ops/.*", issuer=ISSUER)
            root = authority.directory / "trusted_root.json"
            verify_ref_t, _ = timed(lambda: verify_publication(ref, policy, trusted_root=root))
            sha_t, _ = timed(lambda: subprocess.run(["sha256sum", *files], check=True, capture_output=True))
            verify_dir_t, _ = timed(lambda: verify_publication(copy, policy, trusted_root=root))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"cp -r                      {cp_t:7.2f} s  ({total / cp_t / 1e6:6.0f} MB/s)")
    print(f"cp -r --reflink=never      {cp_full_t:7.2f} s  ({total / cp_full_t / 1e6:6.0f} MB/s)")
    print(f"sign (2 bundles)           {sign_t:7.2f} s")
    print(
        f"push to docker-registry    {push_t:7.2f} s  ({total / push_t / 1e6:6.0f} MB/s, "
        f"{pushed.blobs_sent} blobs)   push / cp = {push_t / cp_t:.2f}, "
        f"push / cp --reflink=never = {push_t / cp_full_t:.2f}"
    )
    print(f"re-push (all present)      {repush_t:7.2f} s")
    print(f"sha256sum                  {sha_t:7.2f} s")
    print(f"verify REF (pull+check)    {verify_ref_t:7.2f} s   ratio {verify_ref_t / sha_t:.2f}")
    print(f"verify DIR (local)         {verify_dir_t:7.2f} s   ratio {verify_dir_t / sha_t:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
