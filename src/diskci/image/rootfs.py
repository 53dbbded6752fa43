"""Stage 1: the root filesystem tarball, made by mmdebstrap (root mode) and cached by its inputs.

Writes ``<arch>/rootfs.tar``, ``<arch>/packages.json`` (every installed package: name, version,
architecture, source package and version), ``<arch>/sbom.spdx.json`` and ``<arch>/logs/mmdebstrap.log``.

The distribution's initramfs is never generated inside the root (diskci builds its own): an essential
hook diverts ``update-initramfs`` to /bin/true while packages install (with INITRD=No), and the diversion
is undone at the end. Under qemu-user emulation this is what keeps an arm64 build to minutes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from diskci.atomic import atomic_path, write_text
from diskci.console import interactive
from diskci.errors import BuildError, CacheError, ResourceError, ToolError, UsageError
from diskci.image import sbom
from diskci.image.cache import Cache, rootfs_key_inputs
from diskci.image.cache import canonical_digest as _digest
from diskci.image.mirror import fetch_release, resolve_mirror
from diskci.image.pipeline import BuildContext
from diskci.manifest import Artifact, sha256_file
from diskci.mediatypes import ANNOTATION_ARCH, PACKAGES_JSON, ROOTFS_TAR, SBOM_SPDX
from diskci.process import require_tool, run, tool_version
from diskci.spec import Architecture, PlatformSpec

log = logging.getLogger(__name__)

GiB = 1 << 30
# Free space a build needs: mmdebstrap's temporary root tree + apt archives, the tarball, the cache copy.
NEED_WORK = 2 * GiB
NEED_OUT = 1 * GiB
NEED_CACHE = 1 * GiB

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
EMULATION_PACKAGES = "qemu-user-static and binfmt-support"

_DPKG_QUERY_FORMAT = (
    "\\t".join(
        (
            "${db:Status-Abbrev}",
            "${Package}",
            "${Version}",
            "${Architecture}",
            "${source:Package}",
            "${source:Version}",
        )
    )
    + "\\n"
)
_UPDATE_INITRAMFS = "/usr/sbin/update-initramfs"
_PASS_ENV = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def stage(ctx: BuildContext) -> None:
    """Produce rootfs.tar, packages.json and sbom.spdx.json for ``ctx.arch`` (from the cache if we can)."""
    spec, arch = ctx.spec, ctx.arch
    if arch not in spec.architectures:
        raise UsageError(
            f"{spec.name} is not built for {arch.value}: its architectures are "
            f"{', '.join(a.value for a in spec.architectures)}"
        )
    mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")
    version = tool_version([mmdebstrap, "--version"])
    ctx.tool("mmdebstrap", version)

    mirror = resolve_mirror(spec, arch)
    ctx.report(f"checking the mirror {mirror}")
    release = fetch_release(mirror, spec.suite, arch, spec.components)
    files = _spec_files(spec, ctx.spec_path)
    inputs = rootfs_key_inputs(
        spec=spec,
        arch=arch,
        mirror=mirror,
        release=release.content,
        mmdebstrap_version=version,
        source_date_epoch=ctx.source_date_epoch,
        files={rel: sha256_file(p) for rel, p in files.items()},
        command=mmdebstrap_argv(
            ctx,
            "mmdebstrap",
            mirror,
            {rel: Path("SPECDIR") / rel for rel in files},
            Path("TARGET"),
            Path("PACKAGELIST"),
        ),
    )
    key = _digest(inputs)
    ctx.record.inputs.update(
        {
            "distribution": spec.distribution.value,
            "suite": spec.suite,
            "components": list(spec.components),
            "variant": spec.variant,
            "mirror": mirror,
            "release_url": release.url,
            "release_sha256": release.sha256,
            "packages": list(spec.packages_for(arch)),
            "files": inputs["files"],
        }
    )

    tar = ctx.arch_dir / "rootfs.tar"
    packages_json = ctx.arch_dir / "packages.json"
    outputs = {"rootfs.tar": tar, "packages.json": packages_json}
    cache = Cache(ctx.cache_dir, "rootfs")
    hit = ctx.use_cache and _restore(ctx, cache, key, outputs)
    if not hit:
        # one build of a key at a time: a concurrent build of the same root waits, then hits
        with contextlib.ExitStack() as held:
            if ctx.use_cache:
                held.enter_context(cache.lock(key, on_wait=lambda: ctx.report("waiting for another build")))
                hit = _restore(ctx, cache, key, outputs)
            if not hit:
                _build_and_store(ctx, cache, key, inputs, mmdebstrap, mirror, files, outputs)
    if hit:
        log.info("rootfs %s: cache hit (key %s), reused %s", arch.value, key[:16], cache.entry_path(key))
    rootfs_art = ctx.record.artifact("rootfs.tar")
    pkg_art = ctx.record.artifact("packages.json")
    ctx.record.cache["rootfs"] = {"key": key, "hit": bool(hit)}

    ctx.report("writing the SBOM")
    sbom.write_sbom(
        ctx.arch_dir / "sbom.spdx.json",
        packages_json,
        platform=spec.name,
        version=spec.version,
        architecture=arch.value,
        distribution=spec.distribution.value,
        suite=spec.suite,
        spec_digest=ctx.manifest.spec_digest,
        source_date_epoch=ctx.source_date_epoch,
    )
    sbom_art = ctx.add_artifact(ctx.arch_dir / "sbom.spdx.json", SBOM_SPDX)
    for art in (rootfs_art, pkg_art, sbom_art):
        art.annotations[ANNOTATION_ARCH] = arch.value


def _build_and_store(
    ctx: BuildContext,
    cache: Cache,
    key: str,
    inputs: Mapping[str, object],
    mmdebstrap: str,
    mirror: str,
    files: Mapping[str, Path],
    outputs: Mapping[str, Path],
) -> None:
    """Run mmdebstrap, record rootfs.tar and packages.json, and store both in the cache."""
    _check_root()
    check_free_space({tempfile.gettempdir(): NEED_WORK, ctx.arch_dir: NEED_OUT, ctx.cache_dir: NEED_CACHE})
    ensure_emulation(ctx.arch)
    tar, packages_json = outputs["rootfs.tar"], outputs["packages.json"]
    build(ctx, mmdebstrap, mirror, files, tar, packages_json)
    arts = [ctx.add_artifact(tar, ROOTFS_TAR), ctx.add_artifact(packages_json, PACKAGES_JSON)]
    ctx.report("storing in the cache")
    recorded = {"artifacts": [a.model_dump(mode="json") for a in arts]}
    try:
        # with --no-cache the key's lock is taken only to store (the entry is replaced whole)
        with contextlib.nullcontext() if ctx.use_cache else cache.lock(key):
            cache.store(key, outputs, inputs, {a.name: a.sha256 for a in arts}, build=recorded)
        log.info("rootfs %s: built and cached (key %s)", ctx.arch.value, key[:16])
    except CacheError as exc:  # the build itself succeeded: a cache problem only costs time later
        log.warning("rootfs %s: built, but not cached: %s", ctx.arch.value, exc.message)


def _restore(ctx: BuildContext, cache: Cache, key: str, outputs: Mapping[str, Path]) -> bool:
    """Put a cached entry's files in place, each checked against its recorded sha256 first; False
    (and the entry discarded when damaged) when absent or damaged."""
    entry = cache.lookup(key)
    if entry is None:
        return False
    ctx.report("cache hit: reusing the root filesystem")
    try:
        digests = cache.restore_verified(entry, outputs)
    except OSError as exc:
        raise ResourceError(
            f"cannot copy the cached root filesystem into {ctx.arch_dir}: {exc.strerror or exc}",
            hint="Free some space there, or choose another --out directory.",
        ) from exc
    if digests is None:
        return False
    for name, path in outputs.items():
        media = ROOTFS_TAR if name == "rootfs.tar" else PACKAGES_JSON
        ctx.record_artifact(
            Artifact(
                name=path.name,
                path=path.relative_to(ctx.build_dir).as_posix(),
                media_type=media,
                size=path.stat().st_size,
                sha256=digests[name],
            )
        )
    cache.touch(key)
    return True


# --- preconditions -------------------------------------------------------------------------------


def _check_root() -> None:
    if os.geteuid() != 0:
        raise ResourceError(
            "building a root filesystem needs root (mmdebstrap runs in root mode)",
            hint="Run diskci build as root (sudo), or build on a CI worker.",
        )


def check_free_space(needs: Mapping[str | Path, int]) -> None:
    """Raise ResourceError when a filesystem lacks the bytes asked of it (needs summed per filesystem)."""
    by_dev: dict[int, tuple[list[str], int, int]] = {}
    for raw, need in needs.items():
        path = Path(raw)
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        st = os.statvfs(probe)
        dev = os.stat(probe).st_dev
        names, total, free = by_dev.get(dev, ([], 0, st.f_bavail * st.f_frsize))
        by_dev[dev] = ([*names, str(path)], total + need, free)
    for names, need, free in by_dev.values():
        if free < need:
            raise ResourceError(
                f"not enough free disk space for {' and '.join(names)}: {free / GiB:.2f} GiB free, "
                f"a root filesystem build needs about {need / GiB:.1f} GiB there",
                hint="Free some space, or choose other directories (--out, --cache, TMPDIR).",
            )


def host_architecture() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.decode().strip()


def ensure_emulation(arch: Architecture, binfmt_dir: Path = BINFMT_DIR) -> None:
    """Make sure ``arch`` programs can run here: natively, or through qemu-user and binfmt_misc."""
    if arch.value == host_architecture():
        return
    hint = f"Install the Debian packages {EMULATION_PACKAGES} (make setup does)."
    if not (binfmt_dir / "status").exists():
        log.info("mounting binfmt_misc on %s", binfmt_dir)
        try:
            run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)])
        except ToolError as exc:
            raise ResourceError(
                f"cannot emulate {arch.value}: binfmt_misc is not mounted and mounting it failed "
                f"({exc.output_tail.strip() or exc.returncode})",
                hint="Run as root on a host whose kernel has binfmt_misc; " + hint,
            ) from exc
    handler = binfmt_dir / f"qemu-{arch.qemu_name}"
    if not handler.exists() and shutil.which("update-binfmts"):
        run(["update-binfmts", "--enable", f"qemu-{arch.qemu_name}"], check=False)
    if not handler.exists():
        raise ResourceError(
            f"cannot emulate {arch.value}: no qemu-user handler {handler.name} is registered in {binfmt_dir}",
            hint=hint,
        )
    state = handler.read_text().splitlines()[:1]
    if state != ["enabled"]:
        raise ResourceError(
            f"cannot emulate {arch.value}: {handler} is {state[0] if state else 'unreadable'}",
            hint=f"Enable it: update-binfmts --enable {handler.name}",
        )
    if shutil.which("arch-test"):
        proc = run(["arch-test", arch.value], check=False)
        if proc.returncode != 0:
            raise ResourceError(
                f"cannot emulate {arch.value}: arch-test says "
                f"{(proc.stdout or proc.stderr).decode(errors='replace').strip()}",
                hint=hint,
            )


def _spec_files(spec: PlatformSpec, spec_path: Path) -> dict[str, Path]:
    """The files the spec copies in (spec-relative path → host path); every one must exist."""
    base = spec_path.resolve().parent
    out = {}
    for f in spec.files:
        src = base / f.source
        if not src.is_file():
            raise BuildError(f"{spec_path}: files: {f.source!r} does not exist (looked for {src})")
        out[f.source] = src
    return out


# --- mmdebstrap ----------------------------------------------------------------------------------


def mmdebstrap_argv(
    ctx: BuildContext, mmdebstrap: str, mirror: str, files: Mapping[str, Path], target: Path, listing: Path
) -> list[str]:
    """The mmdebstrap command for this build (documented in docs/build-json.md, recorded in the log)."""
    spec, arch = ctx.spec, ctx.arch
    q = shlex.quote
    argv = [
        mmdebstrap,
        "--mode=root",
        "--format=tar",
        f"--variant={spec.variant}",
        f"--architectures={arch.value}",
        f"--components={','.join(spec.components)}",
        f"--include={','.join(spec.packages_for(arch))}",
        "--verbose",
    ]
    argv += [f"--dpkgopt=path-exclude={p}" for p in spec.exclude_paths]
    argv += [f"--dpkgopt=path-include={p}" for p in spec.include_paths]
    argv.append(
        "--essential-hook="
        f'chroot "$1" dpkg-divert --quiet --local --rename --add {_UPDATE_INITRAMFS}'
        f' && ln -sf /bin/true "$1{_UPDATE_INITRAMFS}"'
    )
    for f in spec.files:
        dest = f.dest
        argv.append(
            "--customize-hook="
            f'mkdir -p "$1"{q(str(Path(dest).parent))} && install -m {f.mode:o} {q(str(files[f.source]))} '
            f'"$1"{q(dest)}'
        )
    argv += [f'--customize-hook=chroot "$1" /bin/sh -ec {q(hook)}' for hook in spec.customize_hooks]
    hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    argv += [
        # Host-specific files mmdebstrap copied in: replaced by the spec's values (reproducible anywhere).
        f'--customize-hook=echo {q(spec.hostname)} > "$1/etc/hostname"',
        f'--customize-hook=printf %s {q(hosts)} > "$1/etc/hosts"',
        '--customize-hook=chmod 644 "$1/etc/hostname" "$1/etc/hosts" && rm -f "$1/etc/resolv.conf"',
        # Undo the update-initramfs diversion: the node's own tools work as Debian ships them.
        f'--customize-hook=rm -f "$1{_UPDATE_INITRAMFS}"'
        f' && chroot "$1" dpkg-divert --quiet --local --rename --remove {_UPDATE_INITRAMFS}',
        # The package list, read from the root's dpkg database (runs on the host: no emulation needed).
        f'--customize-hook=dpkg-query --admindir="$1/var/lib/dpkg" -W -f={q(_DPKG_QUERY_FORMAT)}'
        f" > {q(str(listing))}",
        spec.suite,
        str(target),
        mirror,
    ]
    return argv


class _Progress:
    """Turns mmdebstrap's output lines into the step's detail: its phase, and on a terminal the package."""

    _PACKAGE = re.compile(r"^(Unpacking|Setting up|Get:\d+ \S+ \S+ \S+) (\S+)")

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.phase = "starting mmdebstrap"
        self.detailed = interactive()

    def __call__(self, line: str) -> None:
        if line.startswith("I: ") and (
            line.endswith("...") or line.startswith(("I: running --", "I: success in"))
        ):
            phase = line[3:].strip().rstrip(".").rstrip(":")
            if phase.startswith("running --"):
                phase = phase.split(" in ", 1)[0]
            elif phase.startswith("success in"):
                phase = f"mmdebstrap {phase}"
            self.phase = phase
            self.ctx.report(phase)
        elif self.detailed and (m := self._PACKAGE.match(line)):
            verb = "downloading" if m.group(1).startswith("Get:") else m.group(1).lower()
            self.ctx.report(f"{self.phase}: {verb} {m.group(2)}")


def build(
    ctx: BuildContext,
    mmdebstrap: str,
    mirror: str,
    files: Mapping[str, Path],
    tar: Path,
    packages_json: Path,
) -> None:
    """Run mmdebstrap into a temporary tarball; on success rename it and write packages.json."""
    ctx.arch_dir.mkdir(parents=True, exist_ok=True)
    log_path = ctx.logs_dir / "mmdebstrap.log"
    log_path.unlink(missing_ok=True)
    env = {**ctx.env(), "INITRD": "No"}
    env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
    with (
        _private_tmpdir() as work,
        atomic_path(tar) as tmp_tar,
        atomic_path(ctx.arch_dir / ".packages.tsv") as listing,
    ):
        env["TMPDIR"] = str(work)  # mmdebstrap's temporary root and keyrings: removed even if it is killed
        argv = mmdebstrap_argv(ctx, mmdebstrap, mirror, files, tmp_tar, listing)
        log_path.write_text(f"$ {shlex.join(argv)}\n")
        try:
            run(argv, env=env, log_file=log_path, on_line=_Progress(ctx), tail_lines=25)
        except ToolError as exc:
            raise explain_failure(ctx, mirror, exc, log_path) from None
        packages = parse_dpkg_query(listing.read_text())
        if not packages:
            raise BuildError(f"mmdebstrap succeeded but the package list of {ctx.arch.value} is empty")
        write_text(packages_json, json.dumps(packages, indent=2) + "\n")
    (ctx.arch_dir / ".packages.tsv").unlink(missing_ok=True)


@contextlib.contextmanager
def _private_tmpdir() -> Iterator[Path]:
    """A temporary directory for one mmdebstrap run, removed afterwards unless something is still
    mounted below it (an interrupted mmdebstrap may leave /proc or /dev bound into its root: never
    delete through a mount)."""
    work = Path(tempfile.mkdtemp(prefix="diskci-mmdebstrap-"))
    # apt downloads as the unprivileged _apt user, which must reach the chroot (as it does under /tmp);
    # with a 0700 directory apt falls back to root and the tarball differs (partial/ owned by root)
    work.chmod(0o755)
    try:
        yield work
    finally:
        mounts = [m for m in _mount_points() if m == work or work in m.parents]
        if mounts:
            log.warning("not removing %s: still mounted below it: %s", work, ", ".join(map(str, mounts)))
        else:
            shutil.rmtree(work, ignore_errors=True)


def _mount_points() -> list[Path]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # field 5 is the mount point, with spaces etc. octal-escaped
    return [
        Path(line.split()[4].encode().decode("unicode_escape")) for line in lines if len(line.split()) > 4
    ]


def parse_dpkg_query(text: str) -> list[sbom.InstalledPackage]:
    """Installed packages from ``dpkg-query -W`` output in ``_DPKG_QUERY_FORMAT``, sorted."""
    out: list[sbom.InstalledPackage] = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 6 or not parts[0].startswith("ii"):
            continue
        _, name, version, architecture, source, source_version = parts
        out.append(
            {
                "name": name,
                "version": version,
                "architecture": architecture,
                "source": source or name,
                "source_version": source_version or version,
            }
        )
    return sorted(out, key=lambda p: (p["name"], p["architecture"]))


_CAUSES = (
    (re.compile(r"Unable to locate package (\S+)"), "the package {0!r} does not exist"),
    (
        re.compile(r"Package '?(\S+?)'? has no installation candidate"),
        "the package {0!r} cannot be installed",
    ),
    (re.compile(r"Version '(\S+)' for '(\S+)' was not found"), "version {0!r} of {1!r} does not exist"),
    (
        re.compile(r"(\S+) : Depends: .*but it is not (?:going to be )?installable"),
        "{0!r} has unmet dependencies",
    ),
    (re.compile(r"No space left on device"), "the disk is full"),
    (
        re.compile(r"(?:Temporary failure resolving|Could not connect to|Failed to fetch) '?(\S+)"),
        "the mirror could not be reached ({0})",
    ),
)


def explain_failure(ctx: BuildContext, mirror: str, exc: ToolError, log_path: Path) -> BuildError:
    """One paragraph naming the cause mmdebstrap's log shows, with the log's last lines."""
    text = log_path.read_text(errors="replace")
    cause = "mmdebstrap failed"
    for pattern, template in _CAUSES:
        m = pattern.search(text)
        if m:
            cause = template.format(*m.groups())
            break
    where = f"{ctx.spec.suite} ({', '.join(ctx.spec.components)}) on {mirror} for {ctx.arch.value}"
    return BuildError(
        f"building the {ctx.arch.value} root filesystem of {ctx.spec.name} failed: {cause} "
        f"({where}; mmdebstrap exit status {exc.returncode})\n"
        f"--- last lines of {log_path} ---\n{exc.output_tail.rstrip()}",
        hint=f"The full log is {log_path}. Nothing was written to the cache or the output.",
    )
