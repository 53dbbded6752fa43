"""Shared end-to-end fixtures: one real ``diskci build`` per architecture for the whole test session.

``amd64_build`` and ``arm64_build`` are build directories made by the real CLI (the full default
pipeline, or the stages named in ``$DISKCI_TEST_STAGES``, comma-separated) with the shared cache
``$DISKCI_TEST_CACHE`` (default /var/cache/diskci-test), so a second session reuses the root filesystems.
Every e2e test that needs built images takes one of them instead of building its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLATFORMS = REPO / "platforms"
TEST_SOURCE_DATE_EPOCH = 1764000000  # 2025-11-24T16:00:00Z: fixed, so the shared cache is reused

DiskciRunner = Callable[..., subprocess.CompletedProcess[str]]


def _run_diskci(*args: str | Path, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """``diskci ARGS`` through the real CLI entry point, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "diskci.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "CI": "true"},
    )


@pytest.fixture(scope="session")
def diskci() -> DiskciRunner:
    """Run the real ``diskci`` CLI: ``diskci("build", spec, "--out", d)`` → CompletedProcess."""
    return _run_diskci


@pytest.fixture(scope="session")
def platform_specs() -> dict[str, Path]:
    """The example platform specs by name: ``platform_specs["debian-12-amd64"]``."""
    return {p.stem: p for p in sorted(PLATFORMS.glob("*.yaml"))}


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """The cache shared by e2e builds across sessions (``$DISKCI_TEST_CACHE``)."""
    path = Path(os.environ.get("DISKCI_TEST_CACHE", "/var/cache/diskci-test"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def source_date_epoch() -> int:
    return TEST_SOURCE_DATE_EPOCH


def shared_stages() -> list[str]:
    """Stages the shared builds run: ``$DISKCI_TEST_STAGES`` (comma-separated), default all of them."""
    raw = os.environ.get("DISKCI_TEST_STAGES", "")
    return [s.strip() for s in raw.split(",") if s.strip()]


def _shared_build(arch: str, factory: pytest.TempPathFactory, cache: Path) -> Path:
    out = factory.mktemp(f"{arch}-build")
    stages = shared_stages()
    args: list[str | Path] = ["build", PLATFORMS / f"debian-12-{arch}.yaml", "--arch", arch, "--out", out]
    args += ["--cache", cache, "--source-date-epoch", str(TEST_SOURCE_DATE_EPOCH)]
    if stages:
        args += ["--stages", ",".join(stages)]
    started = time.monotonic()
    proc = _run_diskci(*args)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        pytest.fail(
            f"shared {arch} build failed (exit {proc.returncode}, {elapsed:.0f}s):\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    sys.stderr.write(f"\n[e2e] shared {arch} build in {elapsed:.0f}s → {out}\n")
    return out


@pytest.fixture(scope="session")
def amd64_build(tmp_path_factory: pytest.TempPathFactory, test_cache: Path) -> Path:
    """Build directory of ``platforms/debian-12-amd64.yaml`` (real pipeline, shared cache)."""
    return _shared_build("amd64", tmp_path_factory, test_cache)


@pytest.fixture(scope="session")
def arm64_build(tmp_path_factory: pytest.TempPathFactory, test_cache: Path) -> Path:
    """Build directory of ``platforms/debian-12-arm64.yaml`` (real pipeline under emulation, shared cache)."""
    return _shared_build("arm64", tmp_path_factory, test_cache)
