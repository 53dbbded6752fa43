"""Reading files for composefs on worker processes: the same digests and store as in one process,
duplicates stored once across workers, shared stores left whole, and errors that name the file."""

from __future__ import annotations

import io
import os
import random
import stat
import tarfile
from pathlib import Path

import pytest

from diskci.formats import composefs, fstree, ingest
from diskci.formats.fsverity import digest_bytes
from diskci.formats.ingest import INLINE_MAX, Ingest, IngestError


def _contents(count: int, seed: int = 7) -> list[bytes]:
    """Files of every size class (empty, inline, one block, several blocks, over 1 MiB), with repeats."""
    rng = random.Random(seed)
    sizes = [0, 1, INLINE_MAX, INLINE_MAX + 1, 4096, 4097, (1 << 20) + 3, None]
    out = [rng.randbytes(rng.randrange(100, 20000) if n is None else n) for n in sizes * (count // 8 + 4)]
    for i in (5, 13, 29):
        out[i] = b"the same bytes in three files " * 20
    return out[:count]


def _tarball(path: Path, contents: list[bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i, data in enumerate(contents):
            info = tarfile.TarInfo(f"./f{i:04d}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _files(tree: fstree.Node) -> list[fstree.Node]:
    assert tree.children is not None
    return [tree.children[name] for name in sorted(tree.children)]


def _store_listing(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of a few files, so that a small tarball is spread over several tasks and both workers."""
    monkeypatch.setattr(ingest, "_BATCH_FILES", 4)


def test_workers_and_one_process_agree(tmp_path: Path) -> None:
    contents = _contents(60)
    tree = fstree.from_tar(_tarball(tmp_path / "t.tar", contents))
    results = {}
    for workers in (2, 0):
        store = tmp_path / f"store-{workers}"
        with Ingest(store, fresh=True, workers=workers) as reader:
            for node in _files(tree):
                reader.submit(node)
            done = reader.results(_files(tree))
        results[workers] = ([done[id(n)] for n in _files(tree) if n.size], _store_listing(store))
    assert results[2] == results[0]
    outcomes, listing = results[2]
    expected_objects = {digest_bytes(c) for c in contents if len(c) > INLINE_MAX}
    assert len(listing) == len(expected_objects)  # the three identical files are one object
    for data, (blob, external) in zip([c for c in contents if c], outcomes, strict=True):
        if len(data) <= INLINE_MAX:
            assert (blob, external) == (data, 0)
        else:
            assert (blob, external) == (digest_bytes(data), len(data))
            assert listing[ingest.object_path(blob)] == (0o644, data)


def test_objects_are_0644_whatever_the_umask(tmp_path: Path) -> None:
    tree = fstree.from_tar(_tarball(tmp_path / "t.tar", _contents(20)))
    old = os.umask(0o077)
    try:
        for workers in (2, 0):
            store = tmp_path / f"store-{workers}"
            with Ingest(store, fresh=True, workers=workers) as reader:
                reader.results(_files(tree))
            assert {mode for mode, _ in _store_listing(store).values()} == {0o644}
    finally:
        os.umask(old)


def test_a_shared_store_keeps_its_objects_and_gets_no_leftovers(tmp_path: Path) -> None:
    contents = _contents(40)
    tar = _tarball(tmp_path / "t.tar", contents)
    store = tmp_path / "objects"
    composefs.build(tar, tmp_path / "first.cfs", digest_store=store)  # a new store, made whole
    some = sorted(p for p in store.rglob("*") if p.is_file())[0]
    before = some.stat().st_mtime_ns, some.stat().st_ino
    some.with_name("not-ours").write_bytes(b"left alone")
    other = tmp_path / "other.tar"
    _tarball(other, [*contents, b"a new file, only in the second tarball " * 10])
    composefs.build(other, tmp_path / "second.cfs", digest_store=store, workers=2)
    assert (some.stat().st_mtime_ns, some.stat().st_ino) == before  # existing objects are not rewritten
    assert some.with_name("not-ours").read_bytes() == b"left alone"
    assert not [p for p in store.rglob(".tmp-*")]
    new = digest_bytes(b"a new file, only in the second tarball " * 10)
    assert (store / ingest.object_path(new)).is_file()


@pytest.mark.parametrize("workers", [2, 0])
@pytest.mark.parametrize("size", [5000, (1 << 20) + 5000])  # read, or mapped
def test_a_file_that_shrank_is_an_error_naming_it(tmp_path: Path, workers: int, size: int) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, data in enumerate(_contents(12)):
        (src / f"f{i:02d}").write_bytes(data)
    (src / "victim").write_bytes(b"v" * size)
    tree = fstree.from_directory(src)
    (src / "victim").write_bytes(b"v" * (size - 100))  # changed after it was listed
    expected = r"victim: the file at byte 0 has \d+ bytes, its size says"
    with pytest.raises(IngestError, match=expected), Ingest(tmp_path / "store", workers=workers) as reader:
        reader.results([n for n in _files(tree) if n.is_reg])


def test_in_memory_files_need_no_workers(tmp_path: Path) -> None:
    root = fstree.Node.directory()
    root.add(b"a", fstree.Node.file(b"x" * 1000))
    root.add(b"b", fstree.Node.file(b"tiny"))
    with Ingest(tmp_path / "store", workers=2) as reader:
        done = reader.results(_files(root))
        assert reader._pool is None
    assert done[id(root.children[b"a"])] == (digest_bytes(b"x" * 1000), 1000)  # type: ignore[index]
    assert done[id(root.children[b"b"])] == (b"tiny", 0)  # type: ignore[index]
    bad = fstree.Node(mode=stat.S_IFREG | 0o644, size=10, data=b"short")
    with pytest.raises(IngestError, match="5 bytes, its size says 10"), Ingest(None) as reader:
        reader.submit(bad)


def test_without_semaphores_the_work_is_done_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(**_: object) -> None:
        raise OSError(38, "Function not implemented")  # what SemLock raises without /dev/shm

    contents = _contents(20)
    tree = fstree.from_tar(_tarball(tmp_path / "t.tar", contents))
    monkeypatch.setattr(ingest, "ProcessPoolExecutor", no_pool)
    with Ingest(tmp_path / "store", fresh=True, workers=2) as reader:
        done = reader.results(_files(tree))
    assert [done[id(n)][0] for n in _files(tree) if n.size > INLINE_MAX] == [
        digest_bytes(c) for c in contents if len(c) > INLINE_MAX
    ]
