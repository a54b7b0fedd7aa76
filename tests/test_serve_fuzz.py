"""The server under requests generated from its own OpenAPI schema (schemathesis), on 127.0.0.1:
no server error, every answer in the documented shape, and it keeps serving."""

import pytest
import requests

from gpt2_lightning.apps.serve import create_app
from gpt2_lightning.data.prompts import get_style
from gpt2_lightning.export.load import load_model
from tests.serving import serving

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance  # noqa: E402


@pytest.fixture(scope="module")
def server_url(tiny_export):
    model, meta = load_model(tiny_export)
    with serving(create_app(model, get_style(meta["prompt_style"]), name="tiny", default_max_tokens=4,
                            request_timeout=10)) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(server_url):
    return schemathesis.openapi.from_url(f"{server_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_get_no_server_error_and_documented_answers(case, server_url):
    if case.body is not None and isinstance(case.body, dict) and case.body.get("stream"):
        case.body["stream"] = False  # a stream is one long response: checked elsewhere
    if isinstance(case.body, dict) and isinstance(case.body.get("max_tokens"), int):
        case.body["max_tokens"] = min(case.body["max_tokens"], 4)
    case.call_and_validate(base_url=server_url, timeout=60,
                           checks=[not_a_server_error, content_type_conformance, response_schema_conformance])
    assert requests.get(f"{server_url}/health", timeout=10).ok
