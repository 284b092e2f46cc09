"""schemathesis against the gateway's own OpenAPI schema (``/schema/openapi.json``): no 5xx.

Valid and invalid requests for every operation, with a backend's API key so
that they get past authentication into the handlers. Streaming operations are
sent with a streaming client and judged by their status: an SSE stream of a
task that never ends would never finish a buffered read.
"""

from __future__ import annotations

from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.integration.gateway_server import running_gateway
from tests.security.conftest import backend, secured_doc

STREAMS = r"/events$"
PROVIDERS = ["ailab", "aholo", "tryon", "genpic", "videoproc"]
EXAMPLES = 200


def test_schemathesis_finds_no_server_error(sim: str) -> None:
    # Generous limits: refusals by the limits are not what is being tested here.
    doc = secured_doc(sim, registrations_per_s=1000, registration_burst=100_000)
    with running_gateway(doc) as (base, _gw):
        schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json", timeout=10)
        plain = schema.exclude(path_regex=STREAMS)
        streams = schema.include(path_regex=STREAMS)
        assert len(list(plain.get_all_operations())) >= 6
        assert len(list(streams.get_all_operations())) == 2
        # Random provider names are almost never configured ones: some cases name
        # real providers, so that ids, bodies and cursors reach the adapters too.
        by_task = schema.include(path_regex=r"\{provider\}")
        watch = schema.include(path="/v1/tasks", method="POST")
        cases = st.one_of(
            plain.as_strategy(GenerationMode.POSITIVE),
            plain.as_strategy(GenerationMode.NEGATIVE),
            streams.as_strategy(GenerationMode.POSITIVE),
            streams.as_strategy(GenerationMode.NEGATIVE),
            st.sampled_from(PROVIDERS).flatmap(
                lambda provider: by_task.as_strategy(path_parameters={"provider": provider})
            ),
            st.tuples(st.sampled_from(PROVIDERS), st.text(min_size=1, max_size=40)).flatmap(
                lambda pt: watch.as_strategy(body={"provider": pt[0], "task_id": pt[1]})
            ),
        )
        statuses: list[int] = []

        with httpx.Client(timeout=10, trust_env=False) as client:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases)
            def no_server_error(case: Any) -> None:
                if case.operation.path.endswith("/events"):
                    statuses.append(status_of_stream(client, case, base))
                    assert statuses[-1] < 500, case.as_curl_command()
                    return
                response = case.call(base_url=base, headers=backend, timeout=10)
                statuses.append(response.status_code)
                case.validate_response(response, checks=[not_a_server_error])

            no_server_error()

        assert (httpx.get(f"{base}/healthz", trust_env=False)).status_code == 200
    # It reached the handlers, not only the validators.
    assert {200, 201} & set(statuses) and {400, 404, 422} & set(statuses)


def status_of_stream(client: httpx.Client, case: Any, base: str) -> int:
    """Open the stream, take the status, hang up."""
    kwargs = case.as_transport_kwargs(base_url=base, headers=backend)
    with client.stream(
        kwargs["method"],
        kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        cookies=kwargs.get("cookies"),
    ) as reply:
        return reply.status_code
