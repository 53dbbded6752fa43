"""The platform's blob cache: only whole, verified blobs under their sha256; garbage collection by
reference; nothing half-written left behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from diskci.errors import VerificationFailed
from diskci.platform.services.blobcache import BlobCache, InvalidDigest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsverity(path: Path) -> str:
    out = subprocess.run(["fsverity", "digest", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.split()[0].removeprefix("sha256:")


def test_put_checks_sha256_size_and_fsverity(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    data = os.urandom(3 * 4096 + 17)
    (tmp_path / "ref").write_bytes(data)
    verity = _fsverity(tmp_path / "ref")  # the reference tool's digest

    path = cache.put_chunks(
        f"sha256:{_sha(data)}", [data[:5000], data[5000:]], size=len(data), fsverity=verity
    )
    assert path.read_bytes() == data and cache.has(_sha(data))
    assert path == cache.root / "sha256" / _sha(data)[:2] / _sha(data)[2:]
    cache.check_fsverity(_sha(data), verity)

    other = os.urandom(100)
    with pytest.raises(VerificationFailed) as exc:
        cache.put_bytes(_sha(data + b"x"), other)
    assert exc.value.reason == "digest_mismatch"
    with pytest.raises(VerificationFailed) as exc:
        cache.put_chunks(_sha(other), [other], size=99)
    assert exc.value.reason == "digest_mismatch"
    with pytest.raises(VerificationFailed) as exc:
        cache.put_bytes(_sha(other), other, fsverity="0" * 64)
    assert exc.value.reason == "fsverity_mismatch"
    with pytest.raises(VerificationFailed) as exc:
        cache.check_fsverity(_sha(data), "1" * 64)
    assert exc.value.reason == "fsverity_mismatch"
    assert not cache.has(_sha(other))
    assert list((cache.root / "tmp").iterdir()) == []  # nothing half-written left behind
    with pytest.raises(InvalidDigest, match="not a sha256 digest"):
        cache.path("md5:abc")


def test_adopt_moves_a_downloaded_file_in(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    data = os.urandom(10_000)
    staged = cache.staging_path(_sha(data))
    staged.write_bytes(data)
    assert cache.adopt(_sha(data), staged, size=len(data)).read_bytes() == data
    assert not staged.exists()
    bad = cache.staging_path(_sha(data))
    bad.write_bytes(data[:-1] + b"\0")
    with pytest.raises(VerificationFailed):
        cache.adopt(_sha(data), bad)
    assert not bad.exists() and cache.path(_sha(data)).read_bytes() == data


def test_garbage_collection_keeps_what_is_referenced_and_what_is_young(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    blobs = [os.urandom(1000 + n) for n in range(4)]
    for b in blobs:
        cache.put_bytes(_sha(b), b)
    old = time.time() - 7200
    for b in blobs[:3]:
        os.utime(cache.path(_sha(b)), (old, old))
    stale_tmp = cache.staging_path(_sha(blobs[0]))
    os.utime(stale_tmp, (old, old))

    preview = cache.collect_garbage([f"sha256:{_sha(blobs[0])}"], dry_run=True)
    assert preview.removed == sorted([_sha(blobs[1]), _sha(blobs[2])])
    assert all(cache.has(_sha(b)) for b in blobs) and stale_tmp.exists()

    result = cache.collect_garbage([f"sha256:{_sha(blobs[0])}"])
    assert result.removed == preview.removed and result.freed_bytes == len(blobs[1]) + len(blobs[2])
    assert cache.has(_sha(blobs[0])) and cache.has(_sha(blobs[3]))  # referenced; young (may be in flight)
    assert not cache.has(_sha(blobs[1])) and not cache.has(_sha(blobs[2]))
    assert not stale_tmp.exists()
    assert sorted(cache.digests()) == sorted([_sha(blobs[0]), _sha(blobs[3])])
