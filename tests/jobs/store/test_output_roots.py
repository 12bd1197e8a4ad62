"""Output roots (``GENAUG_OUTPUT_ROOTS``): where an output may go besides the storage root, each root
confining its paths as the storage root does (property-based, against independent oracles)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.generate import validate_request
from jobs.store.location import MAX_KEY_BYTES, confine_output, output_roots
from tests.conftest import register_untrained
from tests.jobs.store.test_location import FUZZ, TOKENS, inside, path_texts


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A storage root, an output root (with links out of it and into the storage root), and an outside."""
    base = tmp_path_factory.mktemp("roots").resolve()
    home, team, outside = base / "home", base / "team", base / "outside"
    for folder in (home / "sub", team / "sub", outside):
        folder.mkdir(parents=True)
    (team / "out").symlink_to(outside)
    (team / "up").symlink_to("..")
    (team / "home").symlink_to(home)  # lands in the storage root: allowed (it is under a root)
    return home, team, outside


def test_output_roots_parse_the_variable(roots, fake_env, monkeypatch):
    home, team, _ = roots
    monkeypatch.delenv("GENAUG_OUTPUT_ROOTS", raising=False)
    assert output_roots() == ()
    monkeypatch.setenv("GENAUG_OUTPUT_ROOTS", f" {team} ,, s3://team-bucket/datasets ,gs://b")
    assert [r.uri for r in output_roots()] == [str(team), "s3://team-bucket/datasets", "gs://b"]
    with pytest.raises(ValueError, match=r"GENAUG_OUTPUT_ROOTS entry 'ftp://x/y' invalid.*s3://BUCKET"):
        output_roots("s3://a,ftp://x/y")


def test_confine_output_examples(roots, monkeypatch):
    home, team, outside = roots
    monkeypatch.setenv("GENAUG_OUTPUT_ROOTS", str(team))
    assert confine_output(home, "x").path == str(home / "x")
    assert confine_output(home, f"{team}/sub/x").path == str(team / "sub" / "x")
    assert confine_output(home, f"file://{team}/x").path == str(team / "x")
    assert confine_output(home, f"{team}/home/x").path == str(home / "x")
    for bad in [f"{team}/../outside/x", f"{team}/out/x", f"{team}/up/outside", str(outside), "../team/x"]:
        with pytest.raises(ValueError, match=f"neither the storage root.*valid: .*{home}, {team}"):
            confine_output(home, bad)
    with pytest.raises(ValueError, match=f"escapes the storage root {home}"):  # no roots: as before
        confine_output(home, f"{team}/x", roots=())


@FUZZ
@given(data=st.data())
def test_confine_output_accepts_exactly_paths_under_a_root(roots, data):
    home, team, outside = roots
    prefixes = [str(home) + "/", str(team) + "/", str(outside) + "/", "/", f"file://{team}/"]
    candidate = data.draw(path_texts(prefixes))
    raw = candidate[len("file://") :] if candidate.startswith("file://") else candidate
    try:
        if "://" in raw:
            oracle = None
        elif raw.startswith("/"):  # absolute: under the storage root or the output root
            real = Path(os.path.realpath(raw))
            oracle = real if inside(real, home) or inside(real, team) else None
        else:  # relative names are relative to the storage root only
            real = Path(os.path.realpath(home / raw))
            oracle = real if inside(real, home) else None
    except ValueError:  # NUL byte, unencodable surrogate
        oracle = None
    try:
        got = Path(confine_output(home, candidate, roots=[str(team)]).path)
    except ValueError:
        assert oracle is None, candidate
        return
    assert got == oracle, candidate


BUCKET_TEXT = st.lists(st.sampled_from([*TOKENS, "team", "data", "other", "b", "c"]), max_size=8).map("".join)


@FUZZ
@given(
    st.sampled_from(["s3://b/team/", "s3://b/", "s3://b/teamx/", "s3://c/", "s3://d/", "gs://c/", ""]),
    BUCKET_TEXT,
)
def test_uri_output_roots_keep_bucket_and_prefix(fake_env, prefix, body):
    """Roots s3://b/team and s3://c under a local storage root: a URI is taken exactly when its key, with
    ``..`` resolved, lies under one of them by whole segments."""
    home = fake_env
    candidate = prefix + body
    oracle = None
    if candidate.startswith("s3://") and not any(ord(c) < 32 for c in candidate):
        key = posixpath.normpath("/" + candidate[len("s3://") :]).lstrip("/")
        for root in ("b/team", "c"):
            if (key == root or key.startswith(root + "/")) and len(
                key.partition("/")[2].encode()
            ) <= MAX_KEY_BYTES:
                oracle = f"s3://{key}"
    try:
        got = confine_output(home, candidate, roots=["s3://b/team", "s3://c"])
    except ValueError:
        assert oracle is None, candidate
        return
    if got.is_local:  # a relative name or a local path under the storage root
        assert oracle is None and inside(Path(got.path), home), candidate
    else:
        assert got.uri == oracle, candidate


@pytest.fixture(scope="module")
def fake_env(tmp_path_factory):
    """A local storage root and AWS variables for a store that is never contacted."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    mp.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    yield tmp_path_factory.mktemp("uri-home").resolve()
    mp.undo()


def test_validate_request_writes_under_an_output_root_only_when_allowed(tmp_path, monkeypatch):
    home, team = tmp_path / "home", tmp_path / "team"
    home.mkdir()
    team.mkdir()
    register_untrained(home, "tiny-cgan")
    req = {"model": "tiny-cgan", "per_class": 1, "out": f"{team}/ds"}
    monkeypatch.delenv("GENAUG_OUTPUT_ROOTS", raising=False)
    with pytest.raises(ValueError, match=f"escapes the storage root {home}"):
        validate_request(req, home, job_id="j-1")
    monkeypatch.setenv("GENAUG_OUTPUT_ROOTS", str(team))
    assert validate_request(req, home, job_id="j-1").output == str(team / "ds")
    with pytest.raises(
        ValueError, match="escapes the storage root"
    ):  # the queue owner passes them explicitly
        validate_request(req, home, job_id="j-1", output_roots=())
    with pytest.raises(ValueError, match=f"neither the storage root nor an output root.*{team}"):
        validate_request({**req, "out": f"{team}/../x"}, home, job_id="j-1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "team"] and not any(team.iterdir())
