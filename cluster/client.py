"""A small HTTP client for the genaug API (stdlib only), used by the CLI and the quickstart."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiClientError(ValueError):
    """An HTTP error answered by the service: status plus its ``{error, detail}`` body."""

    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        if isinstance(body, dict):
            detail = body.get("detail")
            msg = f"{body.get('error', 'error')}: {detail if isinstance(detail, str) else json.dumps(detail)}"
        else:
            msg = str(body)
        super().__init__(f"HTTP {status}: {msg}")


class Client:
    """``Client(url, token)``; ``url`` defaults to ``$GENAUG_URL``, ``token`` to ``$GENAUG_API_TOKEN``."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0):
        self.url = (url or os.environ.get("GENAUG_URL") or "").rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(
                f"service URL {self.url!r} is not valid; valid: http://HOST:PORT (set GENAUG_URL)"
            )
        self.token = token if token is not None else os.environ.get("GENAUG_API_TOKEN")
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: Any = None, headers: dict | None = None, raw: bool = False
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        h = {"Accept": "application/json", **(headers or {})}
        if data is not None:
            h["Content-Type"] = "application/json"
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                parsed = json.loads(payload)
            except ValueError:
                parsed = payload.decode(errors="replace")
            raise ApiClientError(e.code, parsed) from None
        except urllib.error.URLError as e:
            raise ConnectionError(f"cannot reach genaug at {self.url}: {e.reason}") from None
        return payload if raw else json.loads(payload)

    def submit_job(self, req: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/v1/jobs", req, headers=headers)

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}")

    def jobs(self, status: str | None = None) -> list[dict]:
        query = f"?status={urllib.parse.quote(status)}" if status else ""
        return self.request("GET", f"/v1/jobs{query}")["jobs"]

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"/v1/jobs/{urllib.parse.quote(job_id)}")

    def manifest(self, job_id: str) -> dict:
        return self.request("GET", f"/v1/jobs/{urllib.parse.quote(job_id)}/manifest")

    def samples(self, req: dict) -> Any:
        return self.request("POST", "/v1/samples", req, raw=req.get("format") in ("png", "npz"))

    def wait(self, job_id: str, show: bool = True, poll_s: float = 0.5, label: str = "") -> dict:
        """Poll until the job is terminal, drawing a progress bar on stderr."""
        bar = ProgressBar(label or job_id, enabled=show)
        while True:
            job = self.job(job_id)
            bar.update(job)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                bar.close()
                return job
            time.sleep(poll_s)


class ProgressBar:
    """``[####.....] 40% 4,000/10,000 rows  2/5 shards  1,234 rows/s  running``"""

    def __init__(self, label: str, enabled: bool = True, width: int = 28):
        self.label, self.enabled, self.width = label, enabled, width
        self.tty = sys.stderr.isatty()
        self.last = ""

    def update(self, job: dict) -> None:
        if not self.enabled:
            return
        frac = job.get("progress") or 0.0
        filled = int(frac * self.width)
        rate = job.get("rows_per_s")
        line = (
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {frac:4.0%} "
            f"{job.get('rows_done', 0):,}/{job.get('total_rows', 0):,} rows  "
            f"{job.get('shards_done', 0)}/{job.get('total_shards', 0)} shards  "
            f"{(rate or 0):,.0f} rows/s  {job['status']}"
        )
        if self.tty:
            sys.stderr.write("\r" + line.ljust(len(self.last)))
            sys.stderr.flush()
        elif line.split("]")[0] != self.last.split("]")[0] or job["status"] != "running":
            if line != self.last:
                sys.stderr.write(line + "\n")
        self.last = line

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
