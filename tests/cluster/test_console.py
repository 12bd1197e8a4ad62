"""The web console at / in a real headless Chromium, against the real service (Ray, Serve, queue, Parquet).

Chromium comes from PATH (or ``GENAUG_CHROMIUM``), else Debian's ``chromium`` package is installed when
running as root; otherwise the module is skipped with the reason. Screenshots: test-artifacts/console/.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cluster.chromium import Chromium, Page, find_chromium
from tests.conftest import register_untrained, running_service

pytestmark = pytest.mark.slow

TOKEN = "console-test-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
SAMPLES_PNG_SIZE = (40, 100)


@pytest.fixture(scope="module")
def browser():
    binary, reason = find_chromium()
    if binary is None:
        pytest.skip(f"no headless Chromium for the console tests: {reason}")
    chromium = Chromium(binary, ARTIFACTS)
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def service(browser, ray_local, model_home, tmp_path_factory):
    """Tiny models (tiny-cgan:v1 with a samples.png), bad-cvae:v1 (weights cut in half) and a token."""
    home = tmp_path_factory.mktemp("console_home")
    shutil.copytree(model_home / "models", home / "models")
    stripes = np.tile(np.arange(SAMPLES_PNG_SIZE[0], dtype=np.uint8) * 6, (SAMPLES_PNG_SIZE[1], 1))
    Image.fromarray(stripes).save(home / "models" / "tiny-cgan" / "v1" / "samples.png")
    register_untrained(home, "bad-cvae", "cvae")
    weights = home / "models" / "bad-cvae" / "v1" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with running_service(home, api_token=TOKEN, max_in_flight=2) as url:
        yield url, home


@pytest.fixture(scope="module")
def page(browser, service):
    url, _ = service
    tab = browser.new_page()
    tab.goto(url + "/")
    yield tab
    tab.close()


@pytest.fixture
def signed_in(page):
    """The page with the token entered (by test_token_asked_once_and_models or here) and models loaded."""
    if not page.js(f"sessionStorage.getItem('genaug.token') === {json.dumps(TOKEN)}"):
        page.wait("document.getElementById('token-dialog').open", what="the token dialog")
        page.type("#token-input", TOKEN)
        page.press_enter()
    page.wait("document.body.dataset.ready === '1'", what="the console to load its models")
    yield page
    assert page.exceptions == [], page.exceptions


def img_size(page: Page, selector: str) -> list[int] | None:
    """[naturalWidth, naturalHeight] once the <img> has loaded an image, else None."""
    return page.js(
        f"""(() => {{ const i = document.querySelector({json.dumps(selector)});
            return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null; }})()"""
    )


def choose(page: Page, selector: str, value: str) -> None:
    """Pick an option of a <select> (as the user does: set it, then the change event)."""
    page.js(
        f"""(() => {{ const s = document.querySelector({json.dumps(selector)}); s.value = {json.dumps(value)};
            s.dispatchEvent(new Event('change')); return s.value; }})()"""
    )
    assert page.js(f"document.querySelector({json.dumps(selector)}).value") == value


def go(page: Page, tab: str) -> None:
    page.click(f"nav a[data-tab={tab}]")
    page.wait(f"!document.getElementById('tab-{tab}').hidden", what=f"the {tab} tab")


def error_for(page: Page, form: str, field: str) -> str:
    return page.js(
        f"""(() => {{ const s = [...document.querySelectorAll('#{form} [data-err-for]')]
            .find(s => s.dataset.errFor === {json.dumps(field)}); return s ? s.textContent : null; }})()"""
    )


def job_ids(page: Page) -> list[str]:
    return page.js("[...document.querySelectorAll('#jobs-body tr')].map(r => r.dataset.job)")


def submit_job(page: Page, model: str, per_class: int, shard_rows: int, out: str | None = None) -> str:
    """Fill the job form and submit; return the new job's id once its row shows up."""
    go(page, "jobs")
    before = set(job_ids(page))
    choose(page, "#job-model", model)
    page.click("#job-form-mode-all")
    page.type("#job-form-per-class", str(per_class))
    page.type("#job-shard-rows", str(shard_rows))
    page.type("#job-out", out or "")
    page.click("#job-submit")
    page.wait(
        f"[...document.querySelectorAll('#jobs-body tr')].some(r => !{json.dumps(sorted(before))}"
        ".includes(r.dataset.job))",
        what="the new job's row",
    )
    (new,) = set(job_ids(page)) - before
    return new


def job_row(page: Page, job_id: str) -> dict:
    return page.js(
        f"""(() => {{ const r = document.getElementById('job-{job_id}'); if (!r) return null;
            const shown = s => !r.querySelector(s).hidden;
            return {{status: r.dataset.status, progress: r.querySelector('progress').value,
                     text: r.querySelector('.progress-text').textContent,
                     error: r.querySelector('.job-error').textContent,
                     cancel: shown('.job-cancel'), open: shown('.job-open')}}; }})()"""
    )


def wait_status(page: Page, job_id: str, status: str, timeout: float = 180) -> dict:
    try:
        page.wait(
            f"(document.getElementById('job-{job_id}') || {{dataset: {{}}}}).dataset.status === '{status}'",
            timeout=timeout,
            what=f"job {job_id} to show {status}",
        )
    except AssertionError as e:  # say what the row showed instead (its error text, say)
        raise AssertionError(f"{e}; the row: {job_row(page, job_id)}") from None
    return job_row(page, job_id)


# ----------------------------------------------------------------------------- scenarios


def test_token_asked_once_and_models(page, service):
    # no token yet: the first API call answers 401 and the console asks for it
    page.wait("document.getElementById('token-dialog').open", what="the token dialog")
    assert "needs its API token" in page.text("#token-reason")
    page.screenshot("01-token")
    page.type("#token-input", "wrong-token")
    page.press_enter()
    page.wait(
        "document.getElementById('token-reason').textContent.includes('rejected')", what="token rejected"
    )
    assert page.js("document.getElementById('token-dialog').open")
    page.type("#token-input", TOKEN)
    page.press_enter()
    page.wait("document.body.dataset.ready === '1'", what="the models to load")
    assert not page.js("document.getElementById('token-dialog').open")
    # kept for this tab only
    assert page.js("sessionStorage.getItem('genaug.token')") == TOKEN
    assert page.js("localStorage.length") == 0
    assert page.js("document.cookie") == ""

    names = page.js("[...document.querySelectorAll('#models-list section.model')].map(s => s.dataset.model)")
    assert names == ["bad-cvae", "tiny-cgan", "tiny-cvae"]
    facts = page.js(
        """Object.fromEntries([...document.querySelectorAll('.version[data-ref="tiny-cgan:v1"] dt')]
            .map(dt => [dt.textContent, dt.nextElementSibling.textContent]))"""
    )
    assert facts["type"] == "cgan" and facts["dataset"] == "digits"
    assert facts["classes"].startswith("10: 0, 1, 2")
    assert facts["image size"] == "8×8, 1 channel"
    assert facts["epochs"] == "0" and facts["metrics"].startswith("none yet")
    # tiny-cgan has a samples.png in the registry; tiny-cvae has none, so the console draws one
    cgan_img = '.version[data-ref="tiny-cgan:v1"] img'
    cvae_img = '.version[data-ref="tiny-cvae:v1"] img'
    page.wait(f"document.querySelector('{cgan_img}').naturalWidth > 0", what="tiny-cgan's samples.png")
    assert img_size(page, cgan_img) == list(SAMPLES_PNG_SIZE)
    assert "from training" in page.text('.version[data-ref="tiny-cgan:v1"] figcaption')
    page.wait(f"document.querySelector('{cvae_img}').naturalWidth > 0", what="tiny-cvae's drawn grid")
    assert img_size(page, cvae_img) == [8 * 34, 10 * 34]
    assert "drawn now" in page.text('.version[data-ref="tiny-cvae:v1"] figcaption')
    page.wait(
        "document.querySelector('.version[data-ref=\"bad-cvae:v1\"] figcaption').textContent"
        ".includes('unavailable')",
        what="bad-cvae's grid error",
    )
    page.screenshot("02-models")

    # a reload in the same tab keeps the token: not asked again
    page.goto(service[0] + "/")
    page.wait("document.body.dataset.ready === '1'", what="reload")
    assert not page.js("document.getElementById('token-dialog').open")
    assert page.exceptions == [], page.exceptions


def test_try_it_one_class(signed_in):
    page = signed_in
    go(page, "try")
    choose(page, "#try-model", "tiny-cgan:v1")
    page.click("#try-form-mode-each")
    page.type("#try-form-class-3", "3")
    page.type("#try-seed", "7")
    page.click("#try-generate")
    page.wait("document.querySelector('#try-grid').naturalWidth > 0", what="the generated grid")
    # one row (class 3 only), three 8 px samples upscaled to 32 px with a 1 px border
    assert img_size(page, "#try-grid") == [3 * 34, 34]
    assert page.text("#try-caption").startswith("tiny-cgan:v1, seed 7")
    assert error_for(page, "try-form", "") == ""
    page.screenshot("03-try-it")


def test_negative_counts_show_the_api_message(signed_in):
    page = signed_in
    go(page, "try")
    page.click("#try-form-mode-all")
    page.type("#try-form-per-class", "-2")
    page.click("#try-generate")
    message = "per_class must be a positive integer, got -2"
    page.wait(
        f"document.querySelector('#try-form [data-err-for=per_class]').textContent.includes('{message}')"
    )
    assert page.js("document.getElementById('try-form-per-class').classList.contains('invalid')")
    page.screenshot("04-negative-count")

    page.click("#try-form-mode-each")
    page.type("#try-form-class-5", "-1")
    page.click("#try-generate")
    page.wait("document.querySelector('#try-form [data-err-for=\"counts.5\"]').textContent !== ''")
    assert "count for class '5' must be a positive integer, got -1" in error_for(page, "try-form", "counts.5")
    assert error_for(page, "try-form", "per_class") == ""  # the old error is cleared
    page.type("#try-form-class-5", "")

    go(page, "jobs")
    choose(page, "#job-model", "tiny-cgan:v1")
    page.type("#job-shard-rows", "-5")
    page.click("#job-submit")
    page.wait("document.querySelector('#job-form [data-err-for=shard_rows]').textContent !== ''")
    assert "shard_rows must be a positive integer, got -5" in error_for(page, "job-form", "shard_rows")
    page.screenshot("05-negative-shard-size")
    page.type("#job-shard-rows", "")


def test_quality_filter_is_sent_and_its_refusal_shown_beside_it(signed_in):
    """The checkbox sends ``filter: "label"``; tiny-cgan's data facts do not match digits (fingerprint
    "untrained"), so the service refuses with the filter's own message, shown next to the checkbox."""
    page = signed_in
    go(page, "try")
    choose(page, "#try-model", "tiny-cgan:v1")
    page.click("#try-form-mode-each")
    page.type("#try-form-class-3", "2")
    page.click("#try-filter")
    assert page.js("document.getElementById('try-filter').checked")
    page.click("#try-generate")
    page.wait("document.querySelector('#try-form [data-err-for=filter]').textContent !== ''", what="error")
    assert "the label filter needs a classifier of the model's own training data" in error_for(
        page, "try-form", "filter"
    )
    page.screenshot("06-filter-refused")
    page.click("#try-filter")
    page.type("#try-form-class-3", "")
    assert not page.js("document.getElementById('try-filter').checked")


def test_small_job_succeeds_with_manifest_and_card(signed_in, service):
    page = signed_in
    _, home = service
    job_id = submit_job(page, "tiny-cvae:v1", per_class=20, shard_rows=50, out="console/small")
    assert error_for(page, "job-form", "") == ""
    row = wait_status(page, job_id, "succeeded")
    assert row["progress"] == 1 and row["text"].startswith("200 / 200 rows · 4 / 4 shards"), row
    assert row["open"] and not row["cancel"] and row["error"] == ""
    assert (home / "console" / "small" / "_SUCCESS").is_file()
    page.click(f"#job-{job_id} .job-open")
    page.wait("document.getElementById('job-manifest').textContent.startsWith('{')", what="the manifest")
    manifest = json.loads(page.text("#job-manifest"))
    assert manifest["totals"]["rows"] == 200 and manifest["lineage"]["model"] == "tiny-cvae:v1"
    card = page.text("#job-card")
    assert card.startswith("---") and "# Synthetic dataset generated by genaug" in card
    assert (home / "console" / "small" / "README.md").read_text() == card
    page.screenshot("06-job-succeeded")


def test_progress_updates_live_and_cancel(signed_in):
    page = signed_in
    job_id = submit_job(page, "tiny-cgan:v1", per_class=10000, shard_rows=500)
    seen: list[float] = []
    deadline = time.monotonic() + 120
    while len({p for p in seen if 0 < p < 1}) < 2:  # the bar moved at least twice while running
        assert time.monotonic() < deadline, f"progress never moved: {seen}"
        row = job_row(page, job_id)
        assert row["status"] in ("queued", "running"), row
        seen.append(row["progress"])
        time.sleep(0.2)
    assert seen == sorted(seen)
    page.screenshot("07-job-running")
    page.click(f"#job-{job_id} .job-cancel")
    row = wait_status(page, job_id, "cancelled", timeout=60)
    assert not row["cancel"] and not row["open"] and row["progress"] < 1


def test_failed_job_shows_its_error(signed_in):
    page = signed_in
    job_id = submit_job(page, "bad-cvae:v1", per_class=3, shard_rows=10)
    row = wait_status(page, job_id, "failed")
    assert "bad-cvae:v1" in row["error"] and "unavailable" in row["error"], row
    summary = page.text(f"#job-{job_id} .job-error-summary")  # the cause; the traceback is folded
    assert "ModelUnavailable: model bad-cvae:v1 is unavailable" in summary, summary
    assert not row["open"] and not row["cancel"]
    page.screenshot("08-job-failed")
