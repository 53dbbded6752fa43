"""The embedded transparency log: an append-only RFC 6962 Merkle tree persisted in one file.

Each entry is one line ``{"index", "integratedTime", "body", "kind", "root"}`` appended with
``O_APPEND`` and fsync under an exclusive ``flock`` before the append returns (is acknowledged), so
several processes (``authority serve`` processes, a CLI) and threads may append to the same log. A
crash mid-write leaves at most one partial last line (no newline); the next read under the lock drops
it (it was never acknowledged), so the log only ever grows by whole, acknowledged entries. A damaged
*whole* record is never dropped: the log refuses to read past it, and ``log_audit`` names it.

For every entry the log gives what a Rekor v1 response gives and what sigstore-python checks: the leaf
index, the integrated time, an inclusion proof against the tree right after the append, a signed
checkpoint (signed note, https://github.com/transparency-dev/formats/blob/main/log/README.md) over that
tree head, and a signed entry timestamp (SET) over the RFC 8785 form of
``{body, integratedTime, logID, logIndex}``. What has been read is kept as a ``MerkleTree`` (every
complete subtree's hash), so an append and its proofs cost O(log² n) hashes, not O(n).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from diskci.errors import Conflict, SupplyChainError

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 6962 key ID: SHA-256 of the DER SubjectPublicKeyInfo."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def tree_hash(leaves: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH over leaf hashes."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(tree_hash(leaves[:k]), tree_hash(leaves[k:]))


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(m, D[n]) over leaf hashes, lowest level first."""
    n = len(leaves)
    if not 0 <= index < n:
        raise SupplyChainError(f"transparency log: leaf {index} is not in a tree of size {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_path(index, leaves[:k]), tree_hash(leaves[k:])]
    return [*inclusion_path(index - k, leaves[k:]), tree_hash(leaves[:k])]


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """Recompute the root from a leaf hash and its PATH (RFC 9162 §2.1.3.2); used by tests and checks."""
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise SupplyChainError("inclusion proof is longer than the tree")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise SupplyChainError("inclusion proof is shorter than the tree")
    return r


def consistency_path(old: int, leaves: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(m, D[n]): the tree of the first ``old`` leaves is a prefix of this one."""
    n = len(leaves)
    if not 0 < old <= n:
        raise SupplyChainError(f"transparency log: no consistency proof from size {old} to {n}")

    def subproof(m: int, d: Sequence[bytes], whole: bool) -> list[bytes]:
        if m == len(d):
            return [] if whole else [tree_hash(d)]
        k = _split(len(d))
        if m <= k:
            return [*subproof(m, d[:k], whole), tree_hash(d[k:])]
        return [*subproof(m - k, d[k:], False), tree_hash(d[:k])]

    return subproof(old, leaves, True)


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raise ``SupplyChainError`` unless ``path`` proves ``old_root`` a prefix."""
    if old == new:
        if path or old_root != new_root:
            raise SupplyChainError(f"tree heads of size {old} differ")
        return
    if not 0 < old < new or not path:
        raise SupplyChainError(f"no consistency proof from size {old} to {new}")
    proof = list(path)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        proof.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            raise SupplyChainError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != old_root or sr != new_root:
        raise SupplyChainError(f"the tree of size {old} is not a prefix of the tree of size {new}")


class MerkleTree:
    """The RFC 6962 hashes of a growing list of leaf hashes, every complete subtree's hash kept.

    ``levels[h][i]`` is the hash of the 2**h leaves from ``i * 2**h``: an append adds O(log n)
    node hashes, and the root, an inclusion proof or a consistency proof of any size up to ``len()``
    takes O(log² n) lookups and hashes instead of rehashing every leaf (the list functions above do
    that, and give the same bytes). Nodes are only ever added: a tree of a smaller size is a prefix.
    """

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    def __len__(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        self.levels[0].append(leaf)
        height = 0
        while len(self.levels[height]) % 2 == 0:
            left, right = self.levels[height][-2:]
            if height + 1 == len(self.levels):
                self.levels.append([])
            self.levels[height + 1].append(node_hash(left, right))
            height += 1

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= len(self):
            raise SupplyChainError(f"transparency log: no tree of size {size} (it has {len(self)} leaves)")

    def _hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges RFC 6962's recursion visits: ``start`` is a multiple of
        every power of two not over ``end - start``, so each left part is a kept complete subtree."""
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        height = n.bit_length() - 1
        if n == 1 << height:
            return self.levels[height][start >> height]
        k = 1 << height  # the largest power of two smaller than n
        return node_hash(self.levels[height][start >> height], self._hash(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (all by default)."""
        size = len(self) if size is None else size
        self._check_size(size)
        return self._hash(0, size)

    def inclusion_path(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]), as ``inclusion_path(index, leaves[:size])``."""
        size = len(self) if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise SupplyChainError(f"transparency log: leaf {index} is not in a tree of size {size}")
        path: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if index < start + k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start += k
        path.reverse()  # lowest level first
        return path

    def consistency_path(self, old: int, new: int | None = None) -> list[bytes]:
        """PROOF(old, D[new]), as ``consistency_path(old, leaves[:new])``."""
        new = len(self) if new is None else new
        self._check_size(new)
        if not 0 < old <= new:
            raise SupplyChainError(f"transparency log: no consistency proof from size {old} to {new}")
        path: list[bytes] = []
        start, end, m, whole = 0, new, old, True
        while m != end - start:
            k = _split(end - start)
            if m <= k:
                path.append(self._hash(start + k, end))
                end = start + k
            else:
                path.append(self._hash(start, start + k))
                start, m, whole = start + k, m - k, False
        if not whole:
            path.append(self._hash(start, end))
        path.reverse()  # the innermost subproof first, as the recursion gives it
        return path


def _read_all(fd: int, offset: int = 0) -> bytes:
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def split_records(data: bytes) -> tuple[list[bytes], int]:
    """(the newline-terminated lines of ``data``, their length in bytes): what follows the last
    newline is an append cut short."""
    whole = data.rfind(b"\n") + 1
    return (data[:whole].split(b"\n")[:-1] if whole else []), whole


class DuplicateEntry(Conflict):
    """The log already holds this entry (Rekor answers 409 with the existing one's UUID)."""

    def __init__(self, index: int, leaf: bytes) -> None:
        super().__init__(f"an equivalent entry already exists in the transparency log with UUID {leaf.hex()}")
        self.index = index
        self.leaf = leaf


@dataclass(frozen=True)
class LogEntry:
    """One logged entry with its proofs, in the shape of a bundle's ``TransparencyLogEntry``."""

    log_index: int
    log_id: bytes
    integrated_time: int
    body: bytes
    kind: str
    version: str
    tree_size: int
    root_hash: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str
    signed_entry_timestamp: bytes

    def to_bundle_json(self) -> dict[str, Any]:
        """The protobuf-specs JSON form of ``dev.sigstore.rekor.v1.TransparencyLogEntry``."""
        b64 = base64.b64encode
        return {
            "logIndex": str(self.log_index),
            "logId": {"keyId": b64(self.log_id).decode()},
            "kindVersion": {"kind": self.kind, "version": self.version},
            "integratedTime": str(self.integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": b64(self.signed_entry_timestamp).decode()},
            "inclusionProof": {
                "logIndex": str(self.log_index),
                "rootHash": b64(self.root_hash).decode(),
                "treeSize": str(self.tree_size),
                "hashes": [b64(h).decode() for h in self.hashes],
                "checkpoint": {"envelope": self.checkpoint},
            },
            "canonicalizedBody": b64(self.body).decode(),
        }

    @classmethod
    def from_bundle_json(cls, data: dict[str, Any]) -> LogEntry:
        d = base64.b64decode
        proof = data["inclusionProof"]
        return cls(
            log_index=int(data["logIndex"]),
            log_id=d(data["logId"]["keyId"]),
            integrated_time=int(data["integratedTime"]),
            body=d(data["canonicalizedBody"]),
            kind=data["kindVersion"]["kind"],
            version=data["kindVersion"]["version"],
            tree_size=int(proof["treeSize"]),
            root_hash=d(proof["rootHash"]),
            hashes=tuple(d(h) for h in proof["hashes"]),
            checkpoint=proof["checkpoint"]["envelope"],
            signed_entry_timestamp=d(data["inclusionPromise"]["signedEntryTimestamp"]),
        )


class TransparencyLog:
    """An append-only Merkle log in ``path`` (one JSON line per entry), signed with ``key``."""

    def __init__(self, path: Path, key: ec.EllipticCurvePrivateKey, *, origin: str, name: str) -> None:
        """``origin``: the checkpoint's first line (Rekor: ``<host> - <tree ID>``); ``name``: the
        signer named on its signature line, the log's host as the trusted root's ``baseUrl`` gives it
        (verifiers other than sigstore-python find the log by key hint *and* that name)."""
        self.path = Path(path)
        self.key = key
        self.origin = origin
        self.name = name
        self.log_id = key_id(key.public_key())
        # what has been read of the file (guarded by its flock): records, their Merkle tree, first
        # index of each leaf, and how many bytes of which inode they came from
        self._records: list[dict[str, Any]] = []
        self._tree = MerkleTree()
        self._leaf_index: dict[bytes, int] = {}
        self._cache_inode = -1
        self._cache_bytes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch(mode=0o600, exist_ok=True)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)  # the new file's name is durable too
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # --- storage -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    def _forget(self) -> None:
        """Drop what was read: the next read under the lock reads the whole file again."""
        self._records, self._tree, self._leaf_index = [], MerkleTree(), {}
        self._cache_inode, self._cache_bytes = -1, 0

    def _read_records(self, fd: int) -> tuple[list[dict[str, Any]], MerkleTree]:
        """(records, their Merkle tree): whole records only. Read incrementally: records already
        read stay cached (the file only grows by whole records under the lock), so an append or a
        lookup reads only what other processes appended since. A partial trailing line (a crash
        mid-append, never acknowledged) is cut off the file. A damaged whole record is refused,
        never cut: entries after it were acknowledged (``diskci authority log verify`` names it)."""
        st = os.fstat(fd)
        if st.st_ino != self._cache_inode or st.st_size < self._cache_bytes:
            self._forget()
            self._cache_inode = st.st_ino
        if st.st_size > self._cache_bytes:
            data = _read_all(fd, self._cache_bytes)
            lines, whole = split_records(data)
            for line in lines:
                index = len(self._records)
                try:
                    rec = json.loads(line)
                    leaf = leaf_hash(base64.b64decode(rec["body"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise self._damaged(index, f"not a JSON record with a base64 body: {exc}") from None
                if not isinstance(rec, dict) or rec.get("index") != index:
                    raise self._damaged(index, f"it says it is entry {rec.get('index')!r}")
                self._records.append(rec)
                self._tree.append(leaf)
                self._leaf_index.setdefault(leaf, index)
                self._cache_bytes += len(line) + 1
            if whole != len(data):
                os.ftruncate(fd, self._cache_bytes)
                os.fsync(fd)
        return self._records, self._tree

    def _damaged(self, index: int, why: str) -> SupplyChainError:
        return SupplyChainError(
            f"{self.path}: record {index} is damaged ({why}); the log refuses to read or grow past it",
            hint=f"audit it with: diskci authority log verify {self.path.parent.parent}",
        )

    def raw_records(self) -> tuple[list[bytes], int]:
        """(the whole lines, bytes of a partial last line) as stored, without changing the file."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            data = _read_all(fd)
        finally:
            os.close(fd)
        lines, whole = split_records(data)
        return lines, len(data) - whole

    def entries(self) -> list[dict[str, Any]]:
        with self._locked() as fd:
            return list(self._read_records(fd)[0])

    @property
    def size(self) -> int:
        with self._locked() as fd:
            return len(self._read_records(fd)[1])

    def root_hash(self) -> bytes:
        with self._locked() as fd:
            return self._read_records(fd)[1].root()

    # --- signing -------------------------------------------------------------------------------
    def _sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def checkpoint(self, size: int, root: bytes) -> str:
        """A signed note over the tree head (origin, size, root hash)."""
        note = f"{self.origin}\n{size}\n{base64.b64encode(root).decode()}\n"
        sig = base64.b64encode(self.log_id[:4] + self._sign(note.encode())).decode()
        return f"{note}\n\u2014 {self.name} {sig}\n"

    def signed_entry_timestamp(self, body: bytes, integrated_time: int, index: int) -> bytes:
        payload: dict[str, Any] = {
            "body": base64.b64encode(body).decode(),
            "integratedTime": integrated_time,
            "logID": self.log_id.hex(),
            "logIndex": index,
        }
        return self._sign(rfc8785.dumps(payload))

    # --- the public operations -----------------------------------------------------------------
    def append(
        self, body: bytes, *, kind: str, version: str, integrated_time: int, unique: bool = False
    ) -> LogEntry:
        """Append ``body`` (the canonicalized entry) and return it with its proofs.

        ``unique``: refuse a body already logged (``DuplicateEntry``), as Rekor does. Each record
        keeps the root hash of the tree it was acknowledged with (``log verify`` audits them).
        """
        with self._locked() as fd:
            records, tree = self._read_records(fd)
            index = len(records)
            leaf = leaf_hash(body)
            if unique and leaf in self._leaf_index:
                raise DuplicateEntry(self._leaf_index[leaf], leaf)
            tree.append(leaf)  # forgotten below unless the record is written
            try:
                root, path = tree.root(), tree.inclusion_path(index)
                written = self._write_record(fd, index, body, integrated_time, kind, version, root)
            except BaseException:
                self._forget()
                raise
            self._records.append(written)
            self._leaf_index.setdefault(leaf, index)
        return self._entry(index, index + 1, root, path, body, integrated_time, kind, version)

    def _write_record(
        self, fd: int, index: int, body: bytes, integrated_time: int, kind: str, version: str, root: bytes
    ) -> dict[str, Any]:
        """Append record ``index`` and fsync it (under the lock): durable before it is acknowledged."""
        rec = {
            "index": index,
            "integratedTime": integrated_time,
            "body": base64.b64encode(body).decode(),
            "kind": f"{kind}/{version}",
            "root": root.hex(),
        }
        line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        if os.write(fd, line) != len(line):
            raise SupplyChainError(f"{self.path}: short write appending log entry {index}")
        os.fsync(fd)  # durable before it is acknowledged
        self._cache_bytes += len(line)
        return rec

    def find(self, leaf: bytes) -> int | None:
        """The index of the entry whose leaf hash is ``leaf``, if logged."""
        with self._locked() as fd:
            self._read_records(fd)
            return self._leaf_index.get(leaf)

    def tree_head(self) -> tuple[int, bytes, str]:
        """(size, root hash, signed checkpoint) of the tree now."""
        with self._locked() as fd:
            tree = self._read_records(fd)[1]
            size, root = len(tree), tree.root()
        return size, root, self.checkpoint(size, root)

    def consistency(self, old: int, new: int | None = None) -> tuple[int, bytes, list[bytes]]:
        """(size, root of the tree of ``new`` leaves, PROOF(old, new)); ``new`` defaults to now."""
        with self._locked() as fd:
            tree = self._read_records(fd)[1]
            new = len(tree) if new is None else new
            if not 0 < old <= new <= len(tree):
                raise SupplyChainError(
                    f"no consistency proof from size {old} to {new} (the log has {len(tree)})"
                )
            return new, tree.root(new), tree.consistency_path(old, new)

    def entry(self, index: int, *, kind: str = "dsse", version: str = "0.0.1") -> LogEntry:
        """Entry ``index`` with an inclusion proof against the current tree (``kind``/``version``:
        for records written before they were stored)."""
        with self._locked() as fd:
            records, tree = self._read_records(fd)
            if not 0 <= index < len(records):
                raise SupplyChainError(f"transparency log has no entry {index} (size {len(records)})")
            rec = records[index]
            size = len(tree)
            root, path = tree.root(), tree.inclusion_path(index)
        if "kind" in rec:
            kind, _, version = str(rec["kind"]).partition("/")
        body = base64.b64decode(rec["body"])
        return self._entry(index, size, root, path, body, rec["integratedTime"], kind, version)

    def _entry(
        self,
        index: int,
        size: int,
        root: bytes,
        path: list[bytes],
        body: bytes,
        integrated_time: int,
        kind: str,
        version: str,
    ) -> LogEntry:
        """Entry ``index`` proven against the tree of ``size`` leaves (``root``, ``path``): the
        checkpoint and the SET are signed here, outside the lock."""
        return LogEntry(
            log_index=index,
            log_id=self.log_id,
            integrated_time=integrated_time,
            body=body,
            kind=kind,
            version=version,
            tree_size=size,
            root_hash=root,
            hashes=tuple(path),
            checkpoint=self.checkpoint(size, root),
            signed_entry_timestamp=self.signed_entry_timestamp(body, integrated_time, index),
        )
