"""benchmarks/load.py in its short mode: it starts its own service, loads it, stops by itself, reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_load_short_mode_reports_figures(tmp_path):
    out = tmp_path / "load.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GENAUG_URL", "GENAUG_API_TOKEN")}
    cmd = [sys.executable, "-m", "benchmarks.load", "--seconds", "4", "--clients", "4", "--json", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["clients"] == 4 and 4 <= r["seconds"] < 60
    assert r["answered"] > 0 and r["requests_per_s"] > 0 and r["p50_ms"] <= r["p99_ms"]
    assert r["errors_5xx"] == 0 and r["wrong_answers"] == 0, r
    assert r["per_kind"]["samples"]["requests"] > 0
    assert r["memory"]["processes"] >= 4 and r["memory"]["start_mb"] > 0 and r["memory"]["end_mb"] > 0
    assert "req/s" in proc.stderr
