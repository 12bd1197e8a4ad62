"""The genaug Serve application: a FastAPI ingress in front of the generator deployment.

    genaug serve --host 127.0.0.1 --port 8000          # embedded: starts Ray, Serve and the queue
    serve run cluster/serve_config.yaml                 # Ray's own tools, same app
    serve deploy cluster/serve_config.yaml -a http://HEAD:8265

``build_app(args)`` assembles it; the ingress gets (or creates) the queue owner actor, so a plain
``serve deploy`` brings up the whole service. API reference: README.md and ``/docs``.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster import metrics
from cluster.dispatcher import get_queue
from cluster.formats import MEDIA_TYPES
from cluster.generator import INLINE_SAMPLES, Generator, ModelUnavailable, Sampler, SampleRequest
from cluster.queue import InvalidTransition, JobNotFound, QueueError
from jobs.audit import LABEL_ERROR_GRID, OUTLIER_GRID, REPORT_FILE, TOP_RANGE, check_cvae_version
from jobs.generate import TEMPERATURE_RANGE, parse_counts
from jobs.metrics.label_filter import FilterRejected
from jobs.store import shards
from jobs.store.location import location, output_roots, resolve_home
from jobs.store.registry import SAMPLES_PNG, Registry, UnknownModel
from models.audit import AuditConfig

DEFAULT_INLINE_CAP = 4096
MAX_BODY_BYTES = 1 << 20
# The web console: plain files served at / (no build step); the token stays in the browser tab.
STATIC_DIR = Path(__file__).with_name("static")
CONSOLE_FILES = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css"}
CONSOLE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SAMPLE_ATTEMPTS = 3  # a sample call whose replica died is re-sent (same seed, same pixels)
# A replica or actor that died or is restarting, or a deployment that is overloaded: retry later.
_GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError)


class ApiError(Exception):
    """An error answered as ``{"error", "detail"}`` with an HTTP status."""

    def __init__(self, status: int, error: str, detail: Any = None):
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


class SamplesRequest(BaseModel):
    """``POST /v1/samples``: samples returned inline."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str = Field(description="NAME or NAME:VERSION (latest when no version)", examples=["digits-cgan"])
    per_class: int | None = Field(None, description="samples for every class")
    counts: dict[str, int] | None = Field(None, description="samples per class, by index or name")
    seed: int = Field(0, ge=0, lt=2**63, description="same seed, same images")
    temperature: float = Field(1.0, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])
    format: Literal["json", "npz", "png"] = "json"
    filter: Literal["label"] | None = Field(
        None, description="label: only samples the classifier reads as asked"
    )


class JobRequest(BaseModel):
    """``POST /v1/jobs``: a generation job writing a Parquet dataset, or (``kind: audit``) an audit of a
    labelled dataset by a cVAE (``genaug audit``), both sharded over the generator replicas."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    kind: Literal["generate", "audit"] = Field(
        "generate", description="generate: synthetic samples; audit: score every image of `dataset`"
    )
    model: str = Field(description="NAME or NAME:VERSION (latest when no version); a cVAE for an audit")
    per_class: int | None = None
    counts: dict[str, int] | None = None
    dataset: str | None = Field(
        None,
        description="audit: dataset spec of the images (digits, shapes[:SIZE], the model's training data, "
        "or a spec whose path is under the storage root)",
        examples=["digits"],
    )
    split: Literal["train", "test"] | None = Field(None, description="audit: the split (default train)")
    reference: str | None = Field(
        None,
        description="audit: spec whose train split calibrates the outlier percentiles (default: the "
        "model's training data)",
    )
    samples: int | None = Field(None, ge=1, le=4096, description="audit: K importance samples (default 32)")
    top: int | None = Field(
        None, ge=TOP_RANGE[0], le=TOP_RANGE[1], description="audit: rows per list in audit.md"
    )
    seed: int = Field(0, ge=0, lt=2**63)
    out: str | None = Field(
        None,
        description="output directory under the storage root (default datasets/<id>), or, with the output "
        "token, a path or URI under one of the service's output roots (GENAUG_OUTPUT_ROOTS)",
    )
    shard_rows: int | None = Field(None, description="rows per shard (default 10000)")
    temperature: float = Field(1.0, ge=TEMPERATURE_RANGE[0], le=TEMPERATURE_RANGE[1])
    priority: int = Field(0, ge=-1000, le=1000)
    filter: Literal["label"] | None = None


class ImageItem(BaseModel):
    """One image of ``/v1/score`` or ``/v1/denoise``: the shape of a ``/v1/samples`` json sample."""

    model_config = ConfigDict(extra="forbid")
    png: str = Field(description="base64 PNG (8-bit grey or RGB) of the model's size")
    label: int | str | None = Field(None, description="its class: index or name")
    label_name: str | None = Field(
        None, description="its class name (must agree with label if both are sent)"
    )


class ImagesRequest(BaseModel):
    """Labelled images for a cVAE: ``images`` (base64 PNGs) or ``npz`` (base64 of an npz)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str = Field(description="a cVAE: NAME or NAME:VERSION (latest when no version)")
    images: list[ImageItem] | None = Field(None, description="the images, each with its label")
    npz: str | None = Field(
        None,
        description="base64 of an .npz holding images (N, H, W[, C]) uint8 and labels (N,) or label_names "
        "(N,), as /v1/samples format npz returns; instead of images",
    )


class ScoreRequest(ImagesRequest):
    """``POST /v1/score``: the audit scores of each image."""

    samples: int = Field(
        AuditConfig.samples,
        ge=1,
        le=256,
        description="K importance samples per image and class; percentiles need the K of an audit",
    )
    seed: int = Field(0, ge=0, le=shards.MAX_SEED, description="seeds the K draws: same seed, same scores")


class DenoiseRequest(ImagesRequest):
    """``POST /v1/denoise``: the cVAE's reconstruction of each image (decode at the posterior mean)."""

    format: Literal["json", "npz", "png"] = "json"


class ImageScore(BaseModel):
    label: int
    label_name: str
    nll: float = Field(description="nll(x | label) in nats per image: the IWAE bound with K samples")
    outlier_percentile: float | None = Field(
        description="nll among the label class's training images (0..100); null without a reference"
    )
    p: list[float] = Field(description="p(c | x) for every class c, uniform class prior")
    suggested_label: int
    suggested_name: str
    label_error: float = Field(description="1 - p(label | x)")
    margin: float = Field(description="max over other classes of p(c | x), minus p(label | x)")


class ScoreReference(BaseModel):
    data: str | None = Field(description="the training data spec the percentiles compare with")
    per_class: list[int] = Field(description="training images per class behind the percentiles")


class ScoreResponse(BaseModel):
    model: str
    count: int
    samples: int
    seed: int
    classes: list[str]
    reference: ScoreReference | None = Field(
        description="null until an audit job computed this version's reference for this K and seed"
    )
    scores: list[ImageScore]


class ErrorBody(BaseModel):
    """Every error answer: a short ``error`` and a ``detail`` (a message, or a list of validation errors)."""

    error: str
    detail: Any = None


# Documented on every route so that the OpenAPI schema lists each status the service can answer.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "bad request or malformed JSON"),
        (401, "missing or wrong API token"),
        (404, "unknown model, version or job"),
        (409, "the job is not in a state that allows this"),
        (413, "request body or sample count over the limit"),
        (503, "model version, queue or replica unavailable; retry later"),
    )
}


def _error(status: int, error: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def _classify(e: BaseException) -> ApiError:
    """Map domain errors (also when re-raised by Ray across processes) to HTTP errors."""
    cause = getattr(e, "cause", None) or e
    for exc in (cause, e):
        if isinstance(exc, UnknownModel):
            return ApiError(404, "not found", str(exc))
        if isinstance(exc, JobNotFound):
            return ApiError(404, "not found", str(exc).strip("'\""))
        if isinstance(exc, ModelUnavailable):
            return ApiError(503, "model unavailable", str(exc))
        if isinstance(exc, InvalidTransition):
            return ApiError(409, "conflict", str(exc))
        if isinstance(exc, FilterRejected):  # the model rarely makes a class the classifier agrees with
            return ApiError(422, "filter rejected", str(exc))
        if isinstance(exc, QueueError):  # the job store is locked, read-only or damaged
            return ApiError(503, "queue unavailable", str(exc))
        if isinstance(exc, _GONE):
            return ApiError(
                503, "service unavailable", f"{type(exc).__name__}: a replica is down or busy; retry shortly"
            )
        if isinstance(exc, ValueError):
            return ApiError(400, "bad request", str(exc))
    raise e


api = FastAPI(
    title="genaug",
    version="1",
    description="Synthetic training data from class-conditional generators: inline samples and Parquet jobs.",
    responses=ERROR_RESPONSES,
)


class _BodyLimit:
    """ASGI middleware: 413 JSON for a body over ``max_bytes``, by Content-Length or counted as it streams.

    The body (at most ``max_bytes``) is read before the app runs and replayed to it, so the limit also
    holds for chunked uploads without a Content-Length.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send, f"Content-Length {declared.decode()!r}")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away: let the app see it
                return await self.app(scope, _replay([message], receive), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                return await self._reject(scope, receive, send, f"at least {size} bytes")
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _reject(self, scope, receive, send, what: str) -> None:
        detail = f"the request body ({what}) is over the limit of {self.max_bytes} bytes"
        await _error(413, "request too large", detail)(scope, receive, send)


def _replay(messages: list[dict], receive):
    """An ASGI ``receive`` that returns ``messages`` first, then defers to ``receive``."""
    pending = list(messages)

    async def replay() -> dict:
        return pending.pop(0) if pending else await receive()

    return replay


NPZ_MEDIA_TYPE = "application/x-npz"
IMAGE_ROUTES = ("/v1/score", "/v1/denoise")


class _NpzUpload:
    """ASGI middleware: an npz uploaded as the body of ``/v1/score`` or ``/v1/denoise``
    (``Content-Type: application/x-npz``, the other fields in the query string) becomes the JSON request
    with that npz in base64, so one request model and one decoder serve both forms."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        media = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1").lower()
        if scope["type"] != "http" or scope["path"] not in IMAGE_ROUTES or media != NPZ_MEDIA_TYPE:
            return await self.app(scope, receive, send)
        message = await receive()  # the whole body: _BodyLimit (outside) read it and replays it
        fields = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        body = json.dumps({**fields, "npz": base64.b64encode(message.get("body", b"")).decode()}).encode()
        kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        scope = {
            **scope,
            "query_string": b"",
            "headers": [
                *kept,
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
        message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([message], receive), send)


def _npz_upload_doc(fields: dict[str, str]) -> dict[str, Any]:
    """OpenAPI of the npz upload form of an image route: the binary body and its query fields."""
    return {
        "requestBody": {"content": {NPZ_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": name == "model",
                "description": f"{text} (only with an {NPZ_MEDIA_TYPE} body)",
                "schema": {"type": "string"},
            }
            for name, text in fields.items()
        ],
    }


api.add_middleware(_NpzUpload)  # inside _BodyLimit: it sees a body already capped at 1 MiB
api.add_middleware(_BodyLimit)


@api.exception_handler(ApiError)
async def _api_error(_: Request, e: ApiError) -> JSONResponse:
    return _error(e.status, e.error, e.detail)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    errors = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in e.errors()]
    if any(err.get("type") == "json_invalid" for err in errors):
        return _error(400, "malformed JSON", errors)
    return _error(422, "invalid request", errors)


@api.exception_handler(Exception)
async def _internal_error(_: Request, e: Exception) -> JSONResponse:
    # JSON like every other error; the message may name paths, so only the type goes out (logs keep all)
    return _error(500, "internal error", f"{type(e).__name__}; see the service logs")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return _error(e.status_code, "not found" if e.status_code == 404 else "http error", e.detail)


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


AUDIT_COLUMNS = ("index", "label", "label_name", "nll", "outlier_percentile", "suggested_label")
AUDIT_COLUMNS += ("suggested_name", "label_error", "margin")
AUDIT_FILES = {OUTLIER_GRID: "image/png", LABEL_ERROR_GRID: "image/png", REPORT_FILE: "text/markdown"}


# Module-level helpers of the Ingress must be defined above it: Serve pickles the class when it is decorated.
def _audit_view(output: str, top: int) -> dict[str, Any]:
    """An audit's manifest summary and its ``top`` rows by outlier percentile and by label-error score."""
    import pyarrow.parquet as pq

    out = location(output)
    manifest = (out / "manifest.json").read_json()
    data = out / shards.DATA_DIR
    rows = pq.read_table(data.path, filesystem=data.fs, columns=list(AUDIT_COLUMNS)).to_pandas()
    by_outlier = rows.sort_values(["outlier_percentile", "nll"], ascending=False, kind="stable")
    by_error = rows.sort_values(["label_error", "margin"], ascending=False, kind="stable")

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
            raise _classify(e) from None

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
            raise _classify(e) from None
        versions = [_summary(self.registry.resolve(f"{name}:v{v}")) for v in self.registry.versions(name)]
        return {"name": name, "versions": versions}

    @api.get("/v1/models/{ref}/samples.png", tags=["models"])
    async def model_samples_png(self, ref: str, authorization: str | None = Header(None)) -> Response:
        """The grid drawn at training time (a row per class) of NAME or NAME:VERSION; 404 when it has none."""
        self.check_token(authorization)
        try:
            mv = self.registry.resolve(ref)
        except ValueError as e:
            raise _classify(e) from None
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
            raise _classify(e) from None
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
            raise _classify(result) from None
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
                    raise _classify(e) from None
        self.inline_counts["generator"] += 1
        return await self._resending(lambda: self._generate(request))

    async def _resending(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``await call()``, made again when its replica died mid-request (the answers are deterministic,
        so re-sending is safe); other errors are classified."""
        for attempt in range(1, SAMPLE_ATTEMPTS + 1):
            try:
                return await call()
            except _GONE as e:
                if attempt == SAMPLE_ATTEMPTS:
                    raise _classify(e) from None
                await asyncio.sleep(0.2 * attempt)
            except Exception as e:
                raise _classify(e) from None
        raise AssertionError("unreachable")

    # -------------------------------------------------------------- audit: score and denoise

    @api.post(
        "/v1/score",
        tags=["audit"],
        responses={200: {"model": ScoreResponse, "description": "the scores of each image, in order"}},
        openapi_extra=_npz_upload_doc(
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
        openapi_extra=_npz_upload_doc({"model": "a cVAE", "format": "json, npz or png (default json)"}),
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
            raise _classify(e) from None
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
