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
    """The transparency log is not what it acknowledged: a bad record, root or consistency."""


@dataclass(frozen=True)
class LogAudit:
    size: int
    root_hash: str
    tree_heads_checked: int
    kinds: dict[str, int]


def audit_log(log: TransparencyLog) -> LogAudit:
    records = log.entries()
    leaves: list[bytes] = []
    kinds: dict[str, int] = {}
    previous: tuple[int, bytes] | None = None
    heads = 0
    for i, rec in enumerate(records):
        # 1. the record is whole, in sequence, and its body a canonical entry of a known kind
        try:
            body = base64.b64decode(rec["body"], validate=True)
            entry = json.loads(body)
            kind = (str(entry["kind"]), str(entry["apiVersion"]))
            int(rec["integratedTime"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LogInconsistent(f"{log.path}: record {i} is malformed: {exc}") from None
        if rec.get("index") != i:
            raise LogInconsistent(f"{log.path}: record {i} says it is entry {rec.get('index')}")
        if kind not in KINDS or rfc8785.dumps(entry) != body:
            raise LogInconsistent(f"{log.path}: entry {i} is not a canonical dsse/hashedrekord 0.0.1 body")
        kinds[kind[0]] = kinds.get(kind[0], 0) + 1
        leaves.append(leaf_hash(body))
        if "root" not in rec:
            continue  # written before tree heads were kept
        # 2. the tree head acknowledged with it is the root of the leaves so far ...
        root = tree_hash(leaves)
        if rec["root"] != root.hex():
            raise LogInconsistent(
                f"{log.path}: entry {i} was acknowledged under root {rec['root']}, but the leaves "
                f"up to it hash to {root.hex()}"
            )
        # 3. ... and the one before it is a prefix of it
        if previous is not None:
            old, old_root = previous
            try:
                verify_consistency(old, i + 1, old_root, root, consistency_path(old, leaves))
            except SupplyChainError as exc:
                raise LogInconsistent(f"{log.path}: tree head {i + 1}: {exc.message}") from None
        previous = (i + 1, root)
        heads += 1
    return LogAudit(
        size=len(leaves), root_hash=tree_hash(leaves).hex(), tree_heads_checked=heads, kinds=kinds
    )
