"""A workflow file split into the jobs a run hands to CI workers, the way Gitea splits it.

One job per workflow job and per combination of its matrix (``strategy.matrix``: the product of its
lists, less ``exclude``, plus ``include``; a matrix given as an expression is evaluated with ``inputs``
and ``vars``), ordered by ``needs`` (a job comes after every job it needs; otherwise in file order).
Each job's ``runs-on`` is evaluated with its matrix into the labels a worker must all have; its name is
its ``name`` evaluated with its matrix, or its id followed by the matrix values (``build (amd64)``),
as Gitea names them. Each carries a one-job workflow (``payload``): the file's top level with only
that job, its matrix reduced to the one combination, so a runner (act) runs exactly it.

Pure: text in, ``PlannedJob`` list out; a workflow that cannot be split is an ``InvalidWorkflow``.
Public API: ``split_workflow(text, *, inputs=None, vars=None) -> list[PlannedJob]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from diskci.bounded_yaml import load_bounded_yaml
from diskci.errors import InvalidRequest
from diskci.platform.ci.expressions import InvalidExpression, evaluate, interpolate, to_string

__all__ = ["InvalidWorkflow", "PlannedJob", "split_workflow"]


class InvalidWorkflow(InvalidRequest):
    """A workflow file that cannot be split into jobs (what is wrong, and in which job)."""


@dataclass(frozen=True)
class PlannedJob:
    """One job of a run, before it is stored: what a worker with all of ``labels`` runs."""

    job_id: str
    name: str
    labels: list[str]
    needs: list[str]
    payload: str
    matrix: dict[str, Any] = field(default_factory=dict)


def _load(text: str) -> dict[str, Any]:
    try:
        data = load_bounded_yaml(text)  # the repository's text: an alias bomb is refused
    except yaml.YAMLError as exc:
        raise InvalidWorkflow(f"the workflow is not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidWorkflow("the workflow is not a mapping")
    # YAML 1.1 reads the key ``on`` as true: give it its name back, in its place
    data = {("on" if key is True else key): value for key, value in data.items()}
    jobs = data.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        raise InvalidWorkflow("the workflow has no jobs")
    for job_id, job in jobs.items():
        if not isinstance(job_id, str) or not isinstance(job, dict):
            raise InvalidWorkflow(f"job {job_id!r} is not a mapping")
    return data


def _needs(job_id: str, job: Mapping[str, Any], known: Mapping[str, Any]) -> list[str]:
    raw = job.get("needs", [])
    needs = [raw] if isinstance(raw, str) else raw
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise InvalidWorkflow(f"job {job_id}: needs must be a job id or a list of them")
    for need in needs:
        if need not in known:
            raise InvalidWorkflow(f"job {job_id} needs {need!r}, which is not a job of this workflow")
    return list(needs)


def _order(jobs: Mapping[str, Any]) -> list[str]:
    """Job ids so that each comes after those it needs (file order otherwise); a cycle is an error."""
    needs = {job_id: _needs(job_id, job, jobs) for job_id, job in jobs.items()}
    done: list[str] = []
    pending = list(jobs)
    while pending:
        ready = [j for j in pending if all(n in done for n in needs[j])]
        if not ready:
            raise InvalidWorkflow(f"the needs of jobs {', '.join(pending)} form a cycle")
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def _matrix(job_id: str, job: Mapping[str, Any], contexts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The combinations of the job's matrix ([{}] when it has none)."""
    strategy = job.get("strategy") or {}
    if not isinstance(strategy, dict):
        raise InvalidWorkflow(f"job {job_id}: strategy is not a mapping")
    raw = strategy.get("matrix")
    if raw is None:
        return [{}]
    if isinstance(raw, str):
        raw = evaluate(raw, contexts)
    if not isinstance(raw, dict):
        raise InvalidWorkflow(f"job {job_id}: the matrix is not a mapping")
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if key in ("include", "exclude"):
            continue
        if isinstance(values, str):
            values = evaluate(values, contexts)
        if not isinstance(values, list) or not values:
            raise InvalidWorkflow(f"job {job_id}: matrix.{key} is not a non-empty list (it is {values!r})")
        axes[str(key)] = values

    def entries(name: str) -> list[dict[str, Any]]:
        value = raw.get(name, [])
        if isinstance(value, str):
            value = evaluate(value, contexts)
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            raise InvalidWorkflow(f"job {job_id}: matrix.{name} is not a list of mappings")
        return value

    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    if not axes:
        combos = []
    for excluded in entries("exclude"):
        combos = [c for c in combos if any(c.get(k) != v for k, v in excluded.items())]
    for included in entries("include"):
        extended = False
        for combo in combos:
            if all(combo[k] == v for k, v in included.items() if k in axes):
                combo.update({k: v for k, v in included.items() if k not in axes})
                extended = True
        if not extended:
            combos.append(dict(included))
    if not combos:
        raise InvalidWorkflow(f"job {job_id}: the matrix has no combination left")
    return combos


def _labels(job_id: str, job: Mapping[str, Any], contexts: Mapping[str, Any]) -> list[str]:
    raw = job.get("runs-on")
    if raw is None:
        raise InvalidWorkflow(f"job {job_id} has no runs-on")
    value = evaluate(raw, contexts) if isinstance(raw, str) else raw
    labels = [value] if isinstance(value, str) else value
    if isinstance(labels, list):
        labels = [evaluate(v, contexts) if isinstance(v, str) else v for v in labels]
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) and v for v in labels):
        raise InvalidWorkflow(f"job {job_id}: runs-on is not a label or a list of labels ({value!r})")
    return labels


def _name(job_id: str, job: Mapping[str, Any], matrix: Mapping[str, Any], contexts: Mapping[str, Any]) -> str:
    name = job.get("name") or job_id
    if not isinstance(name, str):
        raise InvalidWorkflow(f"job {job_id}: name is not a string")
    if matrix and "${{" not in name:
        name = f"{name} ({', '.join(to_string(matrix[k]) for k in sorted(matrix))})"
    return interpolate(name, contexts)


def _payload(top: Mapping[str, Any], job_id: str, job: Mapping[str, Any], name: str,
             labels: list[str], matrix: Mapping[str, Any]) -> str:  # fmt: skip
    single = dict(job)
    single["name"] = name
    single["runs-on"] = labels[0] if len(labels) == 1 else labels
    if matrix:
        strategy = dict(single.get("strategy") or {})
        strategy["matrix"] = {k: [v] for k, v in matrix.items()}
        single["strategy"] = strategy
    workflow = {k: v for k, v in top.items() if k != "jobs"}
    workflow["jobs"] = {job_id: single}
    return yaml.safe_dump(workflow, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)


def split_workflow(
    text: str, *, inputs: Mapping[str, Any] | None = None, vars: Mapping[str, Any] | None = None
) -> list[PlannedJob]:
    """The jobs of the workflow ``text``, ordered by ``needs``; ``inputs`` are a dispatch's inputs."""
    data = _load(text)
    jobs: dict[str, Any] = data["jobs"]
    base = {"inputs": dict(inputs or {}), "vars": dict(vars or {})}
    planned: list[PlannedJob] = []
    for job_id in _order(jobs):
        job = jobs[job_id]
        try:
            for matrix in _matrix(job_id, job, base):
                contexts = {**base, "matrix": matrix}
                labels = _labels(job_id, job, contexts)
                name = _name(job_id, job, matrix, contexts)
                planned.append(
                    PlannedJob(
                        job_id=job_id,
                        name=name,
                        labels=labels,
                        needs=_needs(job_id, job, jobs),
                        payload=_payload(data, job_id, job, name, labels, matrix),
                        matrix=matrix,
                    )
                )
        except InvalidExpression as exc:
            raise InvalidWorkflow(f"job {job_id}: {exc.message}") from exc
    names = [p.name for p in planned]
    if len(set(names)) != len(names):
        doubled = sorted({n for n in names if names.count(n) > 1})
        raise InvalidWorkflow(f"two jobs have the same name: {', '.join(doubled)}")
    return planned
