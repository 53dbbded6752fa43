"""A stand-in for ``diskci build SPEC --arch A --out DIR`` in workflow tests: a tiny build directory
(kernel, fs-verity root image, package list) with the build.json a real build of that spec would have,
made in milliseconds. Run as a script; every other diskci command goes to the real one."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

from diskci import mediatypes as mt
from diskci.manifest import Artifact, BuildManifest
from diskci.spec import load_spec

SOURCE_DATE_EPOCH = 1764000000


def fake_build(spec_file: Path, arch: str, out: Path) -> Path:
    spec = load_spec(spec_file)
    manifest = BuildManifest(
        platform=spec.name,
        version=spec.version,
        spec_digest=spec.digest(),
        spec=spec.normalized(),
        source_date_epoch=SOURCE_DATE_EPOCH,
        tools={"fake-build": "1"},
    )
    arch_dir = out / arch
    arch_dir.mkdir(parents=True, exist_ok=True)
    seed = hashlib.sha256(arch.encode()).digest()
    (arch_dir / "vmlinuz").write_bytes(seed * 512)
    (arch_dir / "root.squashfs").write_bytes(os.urandom(50_000))
    (arch_dir / "packages.json").write_text('{"packages": ["busybox-static"]}')
    ab = manifest.arch(arch)
    ab.add(Artifact.from_file(out, arch_dir / "vmlinuz", mt.KERNEL))
    ab.add(Artifact.from_file(out, arch_dir / "root.squashfs", mt.ROOT_IMAGE, with_fsverity=True))
    ab.add(Artifact.from_file(out, arch_dir / "packages.json", mt.PACKAGES_JSON))
    manifest.save(out)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="diskci build (fake)")
    parser.add_argument("command", choices=["build"])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--github-output", action="store_true")
    args = parser.parse_args(argv)
    fake_build(args.spec, args.arch, args.out)
    if args.github_output:  # as the real one: the build's artifact digests, for the job's outputs
        digests = {a.path: a.sha256 for a in BuildManifest.load(args.out).arch(args.arch).artifacts}
        with open(os.environ["GITHUB_OUTPUT"], "a") as out:
            out.write("digests=" + json.dumps(digests, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"fake build of {args.spec} for {args.arch} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
