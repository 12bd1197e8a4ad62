"""schemathesis against the running service's own ``/openapi.json``: no 5xx, every answer as documented.

Positive and negative cases for every operation, with the right token (so that validation and the
handlers run, not only the 401 path), bounded by ``MAX_EXAMPLES`` to stay well under a minute.
"""

from __future__ import annotations

import secrets

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import register_untrained

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

TOKEN = "tok-" + secrets.token_hex(16)
MAX_EXAMPLES = 150


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    from cluster.service import deploy, free_port, undeploy

    home = tmp_path_factory.mktemp("fuzz_home")
    register_untrained(home, "tiny-cgan", "cgan")
    args = {"max_replicas": 1, "api_token": TOKEN, "max_total_rows": 2000, "inline_cap": 256}
    url = deploy(str(home), "127.0.0.1", free_port(), args)
    yield url, home
    undeploy()


def test_every_operation_conforms_to_the_openapi_schema(service):
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    url, _ = service
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
    samples, jobs = schema["/v1/samples"]["POST"], schema["/v1/jobs"]["POST"]
    explicit = [  # valid requests, so that the success answers of every format are checked too
        *(
            samples.Case(body={"model": "tiny-cgan", "per_class": 2, "format": f})
            for f in ("json", "npz", "png")
        ),
        samples.Case(body={"model": "tiny-cgan:v1", "counts": {"3": 4}, "seed": 7, "temperature": 0.5}),
        jobs.Case(body={"model": "tiny-cgan", "per_class": 5, "shard_rows": 20}),
        jobs.Case(body={"model": "tiny-cgan", "per_class": 1}, headers={"Idempotency-Key": "k1"}),
        jobs.Case(body={"model": "tiny-cgan", "per_class": 1}, headers={"Idempotency-Key": "k1"}),
    ]
    seen: dict[str, set[int]] = {}

    def check(case) -> None:
        response = case.call_and_validate(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks, timeout=60
        )
        seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)

    for case in explicit:
        check(case)
    fuzz = settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(given(case=cases)(check))
    fuzz()
    print("\nschemathesis statuses per operation:", {k: sorted(v) for k, v in sorted(seen.items())})
    assert len(seen) >= 8  # every operation was reached
    assert 200 in seen["POST /v1/samples"] and {200, 202} <= seen["POST /v1/jobs"]
