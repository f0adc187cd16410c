"""Property-based fuzzing of the running server from its own OpenAPI document (schemathesis).

Bounded: a fixed number of generated requests per operation and generation mode (valid and
invalid data). Every answer must be documented (status code, content type, body schema),
never a 5xx, and invalid input must be refused. Positive-data acceptance is not required:
the document cannot express every rule (a known location id, times not in the future, no
duplicate hours), so schema-valid requests may rightly get 404/422.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

pytestmark = pytest.mark.service

CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance,
          checks.negative_data_rejection]
EXAMPLES = 50  # per operation and generation mode


@pytest.fixture(scope="module")
def api(server):
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


POSITIVE, NEGATIVE = GenerationMode.POSITIVE, GenerationMode.NEGATIVE
# invalid data exists only where there are parameters or a body
CASES = [("GET /v1/locations", POSITIVE), ("GET /healthz", POSITIVE), ("GET /readyz", POSITIVE),
         ("GET /openapi.json", POSITIVE),
         ("GET /v1/forecasts/{location_id}", POSITIVE),
         ("GET /v1/forecasts/{location_id}", NEGATIVE),
         ("POST /v1/forecasts", POSITIVE), ("POST /v1/forecasts", NEGATIVE)]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{lbl} {m.value}" for lbl, m in CASES])
def test_every_answer_matches_the_document_and_none_is_a_5xx(api, server, label, mode):
    operation = api.find_operation_by_label(label)
    assert operation is not None, label
    session = requests.Session()
    seen: dict[int, int] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        response = case.call_and_validate(base_url=server.url, session=session, checks=CHECKS,
                                          timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    fuzz()
    assert seen, "no request was sent"
    assert max(seen) < 500
