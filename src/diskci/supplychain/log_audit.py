"""``diskci authority log verify``: audit a whole transparency log.

Public API: ``audit_log(log) -> LogAudit`` (raises ``LogInconsistent`` naming the first bad record).
Every record must be whole and in sequence, its body a canonical Rekor entry of a known kind, and
every tree head the log acknowledged (each record keeps the root it was appended under) must be the
Merkle root of the leaves up to it and consistent with the next one (an RFC 6962 consistency proof,
verified the way a monitor verifies it): the log only ever grew, nothing was rewritten or lost.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import rfc8785

from diskci.errors import SupplyChainError
from diskci.supplychain.tlog import (
    TransparencyLog,
    consistency_path,
    leaf_hash,
    tree_hash,
    verify_consistency,
)

__all__ = ["LogAudit", "LogInconsistent", "audit_log"]

KINDS = {("dsse", "0.0.1"), ("hashedrekord", "0.0.1")}


class LogInconsistent(SupplyChainError):
    """The transparency log is not what it acknowledged: a bad record, root or consistency.
    ``entry``: the index of the first bad record; ``expected``: what the audit expected there."""

    def __init__(self, message: str, *, entry: int, expected: str) -> None:
        super().__init__(message, hint=f"expected: {expected}")
        self.entry = entry
        self.expected = expected


@dataclass(frozen=True)
class LogAudit:
    size: int
    root_hash: str
    tree_heads_checked: int
    kinds: dict[str, int]
    partial_tail_bytes: int = 0  # an append cut short (never acknowledged): dropped at the next append

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "entries": self.size,
            "tree_size": self.size,
            "root_hash": self.root_hash,
            "checkpoints_checked": self.tree_heads_checked,
            "kinds": self.kinds,
            "partial_tail_bytes": self.partial_tail_bytes,
        }


def audit_log(log: TransparencyLog) -> LogAudit:
    """Audit every record of ``log`` as stored (read-only; a partial last line is reported, not cut)."""
    lines, partial = log.raw_records()
    leaves: list[bytes] = []
    kinds: dict[str, int] = {}
    previous: tuple[int, bytes] | None = None
    heads = 0
    where = log.path
    for i, line in enumerate(lines):
        # 1. the record is whole, in sequence, and its body a canonical entry of a known kind
        try:
            rec = json.loads(line)
            body = base64.b64decode(rec["body"], validate=True)
            entry = json.loads(body)
            kind = (str(entry["kind"]), str(entry["apiVersion"]))
            int(rec["integratedTime"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LogInconsistent(
                f"{where}: entry {i} (line {i + 1}) is malformed: {exc}",
                entry=i,
                expected="a JSON record {index, integratedTime, body (base64 canonical entry), root}",
            ) from None
        if rec.get("index") != i:
            raise LogInconsistent(
                f"{where}: entry {i} (line {i + 1}) says it is entry {rec.get('index')!r}",
                entry=i,
                expected=f"index {i}",
            )
        if kind not in KINDS or rfc8785.dumps(entry) != body:
            raise LogInconsistent(
                f"{where}: entry {i} is not a canonical dsse/hashedrekord 0.0.1 body",
                entry=i,
                expected="the RFC 8785 form of a dsse or hashedrekord 0.0.1 entry",
            )
        kinds[kind[0]] = kinds.get(kind[0], 0) + 1
        leaves.append(leaf_hash(body))
        if "root" not in rec:
            continue  # written before tree heads were kept
        # 2. the tree head (checkpoint) acknowledged with it is the root of the leaves so far ...
        root = tree_hash(leaves)
        if rec["root"] != root.hex():
            raise LogInconsistent(
                f"{where}: the checkpoint of tree size {i + 1} (acknowledged with entry {i}) has root "
                f"{rec['root']}, but the leaves 0..{i} hash to {root.hex()}: entry {i}'s leaf or that "
                "checkpoint was altered",
                entry=i,
                expected=f"root {root.hex()}",
            )
        # 3. ... and the one before it is a prefix of it
        if previous is not None:
            old, old_root = previous
            try:
                verify_consistency(old, i + 1, old_root, root, consistency_path(old, leaves))
            except SupplyChainError as exc:
                raise LogInconsistent(
                    f"{where}: the checkpoint of tree size {i + 1} is not consistent with the one of "
                    f"size {old}: {exc.message}",
                    entry=i,
                    expected=f"tree {old} ({old_root.hex()}) a prefix of tree {i + 1}",
                ) from None
        previous = (i + 1, root)
        heads += 1
    return LogAudit(
        size=len(leaves),
        root_hash=tree_hash(leaves).hex(),
        tree_heads_checked=heads,
        kinds=kinds,
        partial_tail_bytes=partial,
    )
