"""fs-verity digests against Debian's ``fsverity digest`` (the reference), on edge sizes and random data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from diskci.cli.main import app
from diskci.formats import fsverity
from host_tools import needs_tool

FSVERITY = shutil.which("fsverity")
needs_fsverity = needs_tool("fsverity", "Debian package 'fsverity'")


def reference(*paths: Path) -> list[str]:
    assert FSVERITY is not None
    out = subprocess.run([FSVERITY, "digest", *map(str, paths)], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def ours(path: Path) -> str:
    return fsverity.format_digest(path, fsverity.digest_file(path))


@needs_fsverity
@pytest.mark.parametrize(
    "size",
    [0, 1, 4095, 4096, 4097, 128 * 4096, 128 * 4096 + 1, (1 << 20) + 1, 128 * 128 * 4096 + 4096 + 7],
)
def test_edge_sizes_match_fsverity_tool(tmp_path: Path, size: int) -> None:
    path = tmp_path / f"f{size}"
    path.write_bytes(os.urandom(size))
    assert [ours(path)] == reference(path)


@needs_fsverity
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=0, max_value=3 * 1024 * 1024), seed=st.binary(min_size=1, max_size=16))
def test_random_sizes_match_fsverity_tool(tmp_path: Path, size: int, seed: bytes) -> None:
    path = tmp_path / "random.bin"
    data = (seed * (size // len(seed) + 1))[:size]
    path.write_bytes(data)
    assert [ours(path)] == reference(path)
    assert fsverity.digest_bytes(data) == fsverity.digest_file(path)


@given(data=st.binary(max_size=20000), cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=6))
@settings(max_examples=50, deadline=None)
def test_incremental_updates_equal_one_shot(data: bytes, cuts: list[int]) -> None:
    h = fsverity.FsVerityHasher()
    prev = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        h.update(data[prev:cut])
        prev = cut
    h.update(data[prev:])
    assert h.digest() == fsverity.digest_bytes(data)
    assert h.size == len(data)


@needs_fsverity
def test_sparse_one_gib_file(tmp_path: Path) -> None:
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(1 << 30)
        f.seek(123 * 4096 + 17)
        f.write(b"data in the middle of a hole")
        f.seek((1 << 30) - 5000)
        f.write(os.urandom(100))
    assert [ours(path)] == reference(path)


@needs_fsverity
def test_cli_prints_like_fsverity_digest(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b b"
    a.write_bytes(b"hello\n")
    b.write_bytes(os.urandom(9000))
    result = CliRunner().invoke(app, ["fsverity", "digest", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == reference(a, b)


def test_cli_missing_file_fails(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fsverity", "digest", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert isinstance(result.exception, Exception)
    assert "missing" in str(result.exception)
