"""The transparency log's kept Merkle tree gives the same roots and proofs as RFC 6962's recursion."""

from __future__ import annotations

import pytest

from diskci.errors import SupplyChainError
from diskci.supplychain.tlog import (
    MerkleTree,
    consistency_path,
    inclusion_path,
    leaf_hash,
    root_from_path,
    tree_hash,
    verify_consistency,
)

LEAVES = [leaf_hash(f"entry {i}".encode()) for i in range(70)]


def test_roots_and_inclusion_proofs_match_the_recursion_at_every_size() -> None:
    tree = MerkleTree()
    assert tree.root() == tree_hash([])
    for size in range(1, len(LEAVES) + 1):
        tree.append(LEAVES[size - 1])
        prefix = LEAVES[:size]
        assert tree.root() == tree_hash(prefix)
        for index in range(size):
            path = tree.inclusion_path(index)
            assert path == inclusion_path(index, prefix)
            assert root_from_path(prefix[index], index, size, path) == tree.root()


def test_smaller_trees_are_answered_from_a_larger_one() -> None:
    tree = MerkleTree(LEAVES)
    for size in (1, 2, 3, 5, 8, 13, 33, 64):
        assert tree.root(size) == tree_hash(LEAVES[:size])
        assert tree.inclusion_path(size - 1, size) == inclusion_path(size - 1, LEAVES[:size])


def test_consistency_proofs_match_the_recursion_and_verify() -> None:
    tree = MerkleTree(LEAVES)
    for new in range(1, len(LEAVES) + 1):
        for old in range(1, new + 1):
            path = tree.consistency_path(old, new)
            assert path == consistency_path(old, LEAVES[:new])
            verify_consistency(old, new, tree.root(old), tree.root(new), path)


@pytest.mark.parametrize(
    ("call", "args"), [("root", (71,)), ("inclusion_path", (5, 5)), ("consistency_path", (0, 3))]
)
def test_sizes_and_leaves_outside_the_tree_are_refused(call: str, args: tuple[int, ...]) -> None:
    with pytest.raises(SupplyChainError):
        getattr(MerkleTree(LEAVES), call)(*args)
