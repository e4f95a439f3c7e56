"""Property-based fuzzing of the served OpenAPI spec (schemathesis), in-process over ASGI with a valid key.

Whatever schemathesis generates from the spec, valid (positive) or deliberately invalid (negative),
the API must answer without a server error, with a status code the spec documents, and a body of the
documented content type and schema. It runs twice: on the embedded stack (SQLite, local folder) and on
the production one (PostgreSQL, S3), whose database refuses text SQLite keeps (the NUL character); there a
third mode sends valid cases with a NUL put into one of their text values.
Bounded: a few examples per operation and mode, so each run stays well under two minutes.

Cases are drawn from each operation's hypothesis strategy directly (rather than through the
schemathesis pytest plugin) so the test runs the same under any pytest version.
"""

from __future__ import annotations

import copy

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pg_harness import postgres_s3_api
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_MODE = 5
# More on PostgreSQL: the cases that reach its text columns with odd characters are the point of that run.
POSTGRES_EXAMPLES_PER_MODE = 12


NUL = "nul"  # positive cases with a NUL character put into one of their text values


def _text_leaves(value, path: tuple = ()):
    """Paths of the strings in a JSON-like value (dict keys are names, not values, so they are left)."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _text_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _text_leaves(item, (*path, index))


def _with_nul(case, where: str, path: tuple):
    """``case`` with a NUL inside the string at ``path`` of its body, query or path parameters."""
    container = copy.deepcopy(getattr(case, where))
    if not path:  # the body is the string itself
        setattr(case, where, container[:1] + "\x00" + container[1:])
        return case
    parent = container
    for part in path[:-1]:
        parent = parent[part]
    text = parent[path[-1]]
    parent[path[-1]] = text[:1] + "\x00" + text[1:]
    setattr(case, where, container)
    return case


def _nul_cases(operation):
    """Valid cases, each with one text value made to hold a NUL: what PostgreSQL cannot store.

    Random generation reaches such a value too rarely for a bounded run to count on it.
    """

    def spoil(case):
        targets = [(where, path) for where in ("body", "query", "path_parameters")
                   for path in _text_leaves(getattr(case, where, None))]
        if not targets:
            return st.just(case)
        return st.sampled_from(targets).map(lambda target: _with_nul(case, *target))

    return operation.as_strategy(generation_mode=GenerationMode.POSITIVE).flatmap(spoil)


def _fuzz(operation, mode, headers: dict[str, str], examples: int) -> tuple[int, str | None]:
    """Run one operation in one mode; returns (cases sent, the failure found or None)."""
    sent = 0
    strategy = _nul_cases(operation) if mode == NUL else operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=examples,
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
        label = mode if mode == NUL else mode.value
        return sent, f"{operation.method.upper()} {operation.path} [{label}]: {exc}"[:2000]
    return sent, None


def _fuzz_all(app, headers: dict[str, str], examples: int, modes: tuple = (GenerationMode.POSITIVE,
                                                                        GenerationMode.NEGATIVE)) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    failures: list[str] = []
    calls = 0
    for operation in operations:
        for mode in modes:
            sent, failure = _fuzz(operation, mode, headers, examples)
            calls += sent
            if failure:
                failures.append(failure)
    assert calls >= len(operations) * len(modes)
    assert not failures, "\n\n".join(failures)


def test_api_never_answers_5xx(api):
    _fuzz_all(api.app, api.a, EXAMPLES_PER_MODE)


@pytest.fixture
def pg_api(tmp_path, shared_models, postgres_url, s3_bucket):
    with postgres_s3_api(tmp_path, shared_models, postgres_url, s3_bucket) as harness:
        yield harness


def test_api_never_answers_5xx_on_postgres_and_s3(pg_api):
    _fuzz_all(pg_api.app, pg_api.a, POSTGRES_EXAMPLES_PER_MODE,
              (GenerationMode.POSITIVE, GenerationMode.NEGATIVE, NUL))
