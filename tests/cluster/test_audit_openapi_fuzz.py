"""schemathesis on the audit operations with a cVAE registered (``test_openapi_fuzz.py`` has only a cGAN,
so every /v1/score there is a 400): valid requests in every input form answer as documented, and
positive and negative fuzzing of these operations gives no 5xx."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import register_untrained, running_service

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow

AUDIT_PATHS = r"^/v1/(score|denoise|jobs/\{job_id\}/audit.*)$"
NPZ = "application/x-npz"


@schemathesis.serializer(NPZ)
def _npz_body(ctx, value) -> bytes:
    """The npz upload's body as it is: bytes (schemathesis has no serializer for this media type)."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def url(ray_local, tmp_path_factory):
    home = tmp_path_factory.mktemp("audit_fuzz_home")
    register_untrained(home, "tiny-cvae", "cvae")
    register_untrained(home, "tiny-cgan", "cgan")
    with running_service(home, inline_cap=64) as service_url:
        yield service_url


def test_audit_operations_conform_to_the_openapi_schema(url):
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi import checks as openapi_checks

    from jobs.store.png import encode_pngs

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    every_check = [
        not_a_server_error,
        openapi_checks.status_code_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.response_schema_conformance,
    ]
    png = base64.b64encode(encode_pngs(np.full((1, 8, 8, 1), 200, np.uint8))[0]).decode()
    buf = io.BytesIO()
    np.savez(buf, images=np.zeros((3, 8, 8, 1), np.uint8), labels=np.arange(3))
    images = [{"png": png, "label": 3}, {"png": png, "label_name": "7"}]
    score, denoise = schema["/v1/score"]["POST"], schema["/v1/denoise"]["POST"]
    as_json = {"media_type": "application/json"}
    valid = [
        score.Case(body={"model": "tiny-cvae", "images": images, "samples": 2}, **as_json),
        score.Case(
            body={"model": "tiny-cvae:v1", "npz": base64.b64encode(buf.getvalue()).decode()}, **as_json
        ),
        score.Case(body=buf.getvalue(), media_type=NPZ, query={"model": "tiny-cvae", "samples": "1"}),
        *(
            denoise.Case(body={"model": "tiny-cvae", "images": images, "format": f}, **as_json)
            for f in ("json", "npz", "png")
        ),
        schema["/v1/jobs"]["POST"].Case(
            body={"kind": "audit", "model": "tiny-cvae", "dataset": "digits", "split": "test", "samples": 1}
        ),
    ]
    answers: dict[str, set[int]] = {}

    def call(case) -> None:
        response = case.call_and_validate(base_url=url, checks=every_check, timeout=120)
        answers.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)

    for case in valid:
        call(case)
    assert answers == {"POST /v1/score": {200}, "POST /v1/denoise": {200}, "POST /v1/jobs": {202}}
    fuzzed = schema.include(path_regex=AUDIT_PATHS)
    strategy = fuzzed.as_strategy(GenerationMode.POSITIVE) | fuzzed.as_strategy(GenerationMode.NEGATIVE)
    run = settings(
        max_examples=120,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(given(case=strategy)(call))
    run()
    print("\naudit operations, statuses seen:", {k: sorted(v) for k, v in sorted(answers.items())})
    assert {"POST /v1/score", "POST /v1/denoise", "GET /v1/jobs/{job_id}/audit"} <= set(answers)
