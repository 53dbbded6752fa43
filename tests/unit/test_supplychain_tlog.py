"""The authority's transparency log: RFC 6962 proofs, persistence, crash safety, concurrent appenders."""

from __future__ import annotations

import base64
import multiprocessing
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sigstore._internal.merkle import verify_merkle_inclusion
from sigstore.models import TransparencyLogEntry
from sigstore_models.rekor.v1 import TransparencyLogEntry as TlogEntryMessage

from diskci.supplychain.tlog import (
    LogEntry,
    TransparencyLog,
    inclusion_path,
    leaf_hash,
    root_from_path,
    tree_hash,
)

ORIGIN = "log.example - 1"
NAME = "log.example"  # the log's host: the checkpoint's signer name


def _log(path: Path, key: ec.EllipticCurvePrivateKey | None = None) -> TransparencyLog:
    return TransparencyLog(path, key or ec.generate_private_key(ec.SECP256R1()), origin=ORIGIN, name=NAME)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_inclusion_proofs_for_every_leaf(size: int) -> None:
    leaves = [leaf_hash(f"entry {i}".encode()) for i in range(size)]
    root = tree_hash(leaves)
    for i in range(size):
        assert root_from_path(leaves[i], i, size, inclusion_path(i, leaves)) == root


def test_proofs_verify_with_sigstore_merkle(tmp_path: Path) -> None:
    log = _log(tmp_path / "log.jsonl")
    entries = [
        log.append(f'{{"n":{i}}}'.encode(), kind="dsse", version="0.0.1", integrated_time=1000 + i)
        for i in range(6)
    ]
    for i in range(6):
        entry = log.entry(i)
        assert entry.tree_size == 6 and entry.log_index == i
        verify_merkle_inclusion(TransparencyLogEntry(TlogEntryMessage.from_dict(entry.to_bundle_json())))
    assert entries[2].tree_size == 3  # proven against the tree right after its append


def test_log_persists_and_survives_a_torn_write(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "log.jsonl"
    log = _log(path, key)
    for i in range(5):
        log.append(f"body {i}".encode(), kind="dsse", version="0.0.1", integrated_time=i)
    root = log.root_hash()
    # a crash in the middle of appending entry 5 leaves half a line behind
    with open(path, "ab") as f:
        f.write(b'{"index":5,"integratedTime":5,"bo')
    reopened = _log(path, key)
    assert reopened.size == 5
    assert reopened.root_hash() == root
    assert path.read_bytes().endswith(b"\n")
    entry = reopened.append(b"body 5", kind="dsse", version="0.0.1", integrated_time=5)
    assert entry.log_index == 5 and reopened.size == 6
    assert base64.b64decode(reopened.entries()[5]["body"]) == b"body 5"
    assert path.stat().st_mode & 0o777 == 0o600


def _append_many(path: str, pem: bytes, n: int) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    log = _log(Path(path), key)
    for i in range(n):
        log.append(
            f"{path}-{multiprocessing.current_process().pid}-{i}".encode(),
            kind="dsse",
            version="0.0.1",
            integrated_time=i,
        )


def test_concurrent_appenders_never_lose_or_duplicate(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "log.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(path), pem, 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = _log(path, key).entries()
    assert [r["index"] for r in records] == list(range(45))
    assert len({r["body"] for r in records}) == 45


def test_checkpoint_and_set_are_signed(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    log = _log(tmp_path / "log.jsonl", key)
    entry: LogEntry = log.append(b"x", kind="dsse", version="0.0.1", integrated_time=42)
    note, _, sig_line = entry.checkpoint.partition("\n\n")
    assert note.splitlines() == [ORIGIN, "1", base64.b64encode(entry.root_hash).decode()]
    assert sig_line.startswith(f"\u2014 {NAME} ")
    assert LogEntry.from_bundle_json(entry.to_bundle_json()) == entry
