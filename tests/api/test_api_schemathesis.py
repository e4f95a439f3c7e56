"""Property-based fuzzing of the served OpenAPI spec (schemathesis), in-process over ASGI with a valid key.

Whatever schemathesis generates from the spec, valid (positive) or deliberately invalid (negative),
the API must answer without a server error, with a status code the spec documents, and a body of the
documented content type and schema. Bounded: a few examples per operation and mode, so the whole run
stays well under two minutes.

Cases are drawn from each operation's hypothesis strategy directly (rather than through the
schemathesis pytest plugin) so the test runs the same under any pytest version.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_MODE = 5


def _fuzz(operation, mode: GenerationMode, headers: dict[str, str]) -> tuple[int, str | None]:
    """Run one operation in one mode; returns (cases sent, the failure found or None)."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_MODE,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(headers=headers, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:  # no inputs to get wrong (e.g. GET /healthz has no negative cases)
        return sent, None
    except Exception as exc:  # hypothesis re-raises the shrunk failure; report it with the others
        return sent, f"{operation.method.upper()} {operation.path} [{mode.value}]: {exc}"[:2000]
    return sent, None


def test_api_never_answers_5xx(api):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    failures: list[str] = []
    calls = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            sent, failure = _fuzz(operation, mode, api.a)
            calls += sent
            if failure:
                failures.append(failure)
    assert calls >= len(operations) * 2
    assert not failures, "\n\n".join(failures)
