"""Hostile input for the storage root's gatekeepers: ``confine``, ``validate_name``, ``parse_ref``,
``parse_counts`` and ``validate_request`` (property-based, against independent oracles)."""

from __future__ import annotations

import math
import os
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.generate import REQUEST_FIELDS, JobSpec, parse_counts, validate_request
from jobs.store.location import confine, location, resolve_home, validate_name
from jobs.store.registry import parse_ref
from tests.conftest import register_untrained

FUZZ = settings(max_examples=300, deadline=None, database=None)
CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Pieces that path attacks are made of; joined in random order with random text in between.
TOKENS = [
    "..",
    ".",
    "/",
    "//",
    "\\",
    "\x00",
    "~",
    "file://",
    "s3://",
    "http://",
    "é",
    "ünï",
    "sub",
    "in",
    "out",
    "abs-out",
    "up",
    "dangling",
    "afile",
    "models",
    "datasets",
    "x",
    " ",
    "%2e%2e",
    "\n",
]


def path_texts(prefixes: list[str]) -> st.SearchStrategy[str]:
    """Relative and absolute candidates from attack tokens; at most 60 characters (no over-long names)."""
    body = st.lists(st.sampled_from(TOKENS) | st.text(max_size=6), max_size=8).map("".join)
    return st.builds(lambda p, b: (p + b)[:60], st.sampled_from(["", *prefixes]), body) | st.text(max_size=60)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, Path]:
    """A storage root next to an outside folder, with links that stay in and links that point out."""
    base = tmp_path_factory.mktemp("confine").resolve()
    root, outside = base / "root", base / "outside"
    (root / "sub" / "deep").mkdir(parents=True)
    outside.mkdir()
    (root / "afile").write_text("x")
    (root / "in").symlink_to(root / "sub")  # absolute link, stays inside
    (root / "up").symlink_to("..")  # relative link to the root's parent
    (root / "out").symlink_to(outside)
    (root / "abs-out").symlink_to("/etc")
    (root / "sub" / "dangling").symlink_to(outside / "missing")
    return root, outside


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


# ----------------------------------------------------------------------------- confine


def test_confine_examples(tree):
    root, outside = tree
    assert confine(root, "sub/deep/x") == root / "sub" / "deep" / "x"
    assert confine(root, "in/x") == root / "sub" / "x"  # symlink resolved, still inside
    assert confine(root, f"file://{root}/a") == root / "a"
    assert confine(root, f"../{root.name}/a") == root / "a"
    for bad in [
        "..",
        "../x",
        "/etc/passwd",
        "out/x",
        "up/outside",
        "abs-out",
        "sub/dangling",
        "s3://b/k",
        f"file://{outside}",
        "a\x00b",
        str(outside),
        "sub/../../x",
    ]:
        with pytest.raises(ValueError):
            confine(root, bad)


@FUZZ
@given(data=st.data())
def test_confine_accepts_exactly_the_paths_that_resolve_inside_the_root(tree, data):
    root, outside = tree
    candidate = data.draw(path_texts([str(root) + "/", str(outside) + "/", "/", "/etc/", "file:///"]))
    raw = candidate[len("file://") :] if candidate.startswith("file://") else candidate
    try:
        oracle = None if "://" in raw else Path(os.path.realpath(root / raw))
    except ValueError:  # NUL byte, unencodable surrogate
        oracle = None
    try:
        got = confine(root, candidate)
    except ValueError:
        assert oracle is None or not inside(oracle, root), candidate
        return
    assert got == oracle, candidate
    assert got.is_absolute() and inside(got, root)
    assert Path(os.path.realpath(got)) == got  # no symlink left to follow out


def test_confine_symlink_loop_is_value_error(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(ValueError):
        confine(tmp_path, "loop/x")


# ----------------------------------------------------------------------------- names and refs

NAME_CHARS = set(string.ascii_letters + string.digits + "._-")


def documented_name(x: object) -> bool:
    """The documented rule, without a regex: 1-64 of A-Z a-z 0-9 . _ -, starting alphanumeric, no '..'."""
    return (
        isinstance(x, str)
        and 1 <= len(x) <= 64
        and set(x) <= NAME_CHARS
        and x[0] in string.ascii_letters + string.digits
        and ".." not in x
    )


names = st.text(
    alphabet=st.sampled_from(sorted(NAME_CHARS) + ["/", "\\", "\x00", "é", ":", " "]), max_size=70
)
any_text = (
    names
    | st.text(max_size=70)
    | st.sampled_from(
        ["..", ".", "a/..", "..a", "a..b", "-a", "a" * 64, "a" * 65, "/etc", "C:\\x", "ok.name_1-2"]
    )
)


@FUZZ
@given(any_text)
def test_validate_name_accepts_exactly_the_documented_charset(x):
    if x.endswith("\n") and documented_name(x[:-1]):
        return  # slips through `$`: see test_name_with_trailing_newline_rejected
    if documented_name(x):
        assert validate_name(x) == x
    else:
        with pytest.raises(ValueError, match="invalid name"):
            validate_name(x)


@pytest.mark.parametrize("x", [None, 3, b"abc", ["a"], {"a": 1}, 1.5])
def test_validate_name_rejects_non_strings(x):
    with pytest.raises(ValueError):
        validate_name(x)


def test_name_with_trailing_newline_rejected():
    with pytest.raises(ValueError):
        validate_name("abc\n")


refs = st.builds(
    lambda n, sep, v: n + sep + v,
    any_text,
    st.sampled_from(["", ":", "::", ":v", ":V"]),
    st.text(alphabet="0123456789v-+ ", max_size=6) | st.integers(-5, 10**30).map(str),
)


@FUZZ
@given(refs | st.none() | st.integers() | st.binary(max_size=8))
def test_parse_ref_returns_a_valid_name_or_raises_value_error(ref):
    try:
        name, version = parse_ref(ref)
    except ValueError:
        return
    assert isinstance(ref, str) and documented_name(name.removesuffix("\n"))
    assert ref.startswith(name)
    assert version is None or (isinstance(version, int) and version >= 1)


def test_parse_ref_examples():
    assert parse_ref("digits-cgan") == ("digits-cgan", None)
    assert parse_ref("digits-cgan:v12") == ("digits-cgan", 12)
    assert parse_ref("digits-cgan:3") == ("digits-cgan", 3)
    for bad in ["", ":v1", "../x:v1", "a:v0", "a:-1", "a:v1:v2", "a/b", "a:latest"]:
        with pytest.raises(ValueError):
            parse_ref(bad)


# ----------------------------------------------------------------------------- counts

finite = st.floats(allow_nan=True, allow_infinity=False)
json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | finite | st.text(max_size=12)
json_like = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=8,
)
class_keys = st.sampled_from(
    [*CLASSES, *map(str, range(12)), "-1", " 3", "3.0", "03", "٣", "", "ten"]
) | st.text(max_size=5)
count_values = st.integers(-3, 5000) | json_leaf | st.sampled_from(["7", "7.5", 7.0, 7.5, True, 10**400])


@FUZZ
@given(
    per_class=st.none() | count_values | json_like,
    counts=st.none()
    | st.dictionaries(class_keys | st.integers(-2, 12), count_values | json_like, max_size=5)
    | st.text(max_size=20)
    | json_like,
)
def test_parse_counts_returns_exact_counts_or_raises_value_error(per_class, counts):
    try:
        got = parse_counts(per_class, counts, CLASSES)
    except ValueError:
        return
    assert isinstance(got, tuple) and len(got) == len(CLASSES)
    assert all(type(n) is int and n >= 0 for n in got) and sum(got) >= 1
    if per_class is not None:
        assert counts is None and got == (int(per_class),) * len(CLASSES)
    elif isinstance(counts, dict):
        assert sum(1 for n in got if n) == len(counts)  # every key named a distinct class


def test_parse_counts_examples():
    assert parse_counts(3, None, CLASSES) == (3,) * 10
    assert parse_counts(None, {"0": 5, "seven": 2, 9: "4"}, CLASSES) == (5, 0, 0, 0, 0, 0, 0, 2, 0, 4)
    assert parse_counts(None, "1=2,nine=3", CLASSES) == (0, 2, 0, 0, 0, 0, 0, 0, 0, 3)
    for per_class, counts in [
        (0, None),
        (-1, None),
        (True, None),
        (2.5, None),
        (None, {}),
        (3, {"0": 1}),
        (None, {"0": 1, "zero": 2}),
        (None, {"10": 1}),
        (None, {"0": "x"}),
    ]:
        with pytest.raises(ValueError):
            parse_counts(per_class, counts, CLASSES)


@pytest.mark.parametrize("per_class, counts", [(math.inf, None), (None, {"0": -math.inf})])
def test_parse_counts_infinity_is_value_error(per_class, counts):
    with pytest.raises(ValueError):
        parse_counts(per_class, counts, CLASSES)


# ----------------------------------------------------------------------------- validate_request


@pytest.fixture(scope="module")
def req_home(tmp_path_factory) -> tuple[Path, Path]:
    """A storage root with one registered model, a non-empty dataset, a file, and a link out of the root."""
    base = tmp_path_factory.mktemp("requests").resolve()
    home, outside = base / "home", base / "outside"
    home.mkdir()
    outside.mkdir()
    register_untrained(home, "tiny-cgan")
    (home / "datasets" / "taken").mkdir(parents=True)
    (home / "datasets" / "taken" / "x.parquet").write_bytes(b"PAR1")
    (home / "datasets" / "empty").mkdir()
    (home / "afile").write_text("x")
    (home / "out").symlink_to(outside)
    return home, outside


def snapshot(*folders: Path) -> list[tuple]:
    """Every entry under ``folders`` (links not followed) with its type, size and mtime."""
    out = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                st_ = os.lstat(os.path.join(dirpath, name))
                out.append((os.path.join(dirpath, name), st_.st_mode, st_.st_size, st_.st_mtime_ns))
    return sorted(out)


KEYS = [
    *sorted(REQUEST_FIELDS),
    "colour",
    "Model",
]
small_ints = st.integers(-3, 20) | st.sampled_from([0, 2**63 - 1, 2**63, -(2**63), 10**7, 10**30])
request_values = {
    "model": st.sampled_from(["tiny-cgan", "tiny-cgan:v1", "tiny-cgan:v2", "nope", "../tiny-cgan", ""])
    | json_like,
    "per_class": small_ints | json_like,
    "counts": st.dictionaries(class_keys, st.integers(-2, 30) | json_leaf, max_size=4) | json_like,
    "shard_rows": small_ints | json_like,
    "seed": small_ints | json_like,
    "temperature": st.floats(-1, 6) | json_like,
    "priority": st.integers(-1100, 1100) | json_like,
    "filter": st.sampled_from([None, "label", "LABEL"]) | json_like,
}


@st.composite
def requests(draw, outside: Path) -> dict:
    """A valid request with some fields replaced or added (half the time), or random fields only."""
    keys = draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=6))
    req = {"model": "tiny-cgan", "per_class": 1} if draw(st.booleans()) else {}
    if req and "counts" in keys:
        del req["per_class"]
    for key in keys:
        if key in ("out", "output"):
            prefixes = [str(outside) + "/", "datasets/", "file://", "/"]
            req[key] = draw(path_texts(prefixes) | st.sampled_from(["datasets/taken", "afile", "out/x", "."]))
        else:
            req[key] = draw(request_values.get(key, json_like))
    return req


@FUZZ
@given(data=st.data())
def test_validate_request_raises_value_error_or_confines_and_never_writes(req_home, data):
    home, outside = req_home
    req = data.draw(requests(outside))
    before = snapshot(home.parent)
    try:
        spec = validate_request(req, home, job_id="j-000000000001")
    except ValueError:
        spec = None
    assert snapshot(home.parent) == before, req
    if spec is not None:
        out = Path(spec.output)
        assert isinstance(spec, JobSpec) and inside(out, home) and Path(os.path.realpath(out)) == out
        assert not out.exists() or (out.is_dir() and not any(out.iterdir()))
        assert spec.model == "tiny-cgan:v1" and 1 <= spec.total_rows <= 10_000_000
        assert 0 <= spec.seed < 2**63 and 0.0 <= spec.temperature <= 5.0


def test_validate_request_examples(req_home):
    home, outside = req_home
    spec = validate_request(
        {"model": "tiny-cgan", "counts": {"3": 4}, "out": "datasets/empty"}, home, job_id="j-1"
    )
    assert spec.output == str(home / "datasets" / "empty") and spec.counts == (0, 0, 0, 4, 0, 0, 0, 0, 0, 0)
    assert validate_request({"model": "tiny-cgan", "per_class": 1}, home, job_id="j-2").output == str(
        home / "datasets" / "j-2"
    )
    for out, needle in [
        ("out/x", "escapes"),
        ("datasets/taken", "not empty"),
        ("afile", "already exists"),
        (str(outside), "escapes"),
        ("s3://bucket/x", "not a local path"),
    ]:
        with pytest.raises(ValueError, match=needle):
            validate_request({"model": "tiny-cgan", "per_class": 1, "out": out}, home, job_id="j-3")
    assert list(outside.iterdir()) == []


def test_validate_request_over_long_output_name_is_value_error(req_home):
    home, _ = req_home
    with pytest.raises(ValueError):
        validate_request({"model": "tiny-cgan", "per_class": 1, "out": "a" * 300}, home, job_id="j-4")


def test_validate_request_infinite_shard_rows_is_value_error(req_home):
    home, _ = req_home
    with pytest.raises(ValueError):
        validate_request({"model": "tiny-cgan", "per_class": 1, "shard_rows": math.inf}, home, job_id="j-5")


# ----------------------------------------------------------------------------- storage URIs


@pytest.fixture
def fake_s3_env(monkeypatch, tmp_path):
    """AWS variables for a store that is never contacted (building a filesystem makes no request)."""
    from tests.conftest import AWS_VARS

    for key in AWS_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("GENAUG_STATE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


def test_location_parses_local_file_s3_and_gs_forms(fake_s3_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert location("rel/x").uri == str(tmp_path / "rel" / "x") and location("rel").is_local
    assert location(f"file://{tmp_path}/a").uri == str(tmp_path / "a")
    assert location(tmp_path / "p").local_path == tmp_path / "p"
    s3 = location("s3://bucket/some//prefix/")
    assert (s3.scheme, s3.path, s3.uri) == ("s3", "bucket/some/prefix", "s3://bucket/some/prefix")
    assert s3.fs.type_name == "s3" and not s3.is_local and s3.name == "prefix"
    assert (s3 / "models").join("x", "v1/model.json").uri == "s3://bucket/some/prefix/models/x/v1/model.json"
    assert location("S3://bucket").uri == "s3://bucket"
    gs = location("gs://bkt/p")
    assert (gs.scheme, gs.path, gs.fs.type_name) == ("gs", "bkt/p", "gcs")
    for bad in ["ftp://h/x", "http://h/x", "s3://", "s3:///key", "s3://b/k?endpoint_override=x", "gs://"]:
        with pytest.raises(ValueError, match="s3://BUCKET"):
            location(bad)
    with pytest.raises(ValueError, match="not on a local disk"):
        _ = s3.local_path


def test_s3_options_follow_the_standard_aws_variables(fake_s3_env, monkeypatch):
    from jobs.store.location import s3_options

    opts = s3_options("bucket")
    assert opts["scheme"] == "http" and opts["endpoint_override"] == "127.0.0.1:9"
    assert opts["region"] == "eu-west-3" and opts["allow_bucket_creation"] is False
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    assert "secret-example" not in repr(s3_options("bucket"))  # the SDK reads credentials itself
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://minio.internal:9000")  # the S3-specific one wins
    monkeypatch.setenv("AWS_REGION", "us-west-2")  # AWS_REGION wins over AWS_DEFAULT_REGION
    opts = s3_options("bucket")
    assert (opts["scheme"], opts["endpoint_override"], opts["region"]) == (
        "https",
        "minio.internal:9000",
        "us-west-2",
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "ftp://x")
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL"):
        s3_options("bucket")


def test_s3_confine_keeps_outputs_under_the_root_prefix(fake_s3_env):
    root = resolve_home("s3://bucket/root")
    assert confine(root, "datasets/j-1").uri == "s3://bucket/root/datasets/j-1"
    assert confine("s3://bucket/root", "s3://bucket/root/x/y").uri == "s3://bucket/root/x/y"
    assert root.confine("a/./b/../c").uri == "s3://bucket/root/a/c"  # '..' resolved lexically
    assert root.confine(".") == root
    for bad in [
        "s3://bucket/other/x",  # same bucket, outside the prefix
        "s3://bucket/rootx/y",  # a sibling prefix that merely starts with the root's name
        "s3://other-bucket/root/x",
        "s3://bucket/root/../x",
        "../x",
        "a/../../x",
        "/tmp/x",  # a local path is never under an object-store root
        "~/x",
        "file:///tmp/x",
        "gs://bucket/root/x",
    ]:
        with pytest.raises(ValueError, match=r"escapes the storage root s3://bucket/root"):
            confine(root, bad)
    with pytest.raises(ValueError, match="control characters"):
        root.confine("a\nb")
    with pytest.raises(ValueError, match="too long"):
        root.confine("k" * 1100)


def test_join_refuses_anything_but_relative_names(fake_s3_env, tmp_path):
    for base in (location(tmp_path), location("s3://bucket/root")):
        for bad in ["", "..", "a/../b", "/abs", "a//b", "./a", "s3://b/k", "a\x00b"]:
            with pytest.raises(ValueError, match="path part"):
                base.join(bad)


def test_location_pickles_as_its_uri_without_credentials(fake_s3_env, monkeypatch):
    import pickle

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-example")
    loc = location("s3://bucket/root/x")
    data = pickle.dumps(loc)
    assert b"secret-example" not in data and pickle.loads(data) == loc
    assert b"secret-example" not in pickle.dumps(loc.fs)  # e.g. Ray Train's storage_filesystem


def test_state_dir_is_local_for_every_root(fake_s3_env, tmp_path, monkeypatch):
    from jobs.store.location import cache_dir, state_dir

    assert state_dir(tmp_path) == tmp_path.resolve() / "state"  # a local root keeps its queue inside
    assert cache_dir(tmp_path) == tmp_path.resolve() / "cache"
    a, b = state_dir("s3://bucket/a"), state_dir("s3://bucket/b")
    assert a != b and a.is_relative_to(tmp_path / ".genaug") and a.name == "state"  # HOME is tmp_path
    monkeypatch.setenv("GENAUG_STATE_DIR", str(tmp_path / "st"))
    assert state_dir("s3://bucket/a") == tmp_path / "st" / "state"
    assert state_dir(tmp_path / "home") == tmp_path / "home" / "state"  # only URI roots move


def test_resolve_home_accepts_uris_and_names_valid_forms(fake_s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("GENAUG_HOME", "s3://bucket/from-env")
    assert resolve_home().uri == "s3://bucket/from-env"
    assert resolve_home(str(tmp_path)).uri == str(tmp_path.resolve())
    with pytest.raises(ValueError, match="valid: a local path, file://PATH, s3://BUCKET"):
        resolve_home("hdfs://nn/x")


def test_registry_listing_cache_sees_every_new_version(tmp_path, monkeypatch):
    """``Registry.versions`` caches a folder's listing by its stat; a published version always shows."""
    from jobs.store import registry

    monkeypatch.setattr(registry, "_SETTLED_NS", 0)  # cache every listing at once (the worst case)
    reg = registry.Registry(tmp_path)
    assert reg.versions("m") == []
    for k in range(1, 4):
        assert reg.register("m", lambda tmp: {}).version == k
        assert reg.versions("m") == list(range(1, k + 1))
        assert reg.resolve("m").version == k
    monkeypatch.setattr(registry, "_SETTLED_NS", 10**12)  # a folder changed just now is not cached
    registry._VERSIONS_CACHE.clear()
    assert reg.versions("m") == [1, 2, 3]
    assert str(tmp_path / "models" / "m") not in registry._VERSIONS_CACHE


def test_atomic_writes_take_the_umask_mode_not_mkstemps_0600(tmp_path):
    """Committed files (manifests, model.json, reports) are readable by other users of a shared root."""
    from jobs.store.atomic import FILE_MODE
    from jobs.store.location import write_bytes_atomic, write_json_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    assert FILE_MODE == 0o666 & ~mask
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    write_json_atomic(tmp_path / "m.json", {"k": 1})
    for name in ("a.bin", "m.json"):
        mode = (tmp_path / name).stat().st_mode & 0o777
        assert mode == FILE_MODE, (name, oct(mode))
        if not mask & 0o044:  # the usual umask 022: group and others can read
            assert mode & 0o044 == 0o044, (name, oct(mode))
