"""The console's Audit tab in a real headless Chromium against the real service: pick a cVAE and a
dataset, run the audit as a job, see the two grids and the top rows (as the API gives them)."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from tests.cluster.test_console import (  # noqa: F401 - browser and signed_in are fixtures
    TOKEN,
    browser,
    choose,
    error_for,
    go,
    img_size,
    signed_in,
)
from tests.conftest import running_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(browser, ray_local, model_home, tmp_path_factory):  # noqa: F811 - the imported fixture
    home = tmp_path_factory.mktemp("console_audit_home")
    shutil.copytree(model_home / "models", home / "models")
    with running_service(home, api_token=TOKEN, max_in_flight=2) as url:
        yield url, home


@pytest.fixture(scope="module")
def page(browser, service):  # noqa: F811 - signed_in (test_console's) signs this page in
    url, _ = service
    tab = browser.new_page()
    tab.goto(url + "/#audit")
    yield tab
    tab.close()


def test_only_cvaes_are_offered_and_a_bad_dataset_is_named_beside_its_field(signed_in):  # noqa: F811
    page = signed_in
    go(page, "audit")
    assert page.js("[...document.querySelectorAll('#audit-model option')].map(o => o.value)") == [
        "tiny-cvae:v1"
    ]
    assert page.js("document.getElementById('audit-dataset').value") == "digits"  # its training data
    page.wait("document.querySelectorAll('#audit-datasets option').length >= 2", what="dataset choices")
    page.js("document.getElementById('audit-dataset').value = 'shapes:8'")
    page.click("#audit-run")
    page.wait(
        "document.querySelector('#audit-form [data-err-for=\"dataset\"]').textContent !== ''", what="error"
    )
    assert "has 3 channel(s); the model takes 1" in error_for(page, "audit-form", "dataset")
    assert page.js("document.getElementById('audit-result').hidden")


def test_an_audit_runs_and_shows_its_grids_and_top_rows(signed_in, service):  # noqa: F811
    page = signed_in
    url, home = service
    go(page, "audit")
    choose(page, "#audit-model", "tiny-cvae:v1")
    page.js("document.getElementById('audit-dataset').value = 'digits'")
    page.js("document.getElementById('audit-split').value = 'test'")
    page.type("#audit-samples", "2")
    page.js("document.getElementById('audit-top').value = '7'")
    page.click("#audit-run")
    page.wait("!document.getElementById('audit-report').hidden", timeout=240, what="the audit report")
    assert error_for(page, "audit-form", "") == ""
    job_id = page.js("document.getElementById('audit-title').textContent").split()[1].rstrip(":")
    for grid in ("#audit-outliers-grid", "#audit-errors-grid"):
        page.wait(f"document.querySelector('{grid}').naturalWidth > 0", what=f"{grid} to load")
        assert img_size(page, grid)[0] > 100
    shown = page.js(
        """Object.fromEntries(['audit-outliers', 'audit-errors'].map(id => [id,
            [...document.querySelectorAll(`#${id} tbody tr`)].map(r => Number(r.dataset.index))]))"""
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    view = httpx.get(f"{url}/v1/jobs/{job_id}/audit", params={"top": 7}, headers=headers, timeout=30).json()
    assert (
        shown["audit-outliers"] == [r["index"] for r in view["outliers"]]
        and len(shown["audit-outliers"]) == 7
    )
    assert shown["audit-errors"] == [r["index"] for r in view["label_errors"]]
    assert view["summary"]["images"] == 899 and view["request"]["split"] == "test"
    assert page.js("document.getElementById('audit-status').textContent") == "succeeded: 899 images scored"
    page.screenshot("10-audit")
    # the job is listed with the others, and its results open from there
    go(page, "jobs")
    page.wait(f"!!document.getElementById('job-{job_id}')", what="the audit's row")
    assert not page.js(f"document.querySelector('#job-{job_id} .job-audit').hidden")
    assert json.loads(page.js("JSON.stringify(document.body.dataset)"))["ready"] == "1"
