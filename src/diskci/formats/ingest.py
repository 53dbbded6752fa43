"""Reading a tree's regular files for composefs: a small file's bytes (inline in the image), or a larger
file's fs-verity digest and its copy in the object store (``PATH/XX/<rest of digest>``).

The work runs on worker processes while the tree is still being read (a tarball's headers are parsed in
the main process). Processes rather than threads: ``hashlib`` drops and retakes the GIL for every 4 KiB
block, and with a parsing thread beside the hashing threads those hand-offs cost more than the hashing
(the Stage-1 tarball on two cores, on tmpfs: 5.4 s of CPU in 4.5 s with four threads, 4.0 s of CPU
in 2.7 s with two processes). A worker maps a tarball once, hashes and copies each file straight from
the mapping, and sends back only digests; ``workers=0`` does the same work in the calling process.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from diskci.errors import FormatError
from diskci.formats.fsverity import FsVerityHasher

if TYPE_CHECKING:
    from diskci.formats.fstree import Node

log = logging.getLogger(__name__)

INLINE_MAX = 64  # mkcomposefs keeps files of at most this many bytes inside the image
_PREAD_MAX = 1 << 20  # a file of its own up to this size is read; a larger one, or a tarball, is mapped
_BATCH_BYTES = 4 << 20
_BATCH_FILES = 256

# (key, path, offset, size, shared): ``shared`` when ``path`` holds many files' data (a tarball)
Item = tuple[int, str, int, int, bool]
# (key, inline bytes or fs-verity digest, bytes stored outside the image)
Outcome = tuple[int, bytes, int]


class IngestError(FormatError):
    """A file's contents could not be read as its size says."""


def object_path(digest: bytes) -> str:
    """``XX/<rest>``: where an object lives in the store (and what the redirect xattr names)."""
    hexd = digest.hex()
    return f"{hexd[:2]}/{hexd[2:]}"


class ObjectStore:
    """Writes objects into ``root``, each once, mode 0644; one per process.

    In a shared store (one that already exists) each object is written under a temporary name and renamed
    into place, so a reader never sees half an object. A ``fresh`` store is a directory nobody sees until
    it is complete (it is renamed into place as a whole), so objects are created straight under their
    names; when two workers meet the same contents, the second finds the name taken and skips it.
    """

    def __init__(self, root: str, *, fresh: bool, chmod: bool = True) -> None:
        self.root = root
        self.fresh = fresh
        self.chmod = chmod  # False where the umask is known to keep 0644 as it is
        self._dirs: set[str] = set()
        self._counter = 0

    def put(self, digest: bytes, data: bytes | memoryview) -> None:
        rel = object_path(digest)
        if rel[:2] not in self._dirs:
            os.makedirs(os.path.join(self.root, rel[:2]), exist_ok=True)
            self._dirs.add(rel[:2])
        dest = os.path.join(self.root, rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if self.fresh:
            try:
                fd = os.open(dest, flags, 0o644)
            except FileExistsError:
                return
            name = dest
        else:
            if os.path.exists(dest):
                return
            self._counter += 1
            name = os.path.join(self.root, f".tmp-{os.getpid()}-{self._counter}")
            fd = os.open(name, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.chmod:
                os.fchmod(fd, 0o644)
        except BaseException:
            os.close(fd)
            os.unlink(name)
            raise
        os.close(fd)
        if name != dest:
            os.rename(name, dest)


class Reader:
    """Hashes files and fills a store: what one worker process (or the caller, with no workers) runs."""

    def __init__(self, store: ObjectStore | None) -> None:
        self.store = store
        self._mapped: tuple[str, mmap.mmap] | None = None  # the last tarball mapped

    def close(self) -> None:
        if self._mapped is not None:
            self._mapped[1].close()
            self._mapped = None

    def _shared_view(self, path: str) -> memoryview:
        if self._mapped is None or self._mapped[0] != path:
            self.close()
            with open(path, "rb") as f:
                self._mapped = (path, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
        return memoryview(self._mapped[1])

    def ingest(self, item: Item) -> Outcome:
        key, path, offset, size, shared = item
        if shared:
            with self._shared_view(path) as whole:
                return self._ingest_view(key, path, offset, whole[offset : offset + size], size)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if size <= _PREAD_MAX:
                data = os.pread(fd, size, offset)
                return self._ingest_view(key, path, offset, memoryview(data), size)
            if os.fstat(fd).st_size < offset + size:
                return self._ingest_view(key, path, offset, memoryview(b""), size)
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as whole:
                return self._ingest_view(key, path, offset, whole[offset : offset + size], size)
        finally:
            os.close(fd)

    def _ingest_view(self, key: int, path: str, offset: int, view: memoryview, size: int) -> Outcome:
        with view:
            if len(view) != size:
                raise IngestError(
                    f"{path}: the file at byte {offset} has {len(view)} bytes, its size says {size}"
                    " (changed or truncated while being read)"
                )
            return (key, *self.take(view))

    def take(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """A small file's bytes, or a larger file's fs-verity digest (the file copied into the store),
        and the bytes stored outside the image."""
        if len(data) <= INLINE_MAX:
            return bytes(data), 0
        hasher = FsVerityHasher()
        hasher.update(data)
        digest = hasher.digest()
        if self.store is not None:
            self.store.put(digest, data)
        return digest, len(data)


_READER: Reader | None = None  # in a worker process


def _start_worker(root: str | None, fresh: bool) -> None:
    global _READER
    os.umask(0o022)  # this process's own: objects are created 0644 without a chmod each
    _READER = Reader(ObjectStore(root, fresh=fresh, chmod=False) if root is not None else None)


def _ingest_batch(items: list[Item]) -> list[Outcome]:
    assert _READER is not None, "not a worker process"
    return [_READER.ingest(item) for item in items]


class Ingest:
    """Reads regular files as soon as they are known (``submit``), on ``workers`` processes (default: one
    per CPU; 0: in this process); ``results`` waits for them all.

    ``store``: the object store directory (None: digests only); ``fresh``: see :class:`ObjectStore`.
    """

    def __init__(self, store: Path | None = None, *, fresh: bool = False, workers: int | None = None) -> None:
        self._root = None if store is None else os.fspath(store)
        if self._root is not None:
            os.makedirs(self._root, exist_ok=True)
        self._fresh = fresh
        self._workers = (os.cpu_count() or 1) if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None
        self._local: Reader | None = None
        self._futures: list[Future[list[Outcome]]] = []
        self._done: dict[int, tuple[bytes, int]] = {}
        self._seen: set[int] = set()
        self._batch: list[Item] = []
        self._batch_bytes = 0

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._local is not None:
            self._local.close()

    def _reader(self) -> Reader:
        """The reader in this process."""
        if self._local is None:
            store = None if self._root is None else ObjectStore(self._root, fresh=self._fresh)
            self._local = Reader(store)
        return self._local

    def submit(self, node: Node) -> None:
        if not node.is_reg or node.size == 0 or id(node) in self._seen:
            return
        self._seen.add(id(node))
        if node.source is None:  # contents held in memory (or none at all)
            data = node.data or b""
            if len(data) != node.size:
                raise IngestError(f"a file's contents are {len(data)} bytes, its size says {node.size}")
            self._done[id(node)] = self._reader().take(data)
            return
        src = node.source
        if src.size != node.size:
            raise IngestError(f"{src.path}: a file's data is {src.size} bytes, its size says {node.size}")
        self._batch.append((id(node), src.path, src.offset, src.size, src.shared))
        self._batch_bytes += src.size
        if self._batch_bytes >= _BATCH_BYTES or len(self._batch) >= _BATCH_FILES:
            self._flush()

    def _flush(self, *, here: bool = False) -> None:
        """Hand the batch to a worker (or read it in this process: with no workers, or ``here``)."""
        if not self._batch:
            return
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if here or self._workers <= 0:
            for key, blob, external in map(self._reader().ingest, batch):
                self._done[key] = (blob, external)
            return
        if self._pool is None:
            # forkserver: workers never inherit this process's threads or the locks they might hold
            try:
                self._pool = ProcessPoolExecutor(
                    max_workers=self._workers,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_start_worker,
                    initargs=(self._root, self._fresh),
                )
            except OSError as exc:  # no semaphores here (no /dev/shm): do the work in this process
                log.warning("no worker processes (%s); reading files in this process", exc)
                self._workers = 0
                self._batch = batch
                self._flush()
                return
        self._futures.append(self._pool.submit(_ingest_batch, batch))

    def results(self, files: list[Node]) -> dict[int, tuple[bytes, int]]:
        """(inline bytes or fs-verity digest, bytes stored outside) for each of ``files``, by ``id``
        (submitting any not yet seen)."""
        for node in files:
            self.submit(node)
        self._flush(here=self._pool is None)  # a small tree (less than one batch) starts no processes
        for future in self._futures:
            for key, blob, external in future.result():
                self._done[key] = (blob, external)
        self._futures.clear()
        return self._done
