"""Fuzz the platform's HTTP API from its own OpenAPI document (schemathesis, in-process, bounded).

Every operation the document declares is called with generated input, valid and invalid (20 examples
each, derandomized, so a run is repeatable and short), under an admin token so the calls get past auth
into the handlers. Each answer must be no server error, and its status code and content type must be
ones the document declares for that operation. (Schemathesis' own pytest loader does not run under
pytest 9, so the operations are walked here with their Hypothesis strategies.)
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from diskci.platform.http.app import API_PREFIX

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]
EXAMPLES = 20  # the bound: examples per operation and mode, never a time


def _fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str], failures: list[str]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except FailureGroup as group:  # the checks that failed
            for failure in group.exceptions:
                failures.append(f"{operation.label} ({mode.value}): {failure}")
        except Exception as exc:  # the app's own exception
            failures.append(f"{operation.label} ({mode.value}): {type(exc).__name__}: {exc}")

    try:
        run()
    except Unsatisfiable:
        # An operation with nothing to break (no parameters, no body) has no invalid input.
        assert mode is GenerationMode.NEGATIVE, operation.label


def test_api_answers_every_generated_call_as_documented(
    platform_app: Any, admin_headers: dict[str, str]
) -> None:
    schema = schemathesis.openapi.from_asgi(f"{API_PREFIX}/openapi.json", platform_app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(operation, mode, admin_headers, failures)
    assert not failures, "\n\n".join(dict.fromkeys(failures))
