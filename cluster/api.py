"""The HTTP contract of the genaug API: request and response models, errors as ``{error, detail}``, the
body-size limit and the npz-upload middleware, and the FastAPI app they belong to. ``cluster.serve_app``
adds the routes (its ``Ingress``) to ``api``; README.md and ``/docs`` describe every route.
"""

import base64
import json
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cluster.generator import ModelUnavailable
from cluster.queue import InvalidTransition, JobNotFound, QueueError
from jobs.auditor.spec import TOP_RANGE
from jobs.generate import TEMPERATURE_RANGE
from jobs.metrics.label_filter import FilterRejected
from jobs.store import shards
from jobs.store.registry import UnknownModel
from models.audit import AuditConfig

MAX_BODY_BYTES = 1 << 20
# A replica or actor that died or is restarting, or a deployment that is overloaded: retry later.
GONE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, BackPressureError)


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
    code_nll: float = Field(
        description="-log p(E[z | x, label] | label): the code's nll under the class prior"
    )
    code_percentile: float | None = Field(
        description="code_nll among the label class's training images (0..100); null without a reference"
    )
    outlier_score: float | None = Field(
        description="the larger of outlier_percentile and code_percentile (0..100); null without a reference"
    )
    p: list[float] = Field(description="p(c | x) for every class c, uniform class prior")
    suggested_label: int
    suggested_name: str
    label_error: float = Field(description="1 - p(label | x)")
    margin: float = Field(
        description="log of the largest p(c | x) over the other classes minus log p(label | x), "
        "in nats; > 0: another class wins"
    )


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


def classify(e: BaseException) -> ApiError:
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
        if isinstance(exc, GONE):
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


def npz_upload_doc(fields: dict[str, str]) -> dict[str, Any]:
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
