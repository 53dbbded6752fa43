"""Splitting a workflow into jobs as Gitea does: one per job and matrix combination, ordered by needs,
with labels and names evaluated from the matrix and a one-job workflow for the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from diskci.ci.workflow import render, workflow
from diskci.platform.ci.expressions import InvalidExpression, evaluate, interpolate
from diskci.platform.ci.jobs import InvalidWorkflow, split_workflow
from diskci.spec import Architecture, load_spec

ROOT = Path(__file__).resolve().parents[2]


def _generated(arches: tuple[str, ...] = ("amd64", "arm64")) -> str:
    spec = load_spec(ROOT / "platforms/debian-12-amd64.yaml")
    spec = spec.model_copy(
        update={
            "architectures": tuple(Architecture(a) for a in arches),
            "kernel_package": {Architecture(a): f"linux-image-{a}" for a in arches},
        }
    )
    return render(workflow(spec, "platforms/debian-12-amd64.yaml"))


def _payload(text: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load(text)
    return data


def test_the_generated_workflow_splits_into_one_build_per_arch_then_publish() -> None:
    jobs = split_workflow(_generated())
    assert [(j.job_id, j.name, j.labels, j.needs, j.matrix) for j in jobs] == [
        ("build", "build amd64", ["amd64"], [], {"arch": "amd64"}),
        ("build", "build arm64", ["arm64"], [], {"arch": "arm64"}),
        ("publish", "publish", ["amd64"], ["build"], {}),
    ]
    single = _payload(jobs[1].payload)
    assert list(single["jobs"]) == ["build"]
    build = single["jobs"]["build"]
    assert build["strategy"]["matrix"] == {"arch": ["arm64"]}
    assert build["runs-on"] == "arm64" and build["name"] == "build arm64"
    assert single["on"]["push"] == {"tags": ["v*"]}  # "on" stays the key "on", not true
    assert single["env"]["DISKCI_SPEC"] == "platforms/debian-12-amd64.yaml"
    publish = _payload(jobs[2].payload)["jobs"]["publish"]
    assert publish["needs"] == "build" and "strategy" not in publish


def test_dispatch_inputs_choose_the_matrix() -> None:
    jobs = split_workflow(_generated(), inputs={"arches": '["arm64"]'})
    assert [j.name for j in jobs] == ["build arm64", "publish"]


HAND_WRITTEN = """
name: hand
on: [push]
jobs:
  deploy:
    needs: [test, lint]
    runs-on: [self-hosted, amd64]
    steps: [{run: echo deploy}]
  test:
    runs-on: ${{ matrix.os }}
    strategy:
      matrix:
        os: [amd64, arm64]
        py: ['3.11', '3.12']
        exclude:
          - {os: arm64, py: '3.11'}
        include:
          - {os: amd64, py: '3.12', extra: yes}
          - {os: riscv64, py: '3.13'}
    steps: [{run: echo test}]
  lint:
    runs-on: amd64
    steps: [{run: echo lint}]
"""


def test_matrix_include_exclude_and_needs_order() -> None:
    jobs = split_workflow(HAND_WRITTEN)
    assert [(j.job_id, j.name, j.labels) for j in jobs] == [
        ("test", "test (amd64, 3.11)", ["amd64"]),
        ("test", "test (true, amd64, 3.12)", ["amd64"]),  # every key, sorted: extra, os, py
        ("test", "test (arm64, 3.12)", ["arm64"]),
        ("test", "test (riscv64, 3.13)", ["riscv64"]),
        ("lint", "lint", ["amd64"]),
        ("deploy", "deploy", ["self-hosted", "amd64"]),
    ]
    assert jobs[1].matrix == {"os": "amd64", "py": "3.12", "extra": True}
    assert jobs[-1].needs == ["test", "lint"]
    assert _payload(jobs[-1].payload)["jobs"]["deploy"]["runs-on"] == ["self-hosted", "amd64"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobs: {}", "no jobs"),
        ("jobs: {a: {runs-on: x, needs: b}}", "needs 'b', which is not a job"),
        ("jobs: {a: {runs-on: x, needs: b}, b: {runs-on: x, needs: a}}", "form a cycle"),
        ("jobs: {a: {steps: []}}", "has no runs-on"),
        ("jobs: {a: {runs-on: '${{ matrix.nope }}'}}", "runs-on is not a label"),
        ("jobs: {a: {runs-on: x, strategy: {matrix: {os: []}}}}", "not a non-empty list"),
        ("jobs: {a: {runs-on: '${{ secrets.X }}'}}", "unknown context 'secrets'"),
        ("jobs: {a: {runs-on: x, strategy: {matrix: '${{ fromJSON(''nope'') }}'}}}", "not JSON"),
        ("[1, 2]", "not a mapping"),
        ("jobs: {a: {runs-on: x}, b: {name: a, runs-on: x}}", "the same name"),
    ],
)
def test_workflows_that_cannot_be_split_are_named(text: str, message: str) -> None:
    with pytest.raises(InvalidWorkflow, match=message):
        split_workflow(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("${{ fromJSON(inputs.a || '[1,2]') }}", [1, 2]),
        ("${{ fromJSON(inputs.b || '[1,2]') }}", ["x"]),
        ("${{ inputs.a && 'yes' }}", None),
        ("${{ !inputs.a }}", True),
        ("${{ matrix.arch == 'AMD64' }}", True),
        ("${{ join(fromJSON('[\"a\",\"b\"]'), '+') }}", "a+b"),
        ("${{ format('{0}-{1}{{', 'x', 2) }}", "x-2{"),
        ("${{ contains(fromJSON('[\"amd64\"]'), matrix.arch) }}", True),
        ("${{ startsWith('v1.2', 'v') }}", True),
        ("${{ 'it''s' }}", "it's"),
        ("build ${{ matrix.arch }} ${{ null }}!", "build amd64 !"),
    ],
)
def test_expressions(text: str, value: Any) -> None:
    contexts = {"inputs": {"b": '["x"]'}, "matrix": {"arch": "amd64"}}
    assert evaluate(text, contexts) == value


def test_interpolation_writes_values_as_strings() -> None:
    assert interpolate("${{ true }}/${{ 3 }}/${{ fromJSON('[1]') }}", {}) == "true/3/[1]"
    with pytest.raises(InvalidExpression, match="unknown function"):
        evaluate("${{ hashFiles('x') }}", {})
    with pytest.raises(InvalidExpression, match="cannot read"):
        evaluate("${{ a ~ b }}", {"a": 1})
