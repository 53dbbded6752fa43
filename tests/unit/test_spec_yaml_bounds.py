"""YAML the platform reads is bounded: a billion-laughs document (nested anchors and aliases) in a
platform spec or a workflow file is refused at once, with bounded memory and an error naming the file
and the line, while ordinary anchors and aliases still load."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from diskci.bounded_yaml import MAX_YAML_NODES, load_bounded_yaml
from diskci.errors import SpecError
from diskci.platform.ci.jobs import InvalidWorkflow, split_workflow
from diskci.platform.ci.triggers import push_tag_patterns
from diskci.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def alias_bomb(levels: int, width: int = 10, *, key: str = "name") -> str:
    """``levels`` anchors, each a list of ``width`` aliases of the one before: ``width**levels``
    scalars once expanded; the last one is the value of ``key``."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    lines.append(f"{key}: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_a_spec_that_expands_to_more_than_10_to_the_9_nodes_is_refused_at_once(tmp_path: Path) -> None:
    spec = tmp_path / "laughs.yaml"
    spec.write_text(alias_bomb(9))  # 10**9 scalars
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(SpecError) as info:
            load_spec(spec)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"refused in {elapsed * 1000:.1f} ms")
    assert peak < 8 * 2**20, peak  # bytes: the loader never holds more than the few nodes it composed
    error = info.value
    assert error.source == str(spec)
    assert str(spec) in str(error)
    ((where, what),) = error.problems
    assert where.startswith("(yaml) line ")
    assert f"expands to more than {MAX_YAML_NODES} nodes" in what


def test_a_wide_bomb_and_a_merge_key_bomb_are_refused_too(tmp_path: Path) -> None:
    wide = tmp_path / "wide.yaml"
    wide.write_text(alias_bomb(3, width=1000))  # 10**9 through three levels of a thousand aliases
    merge = tmp_path / "merge.yaml"
    merge.write_text(
        "m0: &m0 {a: [x, x, x, x, x, x, x, x, x, x]}\n"
        + "".join(
            f"m{i}: &m{i} {{<<: *m{i - 1}, b{i}: [*m{i - 1}, *m{i - 1}, *m{i - 1}, *m{i - 1}]}}\n"
            for i in range(1, 16)
        )
        + "name: *m15\n"
    )
    for path in (wide, merge):
        tracemalloc.start()
        try:
            with pytest.raises(SpecError, match="expands to more than"):
                load_spec(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * 2**20, peak  # refused while composing: nothing was expanded


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(yaml.YAMLError, match="recursive structure"):
        load_bounded_yaml("a: &a [1, *a]\n")


def test_ordinary_anchors_and_aliases_still_load(tmp_path: Path) -> None:
    text = (ROOT / "platforms" / "debian-12-amd64.yaml").read_text()
    assert load_bounded_yaml(text) == yaml.safe_load(text)
    shared = "base: &pkgs [busybox, zstd]\nextra: *pkgs\nmore: {<<: {x: 1}, y: 2}\n"
    assert load_bounded_yaml(shared) == {
        "base": ["busybox", "zstd"],
        "extra": ["busybox", "zstd"],
        "more": {"x": 1, "y": 2},
    }


def test_the_bound_is_on_expanded_nodes_not_on_text() -> None:
    # 201 (l0) + 40 201 (l1: 200 lists of 201) + 40 201 (name: l1 again) + 3 keys + 1: 80 607 nodes
    just_under = alias_bomb(2, width=200)
    assert len(load_bounded_yaml(just_under)["name"]) == 200
    with pytest.raises(yaml.YAMLError, match="expands to more than 1000 nodes"):
        load_bounded_yaml(just_under, max_nodes=1000)


def test_a_workflow_file_that_is_an_alias_bomb_is_refused_quickly() -> None:
    bomb = "on: push\n" + alias_bomb(9, key="jobs")
    tracemalloc.start()
    try:
        with pytest.raises(InvalidWorkflow, match="expands to more than"):
            split_workflow(bomb)
        assert push_tag_patterns(bomb) is None  # the trigger filter reads it as "not a workflow"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
