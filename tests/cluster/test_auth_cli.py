"""Token auth on every /v1 route, and the CLI as a client of a running service and on the embedded default."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from cluster.cli import main as cli
from tests.conftest import running_service

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def secured(ray_local, model_home):
    with running_service(model_home, api_token=TOKEN) as url:
        yield url, model_home


def status_of(
    url: str, method: str = "GET", token: str | None = None, body: dict | None = None
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/tiny-cgan", None),
    ("GET", "/v1/models/tiny-cgan:v1/samples.png", None),
    ("POST", "/v1/samples", {"model": "tiny-cgan", "per_class": 1}),
    ("POST", "/v1/jobs", {"model": "tiny-cgan", "per_class": 1}),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/j-000000000000", None),
    ("GET", "/v1/jobs/j-000000000000/manifest", None),
    ("GET", "/v1/jobs/j-000000000000/card", None),
    ("DELETE", "/v1/jobs/j-000000000000", None),
    ("GET", "/v1/stats", None),
]


@pytest.mark.parametrize("method, path, body", ROUTES)
@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_every_v1_route_needs_the_token(secured, method, path, body, token):
    url, _ = secured
    code, reply = status_of(url + path, method, token, body)
    assert code == 401 and reply["error"] == "unauthorized"
    assert TOKEN not in json.dumps(reply)


def test_right_token_passes_and_health_is_open(secured):
    url, _ = secured
    assert status_of(url + "/healthz")[0] == 200
    code, reply = status_of(url + "/v1/models", token=TOKEN)
    assert code == 200 and {m["name"] for m in reply["models"]} == {"tiny-cgan", "tiny-cvae"}


def test_console_files_are_open_and_confined(secured):
    url, _ = secured
    with urllib.request.urlopen(url + "/", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert b'src="console/console.js"' in r.read()
    with urllib.request.urlopen(url + "/console/console.js", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/javascript") and b"sessionStorage" in r.read()
    for path in ("/console/serve_app.py", "/console/..%2Fserve_app.py", "/console/"):
        assert status_of(url + path)[0] == 404, path
    code, reply = status_of(url + "/v1/models/tiny-cgan:v1/samples.png", token=TOKEN)
    assert code == 404 and "tiny-cgan:v1 has no samples.png" in reply["detail"]
    code, reply = status_of(url + "/v1/models/nope/samples.png", token=TOKEN)
    assert code == 404 and "unknown model 'nope'" in reply["detail"]


def test_cli_generate_and_jobs_through_the_service(secured, monkeypatch, capsys):
    url, home = secured
    monkeypatch.setenv("GENAUG_URL", url)
    monkeypatch.setenv("GENAUG_API_TOKEN", TOKEN)
    assert (
        cli(["generate", "--model", "tiny-cgan", "--counts", "2=7,5=3", "--shard-rows", "4", "--wait"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    job_id = out[0].strip()
    assert job_id.startswith("j-")
    assert any(line.startswith("output: ") for line in out)
    df = pd.read_parquet(Path(home) / "datasets" / job_id / "data")
    assert df.label_name.value_counts().to_dict() == {"2": 7, "5": 3}
    assert cli(["jobs", "list"]) == 0
    assert job_id in capsys.readouterr().out
    assert cli(["jobs", "show", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    assert cli(["jobs", "cancel", job_id]) == 2
    assert "cannot cancel" in capsys.readouterr().err
    assert cli(["generate", "--model", "tiny-cgan", "--counts", "12=1"]) == 2
    assert "unknown class '12'" in capsys.readouterr().err


def test_cli_without_token_is_refused(secured, monkeypatch, capsys):
    url, _ = secured
    monkeypatch.setenv("GENAUG_URL", url)
    monkeypatch.delenv("GENAUG_API_TOKEN", raising=False)
    assert cli(["jobs", "list"]) == 2
    assert "401" in capsys.readouterr().err


def test_serve_refuses_public_host_without_token(monkeypatch, capsys):
    monkeypatch.delenv("GENAUG_API_TOKEN", raising=False)
    assert cli(["serve", "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err


def test_embedded_generate_then_local_jobs_list(ray_local, model_home, monkeypatch, capsys):
    monkeypatch.delenv("GENAUG_URL", raising=False)
    assert (
        cli(["generate", "--home", str(model_home), "--model", "tiny-cvae", "--per-class", "2", "--wait"])
        == 0
    )
    out = capsys.readouterr().out
    job_id = out.splitlines()[0]
    assert "per class: 0=2, 1=2" in out
    assert cli(["jobs", "list", "--home", str(model_home), "--status", "succeeded"]) == 0
    assert job_id in capsys.readouterr().out
