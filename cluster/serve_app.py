"""The genaug Serve application: a FastAPI ingress in front of the generator deployment.

    genaug serve --host 127.0.0.1 --port 8000          # embedded: starts Ray, Serve and the queue
    serve run cluster/serve_config.yaml                 # Ray's own tools, same app
    serve deploy cluster/serve_config.yaml -a http://HEAD:8265

``build_app(args)`` assembles it; the ingress gets (or creates) the queue owner actor, so a plain
``serve deploy`` brings up the whole service. API reference: README.md and ``/docs``.
"""

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import Header, Query, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster import metrics
from cluster.api import (
    GONE,
    ApiError,
    DenoiseRequest,
    ImagesRequest,
    JobRequest,
    SamplesRequest,
    ScoreRequest,
    ScoreResponse,
    api,
    classify,
    npz_upload_doc,
)
from cluster.dispatcher import get_queue
from cluster.formats import MEDIA_TYPES
from cluster.generator import INLINE_SAMPLES, Generator, ModelUnavailable, Sampler, SampleRequest
from jobs.auditor.report import label_error_order, outlier_order
from jobs.auditor.spec import LABEL_ERROR_GRID, OUTLIER_GRID, REPORT_FILE, check_cvae_version
from jobs.generate import parse_counts
from jobs.store import shards
from jobs.store.location import location, output_roots, resolve_home
from jobs.store.registry import SAMPLES_PNG, Registry

DEFAULT_INLINE_CAP = 4096
# The web console: plain files served at / (no build step); the token stays in the browser tab.
STATIC_DIR = Path(__file__).with_name("static")
CONSOLE_FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"}
CONSOLE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SAMPLE_ATTEMPTS = 3  # a sample call whose replica died is re-sent (same seed, same pixels)


def _summary(mv) -> dict[str, Any]:
    try:
        info = mv.info
    except ModelUnavailable as e:  # a damaged version is listed as such; the others are unaffected
        return {"ref": mv.ref, "version": mv.version, "unavailable": str(e)}
    keys = (
        "type",
        "dataset",
        "classes",
        "image_shape",
        "epochs",
        "final_losses",
        "images_per_s",
        "train_time_s",
        "workers",
        "created_at",
        "checkpoint_sha256",
    )
    out = {"ref": mv.ref, "version": mv.version, **{k: info.get(k) for k in keys}}
    eval_path = mv.location / "eval.json"
    out["metrics"] = eval_path.read_json() if eval_path.is_file() else None
    return out


def _bearer_digest(authorization: str | None) -> str:
    """sha256 of the bearer token in an ``Authorization`` header ("" without one)."""
    scheme, _, token = (authorization or "").partition(" ")
    return hashlib.sha256(token.strip().encode()).hexdigest() if scheme.lower() == "bearer" else ""


def _job_view(job: dict, request: Request) -> dict:
    keep = (
        "id",
        "status",
        "priority",
        "total_rows",
        "total_shards",
        "rows_done",
        "shards_done",
        "progress",
        "attempts",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "elapsed_s",
        "rows_per_s",
        "output",
        "result",
        "spec",
    )
    view = {k: job.get(k) for k in keep}
    view["status_url"] = str(request.url_for("get_job", job_id=job["id"]))
    if job.get("existing"):
        view["existing"] = True
    return view


AUDIT_COLUMNS = ("index", "label", "label_name", "nll", "outlier_percentile", "code_percentile")
AUDIT_COLUMNS += ("outlier_score", "suggested_label", "suggested_name", "label_error", "margin")
AUDIT_FILES = {OUTLIER_GRID: "image/png", LABEL_ERROR_GRID: "image/png", REPORT_FILE: "text/markdown"}


# Module-level helpers of the Ingress must be defined above it: Serve pickles the class when it is decorated.
def _audit_view(output: str, top: int) -> dict[str, Any]:
    """An audit's manifest summary and its ``top`` rows by outlier score and by label-error score."""
    import pyarrow.parquet as pq

    out = location(output)
    manifest = (out / "manifest.json").read_json()
    data = out / shards.DATA_DIR
    rows = pq.read_table(data.path, filesystem=data.fs, columns=list(AUDIT_COLUMNS)).to_pandas()
    by_outlier, by_error = outlier_order(rows), label_error_order(rows)

    def records(df) -> list[dict[str, Any]]:
        return json.loads(df.head(top).to_json(orient="records"))  # NaN -> null

    return {
        "request": manifest["request"],
        "summary": manifest["audit"],
        "classes": manifest["classes"],
        "outliers": records(by_outlier),
        "label_errors": records(by_error),
    }


def _console_file(name: str) -> Response:
    if name not in CONSOLE_FILES:
        raise ApiError(404, "not found", f"no console file {name!r}")
    headers = {
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONSOLE_CSP,
    }
    body = (STATIC_DIR / name).read_bytes()
    return Response(body, media_type=f"{CONSOLE_FILES[name]}; charset=utf-8", headers=headers)


@api.get("/", include_in_schema=False)
async def console_index() -> Response:
    """The web console (models, try it, jobs); it asks for the API token when the API answers 401."""
    return _console_file("index.html")


@api.get("/console/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    return _console_file(name)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    """HTTP front door: auth, validation, formats; generation goes to the ``Generator`` deployment."""

    def __init__(
        self,
        generator: DeploymentHandle,
        home: str,
        token_sha256: str | None = None,
        inline_cap: int = DEFAULT_INLINE_CAP,
        queue_options: dict | None = None,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.0,
        local_cache_size: int = 0,
        output_roots: tuple[str, ...] = (),
        output_token_sha256: str | None = None,
    ):

        self.generator = generator
        self.home = resolve_home(home)
        self.registry = Registry(self.home)
        self.token_sha256 = token_sha256
        # GENAUG_OUTPUT_ROOTS: where `out` may also go, only for requests carrying the output token
        self.output_roots, self.output_token_sha256 = tuple(output_roots), output_token_sha256
        self.inline_cap = inline_cap
        self.queue = get_queue(self.home, **(queue_options or {}))
        self._generate.set_max_batch_size(max_batch_size)  # 1: one generator call per HTTP request
        self._generate.set_batch_wait_timeout_s(batch_wait_timeout_s)
        # A lone small request is answered here: a deployment hop costs 1.7-4.8 ms p50 on 2 cores
        # (benchmarks/serve_hop.py), more than the forward pass. Concurrent ones go to the generator, batched.
        self.local = Sampler(self.home.uri, local_cache_size, "cpu") if local_cache_size > 0 else None
        if self.local is not None:
            import torch

            torch.set_num_threads(1)  # this replica reserves no CPU; pixels do not depend on threads
        self._inline = 0  # sample requests between validation and answer in this replica
        self.inline_counts = {"ingress": 0, "generator": 0}

    # -------------------------------------------------------------- auth and helpers

    def check_token(self, authorization: str | None) -> None:
        if not self.token_sha256 or self._output_token(authorization):
            return
        if not hmac.compare_digest(_bearer_digest(authorization), self.token_sha256):
            raise ApiError(401, "unauthorized", "send the API token as 'Authorization: Bearer <token>'")

    def _output_token(self, authorization: str | None) -> bool:
        """The request carries the output token (it may also write under the output roots)."""
        want = self.output_token_sha256
        return bool(want) and hmac.compare_digest(_bearer_digest(authorization), want)

    async def _call(self, ref) -> Any:
        try:
            return await ref
        except Exception as e:
            raise classify(e) from None

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.0)
    async def _generate(self, requests: list[dict]) -> list[bytes | Exception]:
        """Inline sample requests that reach this replica together go to the generator as one call."""
        return await self.generator.sample_encoded.remote(requests)

    # -------------------------------------------------------------- health

    @api.get("/healthz", tags=["health"])
    async def healthz(self) -> dict:
        """The process is alive."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
    async def readyz(self) -> JSONResponse:
        """Registry readable, queue reachable, generator up."""
        checks: dict[str, Any] = {}
        try:
            checks["registry"] = {"ok": True, "models": len(self.registry.names())}
        except Exception as e:
            checks["registry"] = {"ok": False, "error": str(e)}
        for name, call in (
            ("queue", lambda: self.queue.counts.remote()),
            ("generator", lambda: self.generator.stats.remote()),
        ):
            try:
                await asyncio.wait_for(call(), timeout=5)
                checks[name] = {"ok": True}
            except Exception as e:
                checks[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503
        )

    # -------------------------------------------------------------- models

    @api.get("/v1/models", tags=["models"])
    async def list_models(self, authorization: str | None = Header(None)) -> dict:
        """Every model with its versions and the latest version's facts."""
        self.check_token(authorization)
        out = []
        for name in self.registry.names():
            versions = self.registry.versions(name)
            latest = self.registry.resolve(f"{name}:v{versions[-1]}")
            out.append({"name": name, "versions": [f"v{v}" for v in versions], "latest": _summary(latest)})
        return {"models": out}

    @api.get("/v1/models/{name}", tags=["models"])
    async def get_model(self, name: str, authorization: str | None = Header(None)) -> dict:
        """All versions of one model: type, classes, image shape, training facts, metrics."""
        self.check_token(authorization)
        try:
            self.registry.resolve(name)
        except ValueError as e:
            raise classify(e) from None
        versions = [_summary(self.registry.resolve(f"{name}:v{v}")) for v in self.registry.versions(name)]
        return {"name": name, "versions": versions}

    @api.get("/v1/models/{ref}/samples.png", tags=["models"])
    async def model_samples_png(self, ref: str, authorization: str | None = Header(None)) -> Response:
        """The grid drawn at training time (a row per class) of NAME or NAME:VERSION; 404 when it has none."""
        self.check_token(authorization)
        try:
            mv = self.registry.resolve(ref)
        except ValueError as e:
            raise classify(e) from None
        grid = mv.location / SAMPLES_PNG
        if not grid.is_file():
            raise ApiError(404, "not found", f"{mv.ref} has no {SAMPLES_PNG}; POST /v1/samples draws one")
        return Response(grid.read_bytes(), media_type="image/png", headers={"X-Genaug-Model": mv.ref})

    @api.get("/v1/stats", tags=["health"])
    async def stats(self, authorization: str | None = Header(None)) -> dict:
        """Who answered this ingress replica's sample requests; what one generator replica did (batch
        sizes, shards, loaded models); queue counts."""
        self.check_token(authorization)
        return {
            "ingress": {"inline_answered_by": dict(self.inline_counts)},
            "generator": await self._call(self.generator.stats.remote()),
            "queue": await self._call(self.queue.counts.remote()),
        }

    # -------------------------------------------------------------- samples

    @api.post(
        "/v1/samples",
        tags=["samples"],
        responses={
            200: {
                "description": "json: base64 PNGs with labels; npz: arrays; png: a grid",
                "content": {"application/json": {}, "application/octet-stream": {}, "image/png": {}},
            }
        },
    )
    async def samples(self, body: SamplesRequest, authorization: str | None = Header(None)) -> Response:
        """Samples inline: json (base64 PNGs), npz (uint8 images + labels) or png (a grid, row per class)."""
        self.check_token(authorization)
        started = time.perf_counter()
        response, model, images = await self._samples(body)
        metrics.sample_request(model, images, time.perf_counter() - started)
        return response

    async def _samples(self, body: SamplesRequest) -> tuple[Response, str, int]:
        """The answer to ``POST /v1/samples``, the resolved model and the number of images."""
        try:
            mv = self.registry.resolve(body.model)
            classes = mv.info["classes"]
            counts = parse_counts(body.per_class, body.counts, classes)
        except ValueError as e:
            raise classify(e) from None
        total = sum(counts)
        if total > self.inline_cap:
            raise ApiError(
                413,
                "too many samples for an inline request",
                f"{total} samples requested; the inline cap is {self.inline_cap}. "
                "Submit a job with POST /v1/jobs for larger requests.",
            )
        request = {
            "model": mv.ref,
            "counts": list(counts),
            "seed": body.seed,
            "temperature": body.temperature,
            "format": body.format,
            "filter": body.filter,
        }
        self._inline += 1
        try:
            result = await self._answer(request, total)
        finally:
            self._inline -= 1
        if isinstance(result, Exception):  # this request's own failure (e.g. its model cannot load)
            raise classify(result) from None
        headers = {"X-Genaug-Model": mv.ref}
        if body.format == "npz":
            headers["Content-Disposition"] = 'attachment; filename="samples.npz"'
        return Response(result, media_type=MEDIA_TYPES[body.format], headers=headers), mv.ref, int(total)

    async def _answer(self, request: dict, total: int) -> bytes | Exception:
        """The response body: made here when the request is alone and small, else by the generator."""
        if self.local is not None and not request["filter"] and total <= INLINE_SAMPLES:
            await asyncio.sleep(0)  # requests that arrived with this one count themselves in first
            if self._inline == 1:
                self.inline_counts["ingress"] += 1
                try:
                    return self.local.sample_many([SampleRequest.inline(request)])[0]
                except Exception as e:
                    raise classify(e) from None
        self.inline_counts["generator"] += 1
        return await self._resending(lambda: self._generate(request))

    async def _resending(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``await call()``, made again when its replica died mid-request (the answers are deterministic,
        so re-sending is safe); other errors are classified."""
        for attempt in range(1, SAMPLE_ATTEMPTS + 1):
            try:
                return await call()
            except GONE as e:
                if attempt == SAMPLE_ATTEMPTS:
                    raise classify(e) from None
                await asyncio.sleep(0.2 * attempt)
            except Exception as e:
                raise classify(e) from None
        raise AssertionError("unreachable")

    # -------------------------------------------------------------- audit: score and denoise

    @api.post(
        "/v1/score",
        tags=["audit"],
        responses={200: {"model": ScoreResponse, "description": "the scores of each image, in order"}},
        openapi_extra=npz_upload_doc(
            {"model": "a cVAE", "samples": "K (default 32)", "seed": "seed of the K draws (default 0)"}
        ),
    )
    async def score(self, body: ScoreRequest, authorization: str | None = Header(None)) -> Response:
        """A cVAE's audit scores of labelled images: nll, outlier percentile (when an audit job computed
        the version's reference), p(c | x), suggested label, label-error score. Nothing is written."""
        self.check_token(authorization)
        request = self._images_request(body)
        answer = await self._resending(lambda: self.generator.score.remote(request))
        return Response(answer, media_type="application/json", headers={"X-Genaug-Model": request["model"]})

    @api.post(
        "/v1/denoise",
        tags=["audit"],
        responses={
            200: {
                "description": "the reconstructions in the formats of /v1/samples: json (base64 PNGs with "
                "labels), npz (arrays) or png (a grid)",
                "content": {"application/json": {}, "application/octet-stream": {}, "image/png": {}},
            }
        },
        openapi_extra=npz_upload_doc({"model": "a cVAE", "format": "json, npz or png (default json)"}),
    )
    async def denoise(self, body: DenoiseRequest, authorization: str | None = Header(None)) -> Response:
        """A cVAE's reconstruction of labelled images (decoded at the posterior mean): denoising."""
        self.check_token(authorization)
        request = self._images_request(body)
        answer = await self._resending(lambda: self.generator.denoise.remote(request))
        headers = {"X-Genaug-Model": request["model"]}
        if body.format == "npz":
            headers["Content-Disposition"] = 'attachment; filename="denoised.npz"'
        return Response(answer, media_type=MEDIA_TYPES[body.format], headers=headers)

    def _images_request(self, body: ImagesRequest) -> dict[str, Any]:
        """What the generator needs for an image route: the resolved cVAE, the images as sent, the cap."""
        try:
            mv = check_cvae_version(self.registry.resolve(body.model))
        except ValueError as e:
            raise classify(e) from None
        return {**body.model_dump(exclude_none=True), "model": mv.ref, "max_images": self.inline_cap}

    # -------------------------------------------------------------- jobs

    @api.post(
        "/v1/jobs",
        status_code=202,
        tags=["jobs"],
        responses={200: {"description": "the job an earlier request with this Idempotency-Key made"}},
    )
    async def submit_job(
        self,
        body: JobRequest,
        request: Request,
        authorization: str | None = Header(None),
        idempotency_key: str | None = Header(None, max_length=200),
    ) -> JSONResponse:
        """Queue a generation job, or an audit (``kind: audit``); 202 with its id. ``Idempotency-Key`` makes
        retries return the same job."""
        self.check_token(authorization)
        audit = body.kind == "audit"  # an audit gets only what was sent: no generation defaults
        req = body.model_dump(exclude_none=True, exclude_unset=audit)
        if not audit:  # the request generation jobs have always taken
            del req["kind"]
        roots = self.output_roots if self._output_token(authorization) else ()
        job = await self._call(self.queue.submit.remote(req, idempotency_key, roots))
        return JSONResponse(_job_view(job, request), status_code=200 if job.get("existing") else 202)

    @api.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(
        self,
        request: Request,
        status: str | None = Query(None),
        limit: int = Query(100, ge=1, le=1000),
        authorization: str | None = Header(None),
    ) -> dict:
        """Jobs, newest first; ``status`` filters (queued, running, succeeded, failed, cancelled)."""
        self.check_token(authorization)
        jobs = await self._call(self.queue.list.remote(status, limit))
        return {"jobs": [_job_view(j, request) for j in jobs]}

    @api.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def get_job(self, job_id: str, request: Request, authorization: str | None = Header(None)) -> dict:
        """Status, progress, shards, output, error and timings of one job."""
        self.check_token(authorization)
        return _job_view(await self._call(self.queue.get.remote(job_id)), request)

    @api.get("/v1/jobs/{job_id}/manifest", tags=["jobs"])
    async def get_manifest(self, job_id: str, authorization: str | None = Header(None)) -> dict:
        """The finished dataset's manifest.json (409 until the job has succeeded)."""
        self.check_token(authorization)
        return (location(await self._finished_output(job_id, "manifest")) / "manifest.json").read_json()

    @api.get("/v1/jobs/{job_id}/card", tags=["jobs"])
    async def get_card(self, job_id: str, authorization: str | None = Header(None)) -> Response:
        """The finished dataset's card, README.md (409 until the job has succeeded)."""
        self.check_token(authorization)
        card = location(await self._finished_output(job_id, "card")) / "README.md"
        return Response(card.read_bytes(), media_type="text/markdown; charset=utf-8")

    async def _finished_output(self, job_id: str, what: str, kind: str | None = None) -> str:
        job = await self._call(self.queue.get.remote(job_id))
        if kind is not None and (job.get("spec") or {}).get("kind", "generate") != kind:
            raise ApiError(400, "bad request", f"job {job_id} is not an {kind} job; valid: the id of one")
        if job["status"] != "succeeded":
            raise ApiError(
                409, "conflict", f"job {job_id} is {job['status']}; the {what} exists once it succeeded"
            )
        return job["output"]

    @api.get("/v1/jobs/{job_id}/audit", tags=["audit"])
    async def get_audit(
        self,
        job_id: str,
        top: int = Query(20, ge=1, le=1000, description="rows per list"),
        authorization: str | None = Header(None),
    ) -> dict:
        """A finished audit's summary and its top rows: the most unusual images (outlier percentile) and
        the likeliest label errors (409 until the job has succeeded)."""
        self.check_token(authorization)
        output = await self._finished_output(job_id, "audit", kind="audit")
        return await asyncio.to_thread(_audit_view, output, top)

    @api.get(
        "/v1/jobs/{job_id}/audit/{name}",
        tags=["audit"],
        responses={200: {"content": {"image/png": {}, "text/markdown": {}}}},
    )
    async def get_audit_file(
        self,
        job_id: str,
        name: str,
        authorization: str | None = Header(None),
    ) -> Response:
        """A finished audit's grids (outliers.png, label_errors.png) or its report (audit.md)."""
        self.check_token(authorization)
        if name not in AUDIT_FILES:
            raise ApiError(404, "not found", f"no audit file {name!r}; valid: {', '.join(AUDIT_FILES)}")
        output = await self._finished_output(job_id, name, kind="audit")
        return Response((location(output) / name).read_bytes(), media_type=AUDIT_FILES[name])

    @api.delete("/v1/jobs/{job_id}", tags=["jobs"])
    async def cancel_job(
        self, job_id: str, request: Request, authorization: str | None = Header(None)
    ) -> dict:
        """Cancel a queued or running job (it stops at the next shard boundary)."""
        self.check_token(authorization)
        return _job_view(await self._call(self.queue.cancel.remote(job_id)), request)


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Assemble the app. ``args``: home, min_replicas, max_replicas, gpu_per_replica, cpus_per_replica,
    cache_size, max_batch_size, batch_wait_timeout_s, inline_cap, local_inline, max_running,
    max_in_flight, lease_s, max_total_rows. ``local_inline`` (default on when the generator runs on CPU):
    the ingress answers a lone request of up to ``INLINE_SAMPLES`` samples itself.
    The API token comes from ``GENAUG_API_TOKEN``
    (only its sha256 travels in the deployment's arguments). ``output_roots`` (default
    ``$GENAUG_OUTPUT_ROOTS``) are where a job's ``out`` may also go, for requests with ``output_token``
    (default ``$GENAUG_OUTPUT_TOKEN``; it passes the API token's checks too); without one, nobody may."""
    args = dict(args or {})
    home = resolve_home(args.get("home")).uri
    token = args.get("api_token") or os.environ.get("GENAUG_API_TOKEN")
    token_sha256 = hashlib.sha256(token.encode()).hexdigest() if token else None
    roots = args.get("output_roots")
    roots = output_roots(",".join(roots) if isinstance(roots, list | tuple) else roots)
    output_token = args.get("output_token") or os.environ.get("GENAUG_OUTPUT_TOKEN")
    gpu = float(args.get("gpu_per_replica", 0) or 0)
    local_inline = args.get("local_inline", True)
    if not isinstance(local_inline, bool):
        raise ValueError(f"local_inline {local_inline!r} is not valid; valid: true, false")
    max_batch_size = int(args.get("max_batch_size", 32))
    batch_wait_timeout_s = float(args.get("batch_wait_timeout_s", 0.0))
    generator = serve.deployment(
        Generator,
        name="Generator",
        ray_actor_options={"num_cpus": float(args.get("cpus_per_replica", 1)), "num_gpus": gpu},
        max_ongoing_requests=int(args.get("max_ongoing_requests", 64)),
        autoscaling_config={
            "min_replicas": int(args.get("min_replicas", 1)),
            "max_replicas": int(args.get("max_replicas", 2)),
            "target_ongoing_requests": 2,
            "upscale_delay_s": 5,
            "downscale_delay_s": 120,
        },
        health_check_period_s=5,
        graceful_shutdown_timeout_s=5,
    ).bind(home, int(args.get("cache_size", 4)), None, max_batch_size, batch_wait_timeout_s)
    queue_options = {
        k: args[k] for k in ("max_running", "max_in_flight", "lease_s", "max_total_rows") if k in args
    }
    return Ingress.bind(
        generator,
        home,
        token_sha256,
        int(args.get("inline_cap", DEFAULT_INLINE_CAP)),
        queue_options,
        max_batch_size,
        batch_wait_timeout_s,
        int(args.get("cache_size", 4)) if local_inline and gpu == 0 else 0,
        tuple(r.uri for r in roots),
        hashlib.sha256(output_token.encode()).hexdigest() if output_token else None,
    )
