"""Output roots end to end: ``genaug generate --out s3://other-bucket/x`` with models in a local root, allowed
only by ``GENAUG_OUTPUT_ROOTS``; over HTTP only for the output token."""

from __future__ import annotations

import time

import httpx
import pyarrow.parquet as pq
import pytest

from cluster import cli
from jobs.store.location import location
from tests.cluster.test_s3_roundtrip import _files, _run
from tests.conftest import register_untrained, running_service

pytestmark = pytest.mark.slow


def _generate(home, out: str) -> list[str]:
    return ["cluster.cli", "generate", "--home", str(home), "--model", "tiny-cvae", "--per-class", "2",
            "--shard-rows", "8", "--out", out]  # fmt: skip


def test_generate_to_another_bucket_only_when_it_is_an_output_root(s3_server, s3_root, home, tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    register_untrained(home, "tiny-cvae", "cvae")
    other = s3_server.make_bucket("team")
    out = f"s3://{other}/x"
    monkeypatch.delenv("GENAUG_OUTPUT_ROOTS", raising=False)
    assert cli.main(_generate(home, out)[1:]) == 2  # refused before anything starts
    err = capsys.readouterr().err
    assert f"output {out!r} is not a local path; valid: a path under {home}" in err

    monkeypatch.setenv("GENAUG_OUTPUT_ROOTS", f"s3://{other}/team,{tmp_path / 'elsewhere'}")
    for escape in (f"s3://{other}/team/../x", f"s3://{other}/teamx/y", f"{s3_root}/x", "../x"):
        assert cli.main(_generate(home, escape)[1:]) == 2, escape
        err = capsys.readouterr().err
        assert f"valid: a relative name, or a path or URI under one of {home}, s3://{other}/team, " in err
    assert _files(f"s3://{other}") == []

    monkeypatch.setenv("GENAUG_OUTPUT_ROOTS", f"s3://{other}")
    stdout = _run([*_generate(home, out), "--wait"], tmp_path, {}, "generate to s3://other")
    assert f"output: {out}" in stdout and "rows: 20 in 3 shards" in stdout
    assert cli.main(["datasets", "--home", str(home), "verify", out]) == 0
    assert "ok (3 shards, 20 rows)" in capsys.readouterr().out
    loc = location(out)
    assert pq.read_table(loc.join("data").path, filesystem=loc.fs).num_rows == 20
    assert not (home / "datasets").exists()


def test_http_output_roots_need_the_output_token(ray_local, home, tmp_path):
    register_untrained(home, "tiny-cvae", "cvae")
    team = tmp_path / "team"
    team.mkdir()
    app = {"api_token": "api-secret", "output_token": "out-secret", "output_roots": [str(team)]}
    with running_service(home, **app) as url:
        body = {"model": "tiny-cvae", "per_class": 1, "out": f"{team}/ds"}

        def submit(token: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.post(f"{url}/v1/jobs", json=body, headers=headers, timeout=60)

        assert submit(None).status_code == 401
        refused = submit("api-secret")
        assert refused.status_code == 400 and f"escapes the storage root {home}" in refused.text
        assert not any(team.iterdir())
        accepted = submit("out-secret")
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        headers = {"Authorization": "Bearer api-secret"}  # the API token reads it like any job
        deadline = time.monotonic() + 120
        while (job := httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json())["status"] != "succeeded":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["output"] == str(team / "ds") and (team / "ds" / "_SUCCESS").is_file()
        escape = httpx.post(f"{url}/v1/jobs", json={**body, "out": f"{team}/../x"},
                            headers={"Authorization": "Bearer out-secret"}, timeout=60)  # fmt: skip
        assert escape.status_code == 400 and f"under one of {home}, {team}" in escape.text
