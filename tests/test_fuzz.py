"""The local server fuzzed from its own OpenAPI schema: no 500s, and every answer, its status and its
content type match the schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flux_nb.server import ServerConfig, create_app
from flux_nb.server.embedded import EmbeddedServer

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]

# Outbound traffic is off: generated reference-image and webhook URLs are never contacted.
# Building the app starts nothing; the server runs only while this module's test does.
APP = create_app(ServerConfig(max_active=100_000, max_active_per_key=100_000, outbound_hosts=frozenset()))
schema = schemathesis.openapi.from_dict(APP.openapi())


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[EmbeddedServer]:
    """The app over real HTTP for the whole module, stopped afterwards."""
    with EmbeddedServer(app=APP) as server:
        yield server


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_answers_match_the_schema(case: schemathesis.Case, fuzzed_server: EmbeddedServer) -> None:
    case.call_and_validate(base_url=fuzzed_server.url, checks=CHECKS)
