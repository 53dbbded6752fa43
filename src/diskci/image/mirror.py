"""Which apt mirror a build uses, and what that mirror serves right now.

The mirror is the spec's, else the host's apt sources when one of them serves the spec's suite (one-line
``sources.list`` entries and deb822 ``*.sources`` files), else the distribution's official mirror.
``fetch_release`` reads the suite's InRelease (or Release) file: it proves the mirror is reachable
before mmdebstrap starts, and its content is part of the cache key, so a changed mirror rebuilds.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from diskci.errors import BuildError
from diskci.spec import Architecture, PlatformSpec

log = logging.getLogger(__name__)

APT_DIR = Path("/etc/apt")
_SCHEMES = ("http", "https", "file")


class MirrorError(BuildError):
    """The mirror cannot be reached, or does not serve the suite, architecture or components."""


@dataclass(frozen=True)
class AptSource:
    """One apt source entry: a URI serving some suites (deb or deb-src)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    enabled: bool = True

    def serves(self, suite: str, arch: str) -> bool:
        return (
            self.enabled
            and "deb" in self.types
            and suite in self.suites
            and (not self.architectures or arch in self.architectures)
        )


def parse_one_line(text: str) -> list[AptSource]:
    """Entries of a one-line-style ``sources.list``: ``deb [opt=val ...] URI SUITE [COMPONENT ...]``."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        options: dict[str, str] = {}
        rest = rest.strip()
        if rest.startswith("["):
            inner, sep, rest = rest[1:].partition("]")
            if not sep:
                continue  # malformed: apt would refuse it too
            for opt in inner.split():
                key, _, value = opt.partition("=")
                options[key] = value
        fields = rest.split()
        if kind not in ("deb", "deb-src") or len(fields) < 2:
            continue
        arches = tuple(a for a in options.get("arch", "").split(",") if a)
        out.append(
            AptSource(
                types=(kind,),
                uris=(fields[0],),
                suites=(fields[1],),
                components=tuple(fields[2:]),
                architectures=arches,
            )
        )
    return out


def parse_deb822(text: str) -> list[AptSource]:
    """Entries of a deb822-style ``*.sources`` file (paragraphs of ``Field: value``)."""
    out = []
    paragraphs: list[dict[str, str]] = [{}]
    last: str | None = None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if paragraphs[-1]:
                paragraphs.append({})
            last = None
            continue
        if raw[0] in " \t" and last is not None:
            paragraphs[-1][last] += " " + raw.strip()
            continue
        key, sep, value = raw.partition(":")
        if not sep:
            continue
        last = key.strip().lower()
        paragraphs[-1][last] = value.strip()
    for p in paragraphs:
        if not p.get("uris") or not p.get("suites"):
            continue
        out.append(
            AptSource(
                types=tuple(p.get("types", "deb").split()),
                uris=tuple(p["uris"].split()),
                suites=tuple(p["suites"].split()),
                components=tuple(p.get("components", "").split()),
                architectures=tuple(p.get("architectures", "").split()),
                enabled=p.get("enabled", "yes").strip().lower() not in ("no", "false", "0"),
            )
        )
    return out


def host_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """Every apt source of the host, in apt's order (sources.list, then sources.list.d sorted)."""
    files = [apt_dir / "sources.list"]
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    out: list[AptSource] = []
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        out += parse_deb822(text) if f.suffix == ".sources" else parse_one_line(text)
    return out


def host_mirror(suite: str, arch: Architecture, apt_dir: Path = APT_DIR) -> str | None:
    """The first host apt source URI that serves ``suite`` for ``arch`` (http, https or file), if any."""
    for src in host_sources(apt_dir):
        if src.serves(suite, arch.value):
            for uri in src.uris:
                if urlparse(uri).scheme in _SCHEMES:
                    return uri.rstrip("/")
    return None


def resolve_mirror(spec: PlatformSpec, arch: Architecture, apt_dir: Path = APT_DIR) -> str:
    """The spec's mirror, else the host's mirror for the suite, else the distribution's official one."""
    if spec.mirror:
        return spec.mirror.rstrip("/")
    found = host_mirror(spec.suite, arch, apt_dir)
    if found:
        log.debug("using the host's apt mirror %s for %s", found, spec.suite)
        return found
    return spec.default_mirror(arch)


@dataclass(frozen=True)
class Release:
    """The suite's (In)Release file as the mirror served it."""

    url: str
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def field(self, name: str) -> tuple[str, ...]:
        m = re.search(rf"^{re.escape(name)}:[ \t]*(.*)$", self.content.decode(errors="replace"), re.M)
        return tuple(m.group(1).split()) if m else ()


def _get(url: str, timeout: float) -> bytes | None:
    """The body at ``url``, None when it does not exist (404 / missing file)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        return path.read_bytes() if path.is_file() else None
    resp = httpx.get(url, timeout=timeout, follow_redirects=True)
    if resp.status_code == 404:
        return None
    resp.raise_for_status()
    return resp.content


def fetch_release(
    mirror: str,
    suite: str,
    arch: Architecture,
    components: tuple[str, ...] = (),
    *,
    timeout: float = 30.0,
) -> Release:
    """Fetch ``dists/<suite>/InRelease`` (else ``Release``) and check it serves ``arch`` and components."""
    base = f"{mirror.rstrip('/')}/dists/{suite}"
    release: Release | None = None
    for name in ("InRelease", "Release"):
        url = f"{base}/{name}"
        try:
            body = _get(url, timeout)
        except (httpx.HTTPError, OSError) as exc:
            raise MirrorError(
                f"the mirror {mirror} is unreachable: fetching {url} failed ({type(exc).__name__}: {exc})",
                hint="Check the network or proxy, or set 'mirror:' in the spec to a reachable mirror.",
            ) from exc
        if body is not None:
            release = Release(url, body)
            break
    if release is None:
        raise MirrorError(
            f"the mirror {mirror} does not serve the suite {suite!r} (no {base}/InRelease or Release)",
            hint="Check 'suite:' and 'mirror:' in the spec.",
        )
    served = release.field("Architectures")
    if served and arch.value not in served:
        raise MirrorError(
            f"the mirror {mirror} does not serve {arch.value} for {suite} (it serves: {' '.join(served)})",
            hint="Use a mirror that carries this architecture (e.g. ports.ubuntu.com for Ubuntu arm64).",
        )
    have = release.field("Components")
    # Components may be listed with a prefix such as "updates/main"; compare the last path element.
    have_names = {c.rsplit("/", 1)[-1] for c in have}
    missing = [c for c in components if have and c not in have_names]
    if missing:
        raise MirrorError(
            f"the mirror {mirror} has no component(s) {', '.join(missing)} in {suite} "
            f"(it has: {' '.join(have)})"
        )
    return release
