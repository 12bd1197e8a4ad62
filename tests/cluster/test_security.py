"""The service under hostile or broken conditions: a corrupted checkpoint, wrong tokens, oversized bodies,
random JSON. Real local Ray, Serve on 127.0.0.1, a token-protected app over its own storage root."""

from __future__ import annotations

import http.client
import json
import math
import secrets
import time
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import register_untrained, running_service

pytestmark = pytest.mark.slow

TOKEN = "tok-" + secrets.token_hex(16)
MAX_BODY = 1 << 20  # cluster.api.MAX_BODY_BYTES


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    """The app with a token over a root holding good-cgan:v1 and bad-cvae:v1 (weights.pt cut in half)."""
    home = tmp_path_factory.mktemp("security_home")
    register_untrained(home, "good-cgan", "cgan")
    register_untrained(home, "bad-cvae", "cvae")
    weights = home / "models" / "bad-cvae" / "v1" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = {"api_token": TOKEN, "max_total_rows": 2000, "max_running": 1, "max_in_flight": 1}
    with running_service(home, **args) as url:
        yield url, home


def call(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = TOKEN,
    headers: dict | None = None,
    chunked: bool = False,
) -> tuple[int, str, bytes]:
    """One request over a fresh connection; (status, content type, raw body)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    h.update(headers or {})
    try:
        if chunked:
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            conn.request(method, path, body=chunks, headers=h, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()


def error_body(raw: bytes) -> dict:
    """A 4xx/5xx body: JSON with exactly the keys error and detail."""
    reply = json.loads(raw)
    assert isinstance(reply, dict) and set(reply) == {"error", "detail"}, reply
    return reply


def wait_job(url: str, job_id: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = json.loads(call(url, "GET", f"/v1/jobs/{job_id}")[2])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(job)


# ----------------------------------------------------------------------------- a corrupted model version


def test_corrupted_checkpoint_is_503_and_the_other_model_keeps_serving(service):
    url, _ = service
    for _ in range(2):  # a failed load is not cached as loaded: the second call fails the same way
        code, _, raw = call(
            url, "POST", "/v1/samples", json.dumps({"model": "bad-cvae", "per_class": 1}).encode()
        )
        assert code == 503, raw
        reply = error_body(raw)
        assert reply["error"] == "model unavailable"
        assert "bad-cvae:v1" in reply["detail"] and "corrupted checkpoint file" in reply["detail"]
        assert "weights.pt" in reply["detail"]
        code, _, raw = call(
            url, "POST", "/v1/samples", json.dumps({"model": "good-cgan", "per_class": 2}).encode()
        )
        assert code == 200, raw
        body = json.loads(raw)
        assert body["model"] == "good-cgan:v1" and body["count"] == 20
        assert [s["label"] for s in body["samples"]] == [k for k in range(10) for _ in range(2)]


def test_job_for_corrupted_checkpoint_fails_naming_the_model(service):
    url, _ = service
    req = {"model": "bad-cvae", "per_class": 3, "shard_rows": 10}
    code, _, raw = call(url, "POST", "/v1/jobs", json.dumps(req).encode())
    assert code == 202, raw  # the request is valid; the checkpoint is only read when a shard runs
    job = wait_job(url, json.loads(raw)["id"])
    assert job["status"] == "failed", job
    assert "bad-cvae:v1" in job["error"] and "unavailable" in job["error"], job["error"]
    out = Path(job["output"])
    assert not (out / "_SUCCESS").exists() and not (out / "manifest.json").exists()
    assert not list(out.rglob("*.parquet")) and not list(out.rglob(".tmp-*"))
    code, _, raw = call(url, "POST", "/v1/jobs", json.dumps({"model": "good-cgan", "per_class": 2}).encode())
    assert code == 202 and wait_job(url, json.loads(raw)["id"])["status"] == "succeeded"


# ----------------------------------------------------------------------------- token


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN],
    ids=["none", "empty", "no-token", "wrong", "longer", "shorter", "basic", "no-scheme"],
)
@pytest.mark.parametrize("method, path", [("POST", "/v1/samples"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs")])
def test_401_bodies_never_echo_the_token(service, authorization, method, path):
    url, _ = service
    body = json.dumps({"model": "good-cgan", "per_class": 1}).encode() if method == "POST" else None
    headers = {} if authorization is None else {"Authorization": authorization}
    code, ctype, raw = call(url, method, path, body, token=None, headers=headers)
    assert code == 401 and ctype == "application/json"
    reply = error_body(raw)
    assert reply["error"] == "unauthorized" and "Bearer <token>" in reply["detail"]
    assert TOKEN.encode() not in raw and TOKEN[:-1].encode() not in raw
    sent = (authorization or "").partition(" ")[2] or authorization
    if sent and sent != "Bearer":
        assert sent.encode() not in raw  # what the client sent is not reflected


# ----------------------------------------------------------------------------- body size


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-token"])
def test_body_over_1_mib_is_413(service, chunked, token):
    url, _ = service
    pad = "x" * MAX_BODY
    body = json.dumps({"model": "good-cgan", "per_class": 1, "pad": pad}).encode()  # just over 1 MiB
    code, ctype, raw = call(url, "POST", "/v1/samples", body, token=token, chunked=chunked)
    assert code == 413 and ctype == "application/json", raw[:200]
    reply = error_body(raw)
    assert reply["error"] == "request too large" and str(MAX_BODY) in reply["detail"]


def test_body_under_1_mib_reaches_validation(service):
    url, _ = service
    body = json.dumps({"model": "good-cgan", "per_class": 1, "pad": "x" * (MAX_BODY - 100)}).encode()
    assert len(body) <= MAX_BODY
    for chunked in (False, True):
        code, _, raw = call(url, "POST", "/v1/samples", body, chunked=chunked)
        assert code == 422 and "pad" in json.dumps(error_body(raw)["detail"])  # extra field, not size


# ----------------------------------------------------------------------------- random JSON

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, -1, 2**63, 2**63 - 1, 10**30, 4097, 1e300, "1", "", "0=1"])
    | st.floats()  # NaN and +-Infinity too (Python's json reads them)
    | st.text(max_size=20)
)
json_like = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
class_keys = st.sampled_from([*map(str, range(12)), "-1", " 3", "3.0", "٣", "ten", ""]) | st.text(max_size=4)
FIELDS = {
    "model": st.sampled_from(["good-cgan", "good-cgan:v1", "good-cgan:v2", "nope", "../good-cgan", "a b"]),
    "per_class": st.integers(-3, 40) | st.sampled_from([500, 5000, 10**6]),
    "counts": st.dictionaries(class_keys, st.integers(-3, 40) | json_leaf, max_size=4),
    "seed": st.integers(-5, 2**64),
    "temperature": st.floats(-1, 6),
    "format": st.sampled_from(["json", "npz", "png", "gif"]),
    "out": st.sampled_from(
        ["", "..", "../x", "/tmp/x", "datasets/../../x", "s3://b/k", "file:///etc", "a\x00b"]
    )
    | st.text(max_size=40),
    "shard_rows": st.integers(-3, 200_000),
    "priority": st.integers(-1100, 1100),
    "filter": st.sampled_from(["label", "LABEL", ""]),
}


SAMPLE_FIELDS = ("model", "per_class", "counts", "seed", "temperature", "format")
JOB_FIELDS = (
    "model",
    "per_class",
    "counts",
    "seed",
    "temperature",
    "out",
    "shard_rows",
    "priority",
    "filter",
)


@st.composite
def bodies(draw, fields: tuple[str, ...]) -> object:
    """A valid request with fields replaced, dropped or added; or random JSON of any shape."""
    if draw(st.integers(0, 7)) == 7:  # (hypothesis leans to 0: the common cases sit there)
        return draw(json_like)
    body = {"model": "good-cgan", "per_class": 1} if draw(st.integers(0, 3)) < 3 else {}
    for key in draw(st.lists(st.sampled_from([*fields, "junk"]), unique=True, max_size=3)):
        if key == "junk":
            body[draw(st.text(max_size=8))] = draw(json_like)
        else:
            body[key] = draw(FIELDS[key] if draw(st.integers(0, 4)) < 4 else json_like)
    if "counts" in body and draw(st.booleans()):
        body.pop("per_class", None)
    return body


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=bodies(SAMPLE_FIELDS), job=bodies(JOB_FIELDS))
@example(samples={"model": "nope", "per_class": 1}, job={"model": "good-cgan:v2", "per_class": 1})
@example(samples={"model": "good-cgan", "per_class": 5000}, job={"model": "good-cgan", "per_class": 10**6})
@example(
    samples={"model": "good-cgan", "counts": {"3": 10**30}}, job={"model": "good-cgan", "per_class": -(2**70)}
)
@example(
    samples={"model": "good-cgan", "per_class": 1, "temperature": math.nan}, job={"model": "x", "seed": 2**64}
)
@example(
    samples={"model": "good-cgan", "counts": {"٣": 1}},
    job={"model": "good-cgan", "per_class": 1, "out": "../x"},
)
@example(samples=[1, {"model": None}], job="good-cgan")
def test_random_json_bodies_never_5xx(service, samples, job):
    url, home = service
    for path, body in (("/v1/samples", samples), ("/v1/jobs", job)):
        code, ctype, raw = call(url, "POST", path, json.dumps(body).encode())
        assert code < 500, (path, body, code, raw[:300])
        if code >= 400:
            assert ctype == "application/json", (path, body, code)
            error_body(raw)
        elif path == "/v1/jobs":
            reply = json.loads(raw)
            assert reply["status"] == "queued" and Path(reply["output"]).is_relative_to(home.resolve())
            call(url, "DELETE", f"/v1/jobs/{reply['id']}")  # 409 when it already finished: fine
        else:
            assert code == 200 and ctype in ("application/json", "image/png", "application/octet-stream")


def test_over_long_output_name_is_400(service):
    url, _ = service
    body = json.dumps({"model": "good-cgan", "per_class": 1, "out": "a" * 300}).encode()
    code, _, raw = call(url, "POST", "/v1/jobs", body)
    assert code == 400, raw


# ----------------------------------------------------------------------------- logs (runs last)


def test_token_never_reaches_the_logs(service, ray_local):
    """After every request above (right and wrong tokens), no Ray/Serve log file holds the token."""
    url, _ = service
    assert call(url, "GET", "/v1/models")[0] == 200
    assert call(url, "GET", "/v1/models", token="wrong-" + TOKEN[4:])[0] == 401
    logs = Path(ray_local._private.worker._global_node.get_logs_dir_path())
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert any("serve" in p.parts for p in files)  # the Serve logs are there to be searched
    leaked = [str(p) for p in files if TOKEN[4:].encode() in p.read_bytes()]
    assert leaked == []
