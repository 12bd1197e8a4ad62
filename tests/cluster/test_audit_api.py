"""Audit over HTTP: ``POST /v1/score``, ``POST /v1/denoise`` and audit jobs through the queue.

Fast tests check the image decoding, the scoring bodies and the audit request checks in process; the
slow ones run the real service (Ray, Serve, the queue owner, SQLite) over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from cluster.api import NPZ_MEDIA_TYPE, _NpzUpload
from cluster.client import Client
from cluster.dispatcher import NAMESPACE, QUEUE_ACTOR, _validate_audit_request
from cluster.generator import MAX_NPZ_UNPACKED, Sampler, decode_images
from cluster.serve_app import api  # the app with its routes (Ingress adds them)
from jobs.audit import load_version_reference, save_version_reference, version_reference
from jobs.audit import main as audit_main
from jobs.auditor.spec import AuditSpec
from jobs.data.spec import load_dataset
from jobs.store.location import resolve_home
from jobs.store.png import encode_pngs
from jobs.store.registry import Registry
from models.audit import AuditConfig, OutlierReference, score
from models.sampling import denormalize_uint8, normalize_uint8
from tests.cluster.test_service import wait_job, wait_shards
from tests.conftest import running_service

CLASSES = [str(i) for i in range(10)]
SHAPE = (1, 8, 8)


def digits_uint8(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` digits test images as uint8 (N, 8, 8, 1) and their labels."""
    ds = load_dataset("digits", split="test")
    return denormalize_uint8(ds.images[:n]), ds.labels[:n].numpy()


def png_items(images: np.ndarray, labels: np.ndarray) -> list[dict]:
    pngs = encode_pngs(images)
    return [{"png": base64.b64encode(p).decode(), "label": int(y)} for p, y in zip(pngs, labels, strict=True)]


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode(request: dict, max_images: int = 100) -> tuple[np.ndarray, np.ndarray]:
    return decode_images(request, CLASSES, SHAPE, max_images, "m:v1")


# ----------------------------------------------------------------------------- decoding, in process


def test_pngs_and_npz_decode_to_the_same_images_and_labels():
    images, labels = digits_uint8()
    got_png = decode({"images": png_items(images, labels)})
    got_npz = decode({"npz": base64.b64encode(npz_bytes(images=images, labels=labels)).decode()})
    got_raw = decode({"npz": npz_bytes(images=images[..., 0], label_names=np.array(CLASSES)[labels])})
    for got in (got_png, got_npz, got_raw):
        np.testing.assert_array_equal(got[0], images)
        np.testing.assert_array_equal(got[1], labels)
    by_name = [
        {**item, "label": CLASSES[y]} for item, y in zip(png_items(images, labels), labels, strict=True)
    ]
    np.testing.assert_array_equal(decode({"images": by_name})[1], labels)


RGB = base64.b64encode(encode_pngs(np.zeros((1, 8, 8, 3), np.uint8))[0]).decode()
BIG = base64.b64encode(encode_pngs(np.zeros((1, 28, 28, 1), np.uint8))[0]).decode()
GOOD = base64.b64encode(encode_pngs(np.zeros((1, 8, 8, 1), np.uint8))[0]).decode()
CORRUPT = base64.b64encode(base64.b64decode(GOOD)[:20] + b"garbage" * 4).decode()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"images": []}, "no images; valid: 1..100 images"),
        (
            {"images": [{"png": BIG, "label": 1}]},
            "image 0 is 28x28 with 1 channel.*valid: 8x8 with 1 channel",
        ),
        ({"images": [{"png": RGB, "label": 1}]}, "image 0 is 8x8 with 3 channel.*valid: 8x8 with 1 channel"),
        ({"images": [{"png": GOOD, "label": 10}]}, r"image 0: unknown class 10; valid: 0\.\.9"),
        ({"images": [{"png": GOOD, "label": "ten"}]}, "image 0: unknown class 'ten'"),
        ({"images": [{"png": GOOD}]}, "image 0 has no label"),
        ({"images": [{"png": GOOD, "label": 1, "label_name": "2"}]}, "label 1 and label_name '2' differ"),
        (
            {"images": [{"png": GOOD, "label": 1}, {"png": CORRUPT, "label": 1}]},
            "image 1: not a readable PNG",
        ),
        ({"images": [{"png": "%%%", "label": 1}]}, "image 0: png is not valid base64"),
        ({"images": [{"png": GOOD, "label": 1}] * 101}, "101 images in one request; valid: 1..100"),
        ({"npz": "bm90IGEgemlw"}, "npz is not a readable .npz file"),
        ({"npz": npz_bytes(pixels=np.zeros((2, 8, 8), np.uint8))}, r"npz holds \['pixels'\]; valid: images"),
        ({"npz": npz_bytes(images=np.zeros((2, 8, 8)), labels=np.zeros(2, int))}, "npz images are float64"),
        ({"npz": npz_bytes(images=np.zeros((2, 8, 8), np.uint8), labels=np.zeros(3, int))}, "one label each"),
        ({"npz": npz_bytes(images=np.zeros((0, 8, 8), np.uint8), labels=np.zeros(0, int))}, "no images"),
        ({"images": [], "npz": "x"}, "both images and npz were sent; valid: one of them"),
    ],
)
def test_bad_images_are_named(request_, message):
    with pytest.raises(ValueError, match=message):
        decode(request_)


def test_an_npz_that_would_inflate_past_the_cap_is_refused_before_loading():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", b"\0" * (MAX_NPZ_UNPACKED + 1))
    with pytest.raises(ValueError, match=f"unpacks to {MAX_NPZ_UNPACKED + 1} bytes; valid: at most"):
        decode({"npz": buf.getvalue()})


# ----------------------------------------------------------------------------- scoring bodies, in process


@pytest.fixture(scope="module")
def cvae_home(model_home, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("audit_api_home")
    shutil.copytree(model_home / "models", home / "models")
    return home


def _spec(home: Path, samples: int = 2) -> AuditSpec:
    spec, _ = _validate_audit_request(
        {"kind": "audit", "model": "tiny-cvae", "dataset": "digits", "samples": samples},
        resolve_home(home),
        "j-x",
    )
    return spec


def test_score_body_matches_models_audit_and_uses_the_versions_reference(cvae_home):
    images, labels = digits_uint8(5)
    sampler = Sampler(str(cvae_home), device="cpu")
    request = {"model": "tiny-cvae:v1", "images": png_items(images, labels), "samples": 2, "seed": 3}
    body = json.loads(sampler.score_body(request))
    config = AuditConfig(samples=2, seed=3)
    want = score(sampler.model("tiny-cvae:v1"), normalize_uint8(images), torch.from_numpy(labels), config)
    assert (
        body["model"] == "tiny-cvae:v1" and body["count"] == 5 and body["samples"] == 2 and body["seed"] == 3
    )
    assert body["reference"] is None and all(r["outlier_percentile"] is None for r in body["scores"])
    np.testing.assert_allclose([r["nll"] for r in body["scores"]], want.nll.numpy())
    np.testing.assert_allclose([r["p"] for r in body["scores"]], want.posterior.numpy())
    assert [r["suggested_label"] for r in body["scores"]] == want.suggested.tolist()
    assert [r["label"] for r in body["scores"]] == labels.tolist()
    # an audit of the training data leaves a reference beside the version: percentiles from then on
    mv = Registry(cvae_home).resolve("tiny-cvae:v1")
    spec = _spec(cvae_home)
    reference = OutlierReference.fit(want.nll, torch.from_numpy(labels), 10, config, code=want.code)
    assert save_version_reference(mv, spec, reference)  # K=2, seed 0: another config than this request's
    assert version_reference(mv, spec.config).name == "audit_reference_k2_seed0.json"
    assert json.loads(sampler.score_body(request))["reference"] is None
    body = json.loads(sampler.score_body({**request, "seed": 0}))
    assert body["reference"] == {"data": "digits", "per_class": list(reference.counts)}
    got = {k: torch.tensor([r[k] for r in body["scores"]]) for k in ("nll", "code_nll", "outlier_score")}
    pct = reference.percentile(got["nll"], torch.from_numpy(labels))
    code = reference.code_percentile(got["code_nll"], torch.from_numpy(labels))
    assert [r["outlier_percentile"] for r in body["scores"]] == pytest.approx(pct.tolist())
    assert [r["code_percentile"] for r in body["scores"]] == pytest.approx(code.tolist())
    assert got["outlier_score"].tolist() == pytest.approx(torch.maximum(pct, code).tolist())
    version_reference(mv, spec.config).delete()
    assert load_version_reference(mv, spec.config) is None


def test_denoise_body_is_the_reconstruction_in_the_samples_formats(cvae_home):
    from models.audit import reconstruct

    images, labels = digits_uint8(4)
    sampler = Sampler(str(cvae_home), device="cpu")
    request = {"model": "tiny-cvae:v1", "npz": npz_bytes(images=images, labels=labels), "format": "npz"}
    with np.load(io.BytesIO(sampler.denoise_body(request))) as f:
        got, got_labels = f["images"], f["labels"]
    want = reconstruct(sampler.model("tiny-cvae:v1"), normalize_uint8(images), torch.from_numpy(labels))
    np.testing.assert_array_equal(got, denormalize_uint8(want))
    np.testing.assert_array_equal(got_labels, labels)
    as_json = json.loads(sampler.denoise_body({**request, "format": "json"}))
    assert as_json["count"] == 4 and [s["label"] for s in as_json["samples"]] == labels.tolist()


def test_a_cgan_is_refused_by_the_sampler(cvae_home):
    images, labels = digits_uint8(1)
    with pytest.raises(ValueError, match="audit needs a cvae model"):
        Sampler(str(cvae_home), device="cpu").score_body(
            {"model": "tiny-cgan:v1", "images": png_items(images, labels)}
        )


# ----------------------------------------------------------------------------- audit requests, in process


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"model": "tiny-cgan", "dataset": "digits"}, "audit needs a cvae model; tiny-cgan:v1 is a cgan"),
        ({"model": "tiny-cvae"}, "an audit needs dataset"),
        (
            {"model": "tiny-cvae", "dataset": "digits", "per_class": 3},
            "per_class are not audit fields; valid:",
        ),
        (
            {"model": "tiny-cvae", "dataset": "mnist:/etc"},
            "dataset 'mnist:/etc' reads '/etc', outside the storage",
        ),
        (
            {"model": "tiny-cvae", "dataset": "digits", "reference": "cifar10:/"},
            "reference 'cifar10:/' reads",
        ),
        ({"model": "tiny-cvae", "dataset": "shapes:8"}, "dataset 'shapes:8' has 3 channel"),
        ({"model": "tiny-cvae", "dataset": "digits", "samples": 0}, "samples 0 is out of range"),
        ({"model": "tiny-cvae", "dataset": "digits", "priority": 5000}, "priority 5000 is out of range"),
    ],
)
def test_bad_audit_requests_are_named_and_write_nothing(cvae_home, request_, message):
    before = sorted(p.relative_to(cvae_home) for p in cvae_home.rglob("*"))
    with pytest.raises(ValueError, match=message):
        _validate_audit_request({"kind": "audit", **request_}, resolve_home(cvae_home), "j-bad")
    assert sorted(p.relative_to(cvae_home) for p in cvae_home.rglob("*")) == before


def test_a_dataset_under_the_storage_root_may_be_audited(cvae_home):
    spec = _spec(cvae_home)
    assert spec.model == "tiny-cvae:v1" and spec.num_images == 898 and spec.output.endswith("audits/j-x")
    with pytest.raises(ValueError, match="dataset 'parquet:.*' cannot be read: no Parquet data at"):
        _validate_audit_request(
            {"kind": "audit", "model": "tiny-cvae", "dataset": f"parquet:{cvae_home}/datasets/none"},
            resolve_home(cvae_home),
            "j-y",
        )


# ----------------------------------------------------------------------------- the npz upload and OpenAPI


def test_an_npz_upload_becomes_the_json_request():
    seen = {}

    async def app(scope, receive, send):
        seen["scope"], seen["body"] = scope, (await receive())["body"]

    async def receive():
        return {"type": "http.request", "body": b"NPZ", "more_body": False}

    scope = {
        "type": "http",
        "path": "/v1/score",
        "query_string": b"model=m&samples=4",
        "headers": [(b"content-type", NPZ_MEDIA_TYPE.encode()), (b"content-length", b"3")],
    }
    asyncio.run(_NpzUpload(app)(scope, receive, None))
    assert json.loads(seen["body"]) == {
        "model": "m",
        "samples": "4",
        "npz": base64.b64encode(b"NPZ").decode(),
    }
    headers = dict(seen["scope"]["headers"])
    assert headers[b"content-type"] == b"application/json" and int(headers[b"content-length"]) == len(
        seen["body"]
    )
    assert seen["scope"]["query_string"] == b""


def test_openapi_documents_both_routes_and_the_audit_job():
    schema = api.openapi()
    for path in ("/v1/score", "/v1/denoise"):
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", NPZ_MEDIA_TYPE}
        assert {"400", "401", "404", "413", "503"} <= set(schema["paths"][path]["post"]["responses"])
    assert "ScoreResponse" in schema["components"]["schemas"]
    assert "audit" in schema["components"]["schemas"]["JobRequest"]["properties"]["kind"]["enum"]
    assert "/v1/jobs/{job_id}/audit" in schema["paths"]


# ----------------------------------------------------------------------------- over HTTP (slow)


@pytest.fixture(scope="module")
def service(ray_local, cvae_home):
    with running_service(cvae_home, max_in_flight=2) as url:
        yield httpx.Client(base_url=url, timeout=120), cvae_home


def _files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if "state" not in p.parts)


@pytest.mark.slow
def test_score_and_denoise_over_http_in_every_input_form(service):
    client, _ = service
    images, labels = digits_uint8(8)
    items = png_items(images, labels)
    by_png = client.post("/v1/score", json={"model": "tiny-cvae", "images": items, "samples": 2})
    assert by_png.status_code == 200, by_png.text
    assert by_png.headers["X-Genaug-Model"] == "tiny-cvae:v1"
    body = by_png.json()
    assert body["count"] == 8 and len(body["scores"][0]["p"]) == 10
    assert all(abs(sum(r["p"]) - 1) < 1e-9 for r in body["scores"])
    npz = npz_bytes(images=images, labels=labels)
    by_b64 = client.post(
        "/v1/score", json={"model": "tiny-cvae", "npz": base64.b64encode(npz).decode(), "samples": 2}
    )
    upload = client.post(
        "/v1/score",
        params={"model": "tiny-cvae", "samples": "2"},
        content=npz,
        headers={"Content-Type": NPZ_MEDIA_TYPE},
    )
    assert by_b64.json() == body == upload.json()  # same images, same K and seed: same scores
    grid = client.post("/v1/denoise", json={"model": "tiny-cvae", "images": items, "format": "png"})
    assert grid.status_code == 200 and grid.content[:8] == b"\x89PNG\r\n\x1a\n"
    arrays = client.post(
        "/v1/denoise",
        params={"model": "tiny-cvae", "format": "npz"},
        content=npz,
        headers={"Content-Type": NPZ_MEDIA_TYPE},
    )
    with np.load(io.BytesIO(arrays.content)) as f:
        assert f["images"].shape == images.shape and f["labels"].tolist() == labels.tolist()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "tiny-cgan", "images": "PNGS"}, 400, "audit needs a cvae model; tiny-cgan:v1 is a cgan"),
        ({"model": "tiny-cvae", "images": []}, 400, "no images; valid: 1..4096 images"),
        (
            {"model": "tiny-cvae", "images": [{"png": BIG, "label": 1}]},
            400,
            "image 0 is 28x28 with 1 channel",
        ),
        ({"model": "tiny-cvae", "images": [{"png": RGB, "label": 1}]}, 400, "image 0 is 8x8 with 3 channel"),
        ({"model": "tiny-cvae", "images": [{"png": GOOD, "label": 12}]}, 400, "image 0: unknown class 12"),
        (
            {"model": "tiny-cvae", "images": [{"png": CORRUPT, "label": 1}]},
            400,
            "image 0: not a readable PNG",
        ),
        ({"model": "nope", "images": [{"png": GOOD, "label": 1}]}, 404, "nope"),
        ({"model": "tiny-cvae", "images": [{"png": GOOD, "label": 1}], "samples": 0}, 422, "samples"),
    ],
)
@pytest.mark.parametrize("route", ["/v1/score", "/v1/denoise"])
def test_bad_input_is_a_4xx_naming_the_problem_and_writes_nothing(service, route, body, status, needle):
    client, home = service
    if body["images"] == "PNGS":
        images, labels = digits_uint8(2)
        body = {**body, "images": png_items(images, labels)}
    if route == "/v1/denoise":
        body = {k: v for k, v in body.items() if k != "samples"}
        if status == 422:
            body, needle = {**body, "format": "gif"}, "format"
    before = _files(home)
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"} and needle.split()[0] in json.dumps(r.json())
    if status == 400:
        assert needle in r.json()["detail"]
    assert _files(home) == before


@pytest.mark.slow
def test_an_audit_job_through_the_queue_then_score_has_percentiles(service):
    client, home = service
    submitted = client.post(
        "/v1/jobs",
        json={
            "kind": "audit",
            "model": "tiny-cvae",
            "dataset": "digits",
            "samples": 2,
            "shard_rows": 300,
            "top": 5,
        },
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert job["total_rows"] == 898 and job["total_shards"] == 3 and job["spec"]["kind"] == "audit"
    assert client.get(f"/v1/jobs/{job['id']}/audit").status_code in (409, 200)
    job = wait_job(Client(str(client.base_url), token=""), job["id"], timeout=240)
    assert job["status"] == "succeeded", job
    out = Path(job["output"])
    df = pd.read_parquet(out / "data")
    assert sorted(df["index"]) == list(range(898)) and (out / "_SUCCESS").is_file()
    assert {"outliers.png", "label_errors.png", "audit.md", "reference.json"} <= {
        p.name for p in out.iterdir()
    }
    view = client.get(f"/v1/jobs/{job['id']}/audit", params={"top": 4}).json()
    assert "outliers" in view, view
    assert len(view["outliers"]) == 4 and view["summary"]["images"] == 898
    top = df.sort_values(["label_error", "margin"], ascending=False, kind="stable").head(4)
    assert [r["index"] for r in view["label_errors"]] == top["index"].tolist()
    grid = client.get(f"/v1/jobs/{job['id']}/audit/outliers.png")
    assert grid.status_code == 200 and grid.content == (out / "outliers.png").read_bytes()
    assert client.get(f"/v1/jobs/{job['id']}/audit/secrets.txt").status_code == 404
    # the audit used the model's training data as reference: kept beside the version for /v1/score
    reference = json.loads((out / "reference.json").read_text())
    mv_dir = home / "models" / "tiny-cvae" / "v1"
    assert json.loads((mv_dir / "audit_reference_k2_seed0.json").read_text()) == reference
    images, labels = digits_uint8(3)
    scored = client.post(
        "/v1/score", json={"model": "tiny-cvae", "images": png_items(images, labels), "samples": 2}
    )
    assert scored.json()["reference"]["per_class"] == reference["counts"]
    assert all(0 <= r["outlier_percentile"] <= 100 for r in scored.json()["scores"])
    # generation jobs are unaffected; a generation job is not an audit
    gen = client.post("/v1/jobs", json={"model": "tiny-cgan", "per_class": 1}).json()
    assert (
        client.get(f"/v1/jobs/{gen['id']}/audit")
        .json()["detail"]
        .endswith("is not an audit job; valid: the id of one")
    )
    (mv_dir / "audit_reference_k2_seed0.json").unlink()  # other tests score without a reference


@pytest.mark.slow
def test_a_cgan_audit_job_is_refused_with_nothing_written(service):
    client, home = service
    before = _files(home)
    r = client.post("/v1/jobs", json={"kind": "audit", "model": "tiny-cgan", "dataset": "digits"})
    assert r.status_code == 400 and "audit needs a cvae model" in r.json()["detail"]
    assert _files(home) == before


@pytest.mark.slow
def test_an_audit_job_survives_killed_replica_and_queue_owner_with_the_clis_exact_shards(service):
    """SIGKILL the generator replica, then the queue owner, mid-audit: the job resumes from its recorded
    shards and its shards are byte for byte those `genaug audit` writes for the same request."""
    import os
    import signal

    import ray

    client, home = service
    api_client = Client(str(client.base_url), token="")
    request = {"model": "tiny-cvae", "dataset": "digits", "samples": 128, "shard_rows": 50, "seed": 5}
    job = client.post("/v1/jobs", json={"kind": "audit", **request}).json()
    wait_shards(api_client, job["id"], 2, timeout=180)
    os.kill(client.get("/v1/stats").json()["generator"]["pid"], signal.SIGKILL)
    wait_shards(api_client, job["id"], 6, timeout=180)
    ray.kill(ray.get_actor(QUEUE_ACTOR, namespace=NAMESPACE), no_restart=False)
    done = wait_job(api_client, job["id"], timeout=300)
    assert done["status"] == "succeeded" and done["attempts"] >= 2, done
    out = Path(done["output"])
    assert sorted(pd.read_parquet(out / "data")["index"]) == list(range(898))
    assert not [p for p in out.rglob(".tmp-*")]
    argv = ["--home", str(home), "--model", "tiny-cvae", "--dataset", "digits", "--samples", "128"]
    assert audit_main([*argv, "--shard-rows", "50", "--seed", "5", "--out", "audits/cli-same"]) == 0
    cli = json.loads((home / "audits" / "cli-same" / "manifest.json").read_text())
    queued = json.loads((out / "manifest.json").read_text())
    assert [s["sha256"] for s in queued["shards"]] == [s["sha256"] for s in cli["shards"]]
    assert (out / "reference.json").read_text() == (
        home / "audits" / "cli-same" / "reference.json"
    ).read_text()
    (home / "models" / "tiny-cvae" / "v1" / "audit_reference_k128_seed5.json").unlink()
