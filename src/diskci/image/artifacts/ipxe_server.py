"""Serve a build directory over HTTP for manual netboot tries (``diskci netboot serve``).

A plain static server (Python's threading HTTP server): each ``<arch>/boot.ipxe`` boots from URLs
relative to itself, so serving the directory as it is netboots every architecture of the build.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from diskci.errors import BuildError
from diskci.manifest import BuildManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetbootTarget:
    arch: str
    script: str  # path of boot.ipxe relative to the build directory


def netboot_targets(build_dir: Path) -> list[NetbootTarget]:
    """The architectures of ``build_dir`` that have a boot.ipxe with everything it names."""
    manifest = BuildManifest.load(build_dir)
    targets = []
    for arch, record in sorted(manifest.architectures.items()):
        names = {a.name for a in record.artifacts}
        if "boot.ipxe" not in names:
            continue
        missing = [
            n for n in ("vmlinuz", "initramfs.img", "rootfs.img") if not (build_dir / arch / n).is_file()
        ]
        if missing:
            raise BuildError(f"{build_dir / arch}: boot.ipxe names {', '.join(missing)}, which are missing")
        targets.append(NetbootTarget(arch, f"{arch}/boot.ipxe"))
    if not targets:
        raise BuildError(
            f"{build_dir}: no architecture has a boot.ipxe",
            hint="Build the ipxe stage first: diskci build SPEC --stages ipxe --out DIR",
        )
    return targets


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


def make_server(build_dir: Path, host: str, port: int) -> ThreadingHTTPServer:
    """A server for ``build_dir`` bound to host:port (port 0 picks a free one); call serve_forever()."""
    handler = functools.partial(_Handler, directory=str(build_dir))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise BuildError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
