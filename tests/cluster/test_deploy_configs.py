"""Deployment configs checked offline, no Ray started: ``ray_cluster.yaml`` against Ray's own schema and
config preparation, ``cluster/kuberay/*.yaml`` against the shapes KubeRay expects and against
``cluster/serve_config.yaml``, the ``Dockerfile``, and every command these files (and README's "Run on a
cluster" section) tell people to run: modules exist, ``genaug`` subcommands and flags parse with the real
parsers, referenced files exist."""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
SERVE_CONFIG = REPO / "cluster" / "serve_config.yaml"
KUBERAY = REPO / "cluster" / "kuberay"
MANIFESTS = {"RayCluster": "raycluster.yaml", "RayService": "rayservice.yaml", "RayJob": "rayjob.yaml"}
DOCKERFILE = REPO / "Dockerfile"
IMAGE = "genaug:latest"  # the image every KubeRay pod runs (built from DOCKERFILE)
SHARED_HOME = "/mnt/genaug"  # GENAUG_HOME on every node: the shared volume
API_TOKEN_ENV = "GENAUG_API_TOKEN"
RAY_SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
PROGRAMS = ("ray", "serve", "kubectl", "genaug", "python", "docker", "export", "curl", "sed")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifest(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in load_docs(KUBERAY / MANIFESTS[kind]) if d["kind"] == kind]
    return doc


def cluster_spec(kind: str) -> dict[str, Any]:
    spec = manifest(kind)["spec"]
    return {
        "RayCluster": spec,
        "RayService": spec.get("rayClusterConfig"),
        "RayJob": spec.get("rayClusterSpec"),
    }[kind]


def readme_cluster_section() -> str | None:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Run on a cluster\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------------------
# Commands quoted in the deploy files


def commands_in(text: str, markdown: bool = False) -> list[str]:
    """Shell commands in a file: indented comment lines of YAML/Dockerfiles (``#   cmd``) starting with a
    known program, or every line of a markdown ```bash block; backslash continuations are joined."""
    text = text.replace("\\\n", " ")
    if markdown:
        blocks = re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", text, re.S | re.M)
        lines = [ln for b in blocks for ln in b.splitlines()]
    else:
        lines = [m.group(1) for m in re.finditer(r"^\s*#\s{2,}(\S.*)$", text, re.M)]
    out = []
    for ln in lines:
        ln = re.sub(r"\s+#\s.*$", "", ln).strip()  # trailing comment
        if ln and ln.split()[0] in PROGRAMS:
            out.append(ln)
    return out


def repo_path(raw: str) -> Path:
    """A path as a command names it, on the machine that runs it: ``~/genaug/X`` is the synced repo."""
    if raw.startswith("~/genaug/"):
        raw = raw[len("~/genaug/") :]
    return REPO / raw


def parse_flags(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """Parse with a real parser; the usage error when it rejects ``args``."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "rejected"
    return None


def train_parser() -> argparse.ArgumentParser:
    """``python -m jobs.train``'s parser, built as ``jobs.train.main`` builds it."""
    from jobs import train

    p = argparse.ArgumentParser(prog="python -m jobs.train")
    p.add_argument("--home", default=None)
    train.add_arguments(p)
    return p


def check_module(mod: str, args: list[str]) -> list[str]:
    spec = importlib.util.find_spec(mod) if re.fullmatch(r"[\w.]+", mod) else None
    if spec is None or spec.origin is None or REPO not in Path(spec.origin).parents:
        return [f"python -m {mod}: no such module in this project"]
    if not re.search(r"^if __name__ == .__main__.:", Path(spec.origin).read_text(), re.M):
        return [f"python -m {mod}: the module has no __main__ block"]
    if mod == "jobs.train" and (err := parse_flags(train_parser(), args)):
        return [f"python -m jobs.train {' '.join(args)}: {err}"]
    return []


def check_segment(tok: list[str], created: set[str]) -> list[str]:
    """Problems with one simple command (tokens, no shell operators)."""
    while tok and (tok[0] == "export" or re.fullmatch(r"\w+=.*", tok[0])):
        tok = tok[1:]
    if not tok:
        return []
    prog, rest = tok[0], tok[1:]
    problems: list[str] = []

    def need_file(raw: str) -> None:
        if raw not in created and not repo_path(raw).exists():
            problems.append(f"{' '.join(tok)}: {raw} does not exist in the repo")

    if prog == "python" and rest[:1] == ["-m"] and len(rest) >= 2:
        problems += check_module(rest[1], rest[2:])
    elif prog == "genaug":
        from cluster.cli import build_parser

        if err := parse_flags(build_parser(), rest):
            problems.append(f"genaug {' '.join(rest)}: {err}")
    elif prog == "ray" and rest[:2] == ["job", "submit"]:
        if "--" not in rest:
            problems.append(f"{' '.join(tok)}: no '--' before the entrypoint")
        else:
            opts, entry = rest[: rest.index("--")], rest[rest.index("--") + 1 :]
            if "--working-dir" in opts:
                need_file(opts[opts.index("--working-dir") + 1])
            problems += check_segment(entry, created)
    elif prog == "ray" and rest[:1] and rest[0] in ("up", "down", "exec", "attach", "dashboard"):
        i = next((i for i, a in enumerate(rest) if a.endswith((".yaml", ".yml"))), None)
        if i is None:
            problems.append(f"{' '.join(tok)}: no cluster config")
        else:
            need_file(rest[i])
            if rest[0] == "exec" and i + 1 < len(rest):
                problems += check_command(rest[i + 1])
    elif prog == "serve" and rest[:1] and rest[0] in ("deploy", "run"):
        configs = [a for a in rest[1:] if a.endswith((".yaml", ".yml"))]
        if not configs:
            problems.append(f"{' '.join(tok)}: no config file")
        for c in configs:
            need_file(c)
    elif prog == "kubectl" and rest[:1] == ["apply"] and "-f" in rest:
        need_file(rest[rest.index("-f") + 1])
    elif prog == "docker" and rest[:1] == ["build"]:
        need_file(rest[-1])
        if not (repo_path(rest[-1]) / "Dockerfile").is_file():
            problems.append(f"{' '.join(tok)}: no Dockerfile in {rest[-1]}")
    elif prog == "sed" and len(rest) >= 2:
        m = re.fullmatch(r"s(.)(.*?)\1(.*?)\1\w*", rest[0])
        need_file(rest[1])
        if m and repo_path(rest[1]).is_file() and not re.search(m.group(2), repo_path(rest[1]).read_text()):
            problems.append(f"{' '.join(tok)}: {m.group(2)!r} matches nothing in {rest[1]}")
    return problems


def check_command(cmd: str) -> list[str]:
    """Problems with a shell command line: it is split at ``&& || ; | & ( )``; ``> FILE`` creates FILE."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars="();<>|&")
    lex.whitespace_split, lex.commenters = True, ""
    tokens = list(lex)
    created = {tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in (">", ">>")}
    problems, seg = [], []
    for t in [*tokens, ";"]:
        if t and set(t) <= set("();<>|&"):
            if seg and seg[0] != "$":
                problems += check_segment(seg, created)
            seg = [] if t not in (">", ">>", "<") else ["$"]  # a redirect target is not a command
        else:
            seg.append(t)
    return problems


def config_commands(cfg: dict[str, Any]) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    return [c for k in keys for c in cfg.get(k) or []]


DEPLOY_FILES = [CLUSTER_YAML, DOCKERFILE, *(KUBERAY / f for f in MANIFESTS.values())]


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: p.name)
def test_commands_quoted_in_deploy_files_are_real(path: Path) -> None:
    cmds = commands_in(path.read_text())
    if path == CLUSTER_YAML:
        cmds += config_commands(yaml.safe_load(path.read_text()))
    if path.name == MANIFESTS["RayJob"]:
        cmds.append(manifest("RayJob")["spec"]["entrypoint"])
    assert len(cmds) >= 2, f"expected quoted commands in {path.name}, found {cmds}"
    assert [p for c in cmds for p in check_command(c)] == []


def test_commands_in_readme_cluster_section_are_real() -> None:
    section = readme_cluster_section()
    if section is None:
        pytest.skip("README.md has no '## Run on a cluster' section yet")
    cmds = commands_in(section, markdown=True)
    assert any(c.startswith("ray up ") for c in cmds) and any(c.startswith("kubectl apply") for c in cmds)
    assert [p for c in cmds for p in check_command(c)] == []


@pytest.mark.parametrize(
    "cmd",
    [
        "python -m jobs.nope --x 1",
        "python -m json.tool",  # exists, but not a module of this project
        "python -m jobs.train --model cgan --dataset digits",  # --name is required
        "python -m jobs.train --model cgan --dataset digits --name d --workers two",
        "genaug nope",
        "genaug train --model cgan --dataset digits --name d --bogus",
        "ray job submit --working-dir . -- python -m jobs.nope",
        "ray job submit --working-dir ./nope -- python -m jobs.train --model cgan --dataset digits --name d",
        "ray up nope_cluster.yaml",
        'ray exec ray_cluster.yaml "genaug nope"',
        "serve deploy ~/genaug/cluster/nope.yaml",
        "kubectl apply -f cluster/kuberay/nope.yaml",
        "sed 's#home: ./elsewhere#home: /x#' cluster/serve_config.yaml > out.yaml && serve deploy out.yaml",
        "docker build -t genaug:latest cluster",
    ],
)
def test_command_checker_catches_mistakes(cmd: str) -> None:
    assert check_command(cmd) != []


def test_command_checker_accepts_real_commands() -> None:
    ok = [
        "ray job submit --address http://h:8265 --working-dir . -- python -m jobs.train --model cvae "
        "--dataset digits --name d --workers 2 --gpu",
        "sed 's#home: ./genaug-data#home: /mnt/genaug#' ~/genaug/cluster/serve_config.yaml > ~/s.yaml "
        "&& serve deploy ~/s.yaml",
        "export A=1 B=$(echo x | tr x y); genaug models --home /tmp/h",
    ]
    assert [p for c in ok for p in check_command(c)] == []


# ---------------------------------------------------------------------------------------------------------
# ray_cluster.yaml


def cluster_config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_ray_cluster_yaml_matches_rays_schema() -> None:
    schema = json.loads(RAY_SCHEMA.read_text())
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/")
    jsonschema.Draft7Validator(schema).validate(cluster_config())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(max_workrs=4),  # misspelt top-level key
        lambda c: c["available_node_types"]["gpu"]["resources"].update(GPU="1"),
        lambda c: c["available_node_types"]["gpu"].pop("node_config"),
        lambda c: c.update(setup_commands="pip install -e ~/genaug"),  # a string, not a list
    ],
)
def test_ray_schema_rejects_broken_variants(mutate) -> None:
    cfg = cluster_config()
    mutate(cfg)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(json.loads(RAY_SCHEMA.read_text())).validate(cfg)


def test_ray_cluster_yaml_survives_rays_own_preparation() -> None:
    """``ray up`` merges the provider's defaults.yaml and validates before touching AWS: same code here."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = cluster_config()
    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    assert prepared["setup_commands"] == cfg["setup_commands"]  # no AWS default leaked in
    assert prepared["head_setup_commands"][0] == "pip install -e ~/genaug"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_ray_cluster_yaml_layout() -> None:
    cfg = cluster_config()
    assert cfg["provider"]["type"] == "aws"
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    assert "GPU" not in head["resources"] and head["resources"]["CPU"] >= 4
    (gpu,) = [n for name, n in nodes.items() if name != cfg["head_node_type"]]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0
    assert 1 <= gpu["max_workers"] <= cfg["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g4dn.", "g5.", "g6.", "p3.", "p4d.", "p5."))

    # The synced project is what setup_commands installs; `ray up` runs from the repo root.
    assert cfg["file_mounts"]["~/genaug"] == "."
    assert (REPO / "pyproject.toml").is_file()
    assert "pip install -e ~/genaug" in cfg["setup_commands"]
    assert ".gitignore" in cfg["rsync_filter"]  # .venv and genaug-data stay home

    head_start = cfg["head_start_ray_commands"][-1]
    for flag in (
        "--head",
        "--port=6379",
        "--dashboard-host=0.0.0.0",
        "--autoscaling-config=~/ray_bootstrap_config.yaml",
    ):
        assert flag in head_start.split()
    assert "--address=$RAY_HEAD_IP:6379" in cfg["worker_start_ray_commands"][-1].split()


def test_ray_cluster_nodes_share_storage_and_auth() -> None:
    cfg = cluster_config()
    opts = cfg["docker"]["run_options"]
    assert f"-e GENAUG_HOME={SHARED_HOME}" in opts and f"-v {SHARED_HOME}:{SHARED_HOME}" in opts
    mounts = [
        c for c in cfg["initialization_commands"] if re.search(rf"\bmount -t nfs4\b.*\s{SHARED_HOME}$", c)
    ]
    assert len(mounts) == 1  # the host mounts the shared filesystem where the container expects it
    assert "-e RAY_AUTH_MODE=token" in opts and cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    image = cfg["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu", image


# ---------------------------------------------------------------------------------------------------------
# KubeRay


def cluster_spec_problems(spec: dict[str, Any], api_token: bool) -> list[str]:
    """What is wrong with a RayCluster spec for genaug (empty: nothing)."""
    p: list[str] = []
    if spec.get("rayVersion") != ray.__version__:
        p.append(f"rayVersion {spec.get('rayVersion')!r} != installed ray {ray.__version__}")
    if spec.get("authOptions", {}).get("mode") != "token":
        p.append("authOptions.mode is not token")
    if spec.get("enableInTreeAutoscaling") is not True:
        p.append("autoscaling is off: the GPU group could never leave zero")
    head = spec["headGroupSpec"]
    if head.get("rayStartParams", {}).get("dashboard-host") != "0.0.0.0":
        p.append("head dashboard-host is not 0.0.0.0")
    groups = [("head", head["template"])] + [
        (g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]
    ]
    for name, template in groups:
        pod = template["spec"]
        c = pod["containers"][0]
        if c.get("image") != IMAGE:
            p.append(f"{name}: image {c.get('image')!r} != {IMAGE}")
        env = {e["name"]: e for e in c.get("env", [])}
        if env.get("GENAUG_HOME", {}).get("value") != SHARED_HOME:
            p.append(f"{name}: GENAUG_HOME is not {SHARED_HOME}")
        if (API_TOKEN_ENV in env) != api_token:
            p.append(f"{name}: {API_TOKEN_ENV} {'missing' if api_token else 'not needed'}")
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        claims = {
            v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod.get("volumes", [])
        }
        if not any(path == SHARED_HOME and claims.get(vol) == "genaug-home" for vol, path in mounts.items()):
            p.append(f"{name}: {SHARED_HOME} is not the genaug-home volume")
        gpus = str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", "0"))
        if (name == "head") != (gpus == "0"):
            p.append(f"{name}: nvidia.com/gpu limit {gpus}")
    gpu_groups = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in str(g["template"])]
    if not any(g.get("minReplicas") == 0 and g.get("maxReplicas", 0) >= 1 for g in gpu_groups):
        p.append("no GPU worker group scaling from 0")
    for g in gpu_groups:
        if not g.get("minReplicas", 0) <= g.get("replicas", 0) <= g.get("maxReplicas", 0):
            p.append(f"{g['groupName']}: replicas outside [minReplicas, maxReplicas]")
    return p


@pytest.mark.parametrize("kind", list(MANIFESTS))
def test_kuberay_manifest_structure(kind: str) -> None:
    docs = load_docs(KUBERAY / MANIFESTS[kind])
    assert sorted(d["kind"] for d in docs) == sorted(["PersistentVolumeClaim", kind])
    for d in docs:
        assert set(d) == {"apiVersion", "kind", "metadata", "spec"}, d["kind"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
    assert manifest(kind)["apiVersion"] == "ray.io/v1"
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["apiVersion"] == "v1" and pvc["metadata"]["name"] == "genaug-home"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # several pods write the same storage root
    assert pvc == load_docs(KUBERAY / MANIFESTS["RayCluster"])[0]  # one definition, applied by any file


@pytest.mark.parametrize("kind", list(MANIFESTS))
def test_kuberay_cluster_spec(kind: str) -> None:
    assert cluster_spec_problems(cluster_spec(kind), api_token=kind != "RayJob") == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"].pop(
            "nvidia.com/gpu"
        ),
        lambda s: s["workerGroupSpecs"][0].update(minReplicas=1),
        lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0].update(image="genaug:old"),
        lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0].pop("volumeMounts"),
        lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].pop(),
        lambda s: s.update(rayVersion="2.9.0"),
        lambda s: s.pop("authOptions"),
        lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
            {"nvidia.com/gpu": 1}
        ),
    ],
)
def test_cluster_spec_check_catches_mistakes(mutate) -> None:
    spec = copy.deepcopy(cluster_spec("RayCluster"))
    mutate(spec)
    assert cluster_spec_problems(spec, api_token=True) != []


def test_rayservice_runs_the_repos_serve_config() -> None:
    repo_cfg = yaml.safe_load(SERVE_CONFIG.read_text())
    svc_cfg = yaml.safe_load(manifest("RayService")["spec"]["serveConfigV2"])
    assert isinstance(svc_cfg, dict)
    assert svc_cfg["http_options"]["port"] == repo_cfg["http_options"]["port"] == 8000
    assert svc_cfg["http_options"]["host"] == "0.0.0.0"  # reachable through the serve Service
    (repo_app,) = repo_cfg["applications"]
    (svc_app,) = svc_cfg["applications"]
    for key in ("name", "import_path", "route_prefix"):
        assert svc_app[key] == repo_app[key], key
    assert svc_app["args"] == {**repo_app["args"], "home": SHARED_HOME}

    # The import path names a top-level function of a module in this project (not imported: no Ray/Serve).
    module, _, attr = svc_app["import_path"].partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and REPO in Path(spec.origin).parents
    tree = ast.parse(Path(spec.origin).read_text())
    assert attr in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_rayservice_cluster_is_the_raycluster() -> None:
    assert cluster_spec("RayService") == cluster_spec("RayCluster")
    ports = {
        p["name"]: p["containerPort"]
        for p in cluster_spec("RayService")["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert ports["serve"] == 8000 and ports["dashboard"] == 8265


def test_rayjob_entrypoint_parses_with_the_real_parser() -> None:
    from jobs.data.spec import parse_spec
    from jobs.store.location import validate_name
    from models.checkpoint import MODEL_TYPES

    job = manifest("RayJob")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.train"]
    assert check_module(argv[2], argv[3:]) == []
    args = train_parser().parse_args(argv[3:])
    assert (args.model, args.dataset, args.name, args.workers) == ("cgan", "digits", "digits-cgan", 2)
    assert args.model in MODEL_TYPES and parse_spec(args.dataset) == ("digits", None)
    validate_name(args.name)

    assert job["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert env["env_vars"]["GENAUG_HOME"] == SHARED_HOME


def test_rayjob_cluster_is_the_raycluster_without_the_api_token() -> None:
    expected = copy.deepcopy(cluster_spec("RayCluster"))
    for g in [expected["headGroupSpec"], *expected["workerGroupSpecs"]]:
        c = g["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != API_TOKEN_ENV]
    assert cluster_spec("RayJob") == expected


# ---------------------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_builds_the_project_on_the_pinned_ray() -> None:
    lines = [
        ln.strip() for ln in DOCKERFILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == f"FROM rayproject/ray:{ray.__version__}-py311-gpu"
    assert lines[0].split()[1] == cluster_config()["docker"]["image"]  # the same base as ray_cluster.yaml
    copied = set()
    for ln in lines:
        if ln.startswith("COPY"):
            srcs = [a for a in ln.split()[1:-1] if not a.startswith("--")]
            copied.update(srcs)
            assert all((REPO / s).exists() for s in srcs), ln
    include = re.search(r"include = \[(.*?)\]", (REPO / "pyproject.toml").read_text()).group(1)
    packages = {p.strip(' "*') for p in include.split(",")}
    assert packages | {"pyproject.toml", "README.md"} <= copied
    assert "RUN pip install --no-cache-dir -e ." in lines
    assert f"ENV GENAUG_HOME={SHARED_HOME}" in lines
