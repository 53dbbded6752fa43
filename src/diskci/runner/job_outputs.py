"""A job's ``outputs:`` evaluated once it ended, from its steps' outputs, as act_runner reports them.

act in host mode evaluates a job's ``outputs:`` only for the jobs that need it in the same act run, and
never prints them; the runner protocol wants them in ``UpdateTask`` (``outputs``) so the platform can
hand them to the jobs that need this one (and compare two builds of a reproducibility check). So the
runner evaluates each declared output itself (``${{ steps.<id>.outputs.<name> }}`` and the like) with
``diskci.platform.ci.expressions.interpolate``, against the contexts a job's outputs may read:
``steps`` (each step's ``outputs``, ``outcome`` and ``conclusion``, by its ``id``), ``needs`` (what the
platform handed), ``matrix`` (the job's one combination), ``vars`` and ``inputs``.

Pure: ``job_outputs(job, step_outputs, step_results, ...) -> (outputs, problems)``. An output that
cannot be evaluated, is too long, or holds a secret (``masks``: GitHub drops those too) is left out,
and ``problems`` says which and why, for the job's log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from diskci.platform.ci.expressions import InvalidExpression, interpolate

__all__ = ["MAX_OUTPUT_CHARS", "job_outputs"]

MAX_OUTPUT_CHARS = 1024 * 1024  # what the platform stores of one output


def _conclusion(result: str | None) -> str | None:
    return None if result is None else result.removeprefix("RESULT_").lower()


def _matrix(job: Mapping[str, Any]) -> dict[str, Any]:
    """The job's matrix combination (the payload's matrix has one value per key)."""
    strategy = job.get("strategy")
    matrix = strategy.get("matrix") if isinstance(strategy, Mapping) else None
    if not isinstance(matrix, Mapping):
        return {}
    combo: dict[str, Any] = {}
    for key, values in matrix.items():
        if isinstance(values, list) and len(values) == 1:
            combo[str(key)] = values[0]
    return combo


def _needs(needs: Mapping[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for job_id, need in needs.items():
        need = need if isinstance(need, Mapping) else {}
        result = str(need.get("result") or "RESULT_SUCCESS")
        context[str(job_id)] = {"outputs": dict(need.get("outputs") or {}), "result": _conclusion(result)}
    return context


def job_outputs(
    job: Mapping[str, Any],
    step_outputs: Mapping[str, Mapping[str, str]],
    step_results: Mapping[str, str | None],
    *,
    needs: Mapping[str, Any] | None = None,
    variables: Mapping[str, str] | None = None,
    inputs: Mapping[str, Any] | None = None,
    masks: Iterable[str] = (),
) -> tuple[dict[str, str], list[str]]:
    """The job's outputs and, for each one left out, why.

    ``job`` is the workflow's job (its ``outputs:`` mapping); ``step_outputs`` the outputs each step
    set, by step key (its ``id``, else its index); ``step_results`` each step's result (``RESULT_*``)
    by the same key.
    """
    declared = job.get("outputs")
    if not isinstance(declared, Mapping) or not declared:
        return {}, []
    steps: dict[str, Any] = {}
    for key in dict.fromkeys([*step_results, *step_outputs]):
        result = _conclusion(step_results.get(key))
        steps[key] = {"outputs": dict(step_outputs.get(key) or {}), "outcome": result, "conclusion": result}
    contexts = {
        "steps": steps,
        "needs": _needs(needs or {}),
        "matrix": _matrix(job),
        "vars": dict(variables or {}),
        "inputs": dict(inputs or {}),
    }
    secrets = [m for m in masks if m and len(m.strip()) >= 3]
    outputs: dict[str, str] = {}
    problems: list[str] = []
    for name, expression in declared.items():
        name = str(name)
        try:
            value = interpolate(str(expression if expression is not None else ""), contexts)
        except InvalidExpression as exc:
            problems.append(f"output {name} left out: {exc.message}")
            continue
        if len(value) > MAX_OUTPUT_CHARS:
            problems.append(f"output {name} left out: {len(value)} characters (at most {MAX_OUTPUT_CHARS})")
            continue
        if any(secret in value for secret in secrets):
            problems.append(f"output {name} left out: it holds a secret")
            continue
        outputs[name] = value
    return outputs, problems
