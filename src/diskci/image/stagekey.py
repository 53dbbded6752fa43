"""What a stage reads, as data: the inputs its cache key is the digest of.

A stage's key covers: its name and architecture, SOURCE_DATE_EPOCH, the sha256 of every artifact it
reads, the spec fields it uses (``cmdline`` is the architecture's kernel command line), the versions of
the host tools that shape its output, and its code: diskci's version and the sha256 of the stage
module's source with every diskci module it imports (transitively, with the data files beside them,
such as the initramfs's init.sh). A change to any of those makes a new key; nothing else does.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from diskci import __version__
from diskci.process import tool_version
from diskci.spec import Architecture, PlatformSpec

# How to ask each host tool a stage may declare for its version (Debian packages: dpkg-query).
_DPKG = ("dpkg-query", "-W", "-f=${Version}")
TOOL_VERSION_ARGV: dict[str, tuple[str, ...]] = {
    "mksquashfs": ("mksquashfs", "-version"),
    "tar": ("tar", "--version"),
    "zstd": ("zstd", "--version"),
    "xorriso": ("xorriso", "-version"),
    "grub-mkimage": ("grub-mkimage", "--version"),
    "grub-pc-bin": (*_DPKG, "grub-pc-bin"),
    "qemu-img": ("qemu-img", "--version"),
    "sfdisk": ("sfdisk", "--version"),
    "mtools": ("mtools", "--version"),
    "dosfstools": (*_DPKG, "dosfstools"),
    "systemd-boot-efi": (*_DPKG, "systemd-boot-efi"),
}
# Spec values that are not plain fields.
DERIVED_FIELDS = {"cmdline", "packages"}

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
_lock = threading.Lock()
_tool_versions: dict[str, str] = {}
_code: dict[str, str] = {}
_imports: dict[str, tuple[Path, tuple[str, ...]]] = {}


def tool_versions(tools: Iterable[str]) -> dict[str, str]:
    """Each tool's version line (asked once per process; 'unknown' when it is not installed)."""
    out = {}
    for tool in tools:
        with _lock:
            known = _tool_versions.get(tool)
        if known is None:
            known = tool_version(list(TOOL_VERSION_ARGV[tool]))
            with _lock:
                _tool_versions[tool] = known
        out[tool] = known
    return out


def spec_values(spec: PlatformSpec, arch: Architecture, fields: Iterable[str]) -> dict[str, Any]:
    """The named spec fields, as normalized JSON values (``cmdline`` and ``packages`` for ``arch``)."""
    normalized = spec.normalized()
    out: dict[str, Any] = {}
    for f in fields:
        if f == "cmdline":
            out[f] = spec.cmdline_for(arch)
        elif f == "packages":
            out[f] = list(spec.packages_for(arch))
        else:
            out[f] = normalized[f]
    return out


def _module_imports(name: str) -> tuple[Path, tuple[str, ...]] | None:
    """(source file, diskci modules it imports) of module ``name``; None when it is not a module."""
    with _lock:
        if name in _imports:
            return _imports[name]
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        return None
    path = Path(found.origin)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("diskci"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diskci"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    result = (path, tuple(sorted(names)))
    with _lock:
        _imports[name] = result
    return result


def code_digest(module: str) -> str:
    """sha256 over diskci's version and the sources (and data files) of ``module`` and every diskci
    module it imports, transitively: the version of a stage's code."""
    with _lock:
        if module in _code:
            return _code[module]
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        found = _module_imports(name)
        if found is None:
            continue
        seen[name] = found[0]
        todo.extend(n for n in found[1] if n not in seen)
    h = hashlib.sha256(f"diskci {__version__}\n".encode())
    dirs: set[Path] = set()
    for name in sorted(seen):
        path = seen[name]
        h.update(f"{name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        dirs.add(path.parent)
    for d in sorted(dirs):
        for data in sorted(p for p in d.iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")):
            rel = data.relative_to(_PACKAGE_ROOT) if data.is_relative_to(_PACKAGE_ROOT) else data.name
            h.update(f"{rel} {hashlib.sha256(data.read_bytes()).hexdigest()}\n".encode())
    digest = h.hexdigest()
    with _lock:
        _code[module] = digest
    return digest


def stage_key_inputs(
    *,
    stage: str,
    module: str,
    arch: Architecture,
    source_date_epoch: int,
    spec: PlatformSpec,
    spec_fields: Iterable[str],
    reads: Mapping[str, str],
    tools: Iterable[str],
) -> dict[str, Any]:
    """Everything a stage's output depends on, as plain data (``reads``: artifact name → sha256)."""
    return {
        "stage": stage,
        "code": code_digest(module),
        "architecture": arch.value,
        "source_date_epoch": source_date_epoch,
        "spec": spec_values(spec, arch, spec_fields),
        "reads": dict(sorted(reads.items())),
        "tools": tool_versions(tools),
    }
