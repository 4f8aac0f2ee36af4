"""The local server fuzzed from its own OpenAPI schema: no 500s, and every answer matches the schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from flux_nb.server import EmbeddedServer, ServerConfig

# Outbound traffic is off: generated reference-image and webhook URLs are never contacted.
SERVER = EmbeddedServer(ServerConfig(max_active=100_000, outbound_hosts=frozenset())).start()
schema = schemathesis.openapi.from_url(f"{SERVER.url}/openapi.json")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(base_url=SERVER.url, checks=[not_a_server_error, response_schema_conformance])
