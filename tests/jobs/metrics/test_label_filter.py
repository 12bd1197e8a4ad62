"""jobs.metrics.label_filter: exact counts, every kept row classified as asked, deterministic per
seed, acceptance statistics in the manifest, a bound on tries, and its wiring into validate_request,
run_shard and the standalone Ray job."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from jobs.data.spec import load_dataset
from jobs.generate import ShardTask, main, run_shard, validate_request
from jobs.metrics import classifier, label_filter
from jobs.store.location import write_json_atomic
from jobs.store.manifest import finalize_dataset, verify_dataset
from jobs.store.registry import Registry, register_model
from models.checkpoint import build_model, load_checkpoint


class BrightnessClassifier(nn.Module):
    """Class by mean brightness (3: <= 0.0075, 4: <= 0.0124, 5: above): cheap, deterministic, and on
    the untrained tiny CVAE it accepts about 25 / 25 / 50 % of the samples; classes 0-2 and 6-9 never."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.head = nn.Linear(1, num_classes)  # only for out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)  # (B,)
        cls = torch.where(m <= 0.0075, 3, torch.where(m <= 0.0124, 4, 5))
        return nn.functional.one_hot(cls, self.num_classes).float()  # (B, K) "logits"


def tiny_model(kind: str = "cvae", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(kind, {"image_size": 8, "channels": 1, "num_classes": 10}).eval()


def classify_u8(clf: nn.Module, u8: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    return clf(x).argmax(1).numpy()


def test_filtered_samples_are_exact_classified_as_asked_and_deterministic():
    model, clf = tiny_model(), BrightnessClassifier()
    labels = np.array([4, 5, 4, 5, 5, 4, 4] * 30)  # 120 x 4, 90 x 5: interleaved rows
    images, stats = label_filter.filtered_uint8(model, clf, labels, seed=7)
    assert images.shape == (len(labels), 8, 8, 1) and images.dtype == np.uint8
    assert np.array_equal(classify_u8(clf, images), labels)  # every row passes the filter
    assert set(stats) == {"4", "5"}
    for c, n in (("4", 120), ("5", 90)):
        assert stats[c]["kept"] == n and stats[c]["examined"] >= n
    again, stats2 = label_filter.filtered_uint8(model, clf, labels, seed=7)
    assert np.array_equal(images, again) and stats == stats2  # same seed, same pixels
    other, _ = label_filter.filtered_uint8(model, clf, labels, seed=8)
    assert not np.array_equal(images, other)
    # the kept rows of a class are a prefix of its stream: fewer rows asked, the first ones returned
    fewer, _ = label_filter.filtered_uint8(model, clf, np.array([4] * 50), seed=7)
    assert np.array_equal(fewer, images[labels == 4][:50])


def test_unfiltered_rows_would_fail_the_classifier_sometimes():
    """The test above is not vacuous: without the filter, many rows are not classified as asked."""
    from models.sampling import generate_uint8

    model, clf = tiny_model(), BrightnessClassifier()
    labels = np.array([4, 5] * 100)
    share = (classify_u8(clf, generate_uint8(model, labels, 7)) == labels).mean()
    assert share < 0.8


def test_acceptance_is_kept_over_examined_and_matches_the_candidate_stream():
    model, clf = tiny_model(), BrightnessClassifier()
    _, stats = label_filter.filtered_uint8(model, clf, np.array([5] * 40), seed=3, block=64)
    # recount by hand: walk the class-5 stream block by block until the 40th hit
    hits, examined, b = 0, 0, 0
    while hits < 40:
        g = torch.Generator().manual_seed(label_filter.block_seed(3, 5, b))
        noise = torch.randn(64, model.noise_dim, generator=g)
        from models.sampling import denormalize_uint8

        u8 = denormalize_uint8(model.sample(torch.full((64,), 5), noise=noise))
        for ok in classify_u8(clf, u8) == 5:
            examined += 1
            hits += int(ok)
            if hits == 40:
                break
        b += 1
    assert stats["5"] == {"kept": 40, "examined": examined}
    summary = label_filter.summarize(
        [stats, {"5": {"kept": 10, "examined": 20}}], [str(i) for i in range(10)]
    )
    assert summary["per_class"]["5"]["kept"] == 50
    assert summary["per_class"]["5"]["acceptance_rate"] == pytest.approx(50 / (examined + 20))


def test_a_class_the_model_never_makes_raises_after_the_bound():
    model, clf = tiny_model(), BrightnessClassifier()
    with pytest.raises(label_filter.FilterRejected, match=r"class 0 kept 0 of \d+ candidates"):
        label_filter.filtered_uint8(model, clf, np.array([0] * 3), seed=0, block=32, min_tries=96)


def test_check_filter():
    assert label_filter.check_filter(None) is None and label_filter.check_filter("label") == "label"
    for bad in ("LABEL", "", "quality", 1, ["label"]):
        with pytest.raises(ValueError, match="valid: label"):
            label_filter.check_filter(bad)


# ----------------------------------------------------------------------------- wiring


@pytest.fixture(scope="module")
def filter_home(tmp_path_factory) -> Path:
    """A root with tiny-filter:v1 (a CVAE trained 300 steps on digits) and a domain classifier in the
    cache for digits (default architecture, 30 steps of training: cheap, but not random)."""
    root = tmp_path_factory.mktemp("filter_home")
    train = load_dataset("digits", "train")
    data = {"spec": "digits", "fingerprint": train.fingerprint, "image_shape": [1, 8, 8]}
    model = tiny_model("cvae", 1).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(300):  # a few seconds: samples that the classifier mostly reads as asked
        idx = torch.randint(0, len(train), (64,), generator=g)
        loss = model(train.images[idx], train.labels[idx], kl_weight=min(1.0, step / 100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    register_model(root, "tiny-filter", model.eval(), list(train.classes), data)
    cfg = classifier.ClassifierConfig(min_steps=30, max_steps=30)
    net = classifier.train_classifier(train.images, train.labels, 10, 0, cfg)
    pt, js = classifier.classifier_cache_paths(root, train)
    pt.parent.mkdir(parents=True)
    torch.save(net.state_dict(), pt)
    write_json_atomic(
        js, {**classifier._cache_key(train, classifier.ClassifierConfig()), "real_accuracy_by_seed": {}}
    )
    return root


def test_validate_request_takes_the_label_filter_only(filter_home):
    spec = validate_request(
        {"model": "tiny-filter", "per_class": 2, "filter": "label"}, filter_home, job_id="j-f"
    )
    assert spec.filter == "label" and ShardTask.of(spec, "j-f", 0).filter == "label"
    for bad in ("LABEL", "", "blur"):
        with pytest.raises(ValueError, match="unknown filter"):
            validate_request(
                {"model": "tiny-filter", "per_class": 2, "filter": bad}, filter_home, job_id="j-f"
            )


def test_validate_request_refuses_the_filter_without_training_data_facts(tmp_path):
    register_model(tmp_path, "no-data", tiny_model(), [str(i) for i in range(10)], {})
    with pytest.raises(ValueError, match="needs the training-data facts"):
        validate_request({"model": "no-data", "per_class": 1, "filter": "label"}, tmp_path, job_id="j-x")


def test_filtered_shard_rows_pass_the_domain_classifier_and_manifest_has_acceptance(filter_home):
    spec = validate_request(
        {
            "model": "tiny-filter",
            "counts": {"1": 30, "7": 25},
            "shard_rows": 40,
            "seed": 2,
            "filter": "label",
        },
        filter_home,
        job_id="j-filt",
    )
    model = load_checkpoint(Registry(filter_home).resolve(spec.model).path).model
    infos = [
        run_shard(model, ShardTask.of(spec, "j-filt", k), home=filter_home) for k in range(spec.num_shards)
    ]
    assert all("filter" in i for i in infos)
    summary = label_filter.summarize([i["filter"] for i in infos], spec.classes)
    committed = finalize_dataset(
        spec.output,
        {"job_id": "j-filt", **spec.to_dict()},
        {},
        infos,
        spec.classes,
        1.0,
        filter_summary=summary,
    )
    df = pd.read_parquet(Path(spec.output) / "data")
    assert df.label.value_counts().to_dict() == {1: 30, 7: 25}
    clf = label_filter.model_classifier(filter_home, spec.model)
    u8 = np.stack([np.array(Image.open(io.BytesIO(b["bytes"]))) for b in df.image])[..., None]
    assert np.array_equal(classify_u8(clf, u8), df.label.to_numpy())
    f = committed["filter"]
    assert f["per_class"]["1"]["kept"] == 30 and f["per_class"]["7"]["kept"] == 25
    assert 0 < f["per_class"]["1"]["acceptance_rate"] <= 1 and f["kept"] == 55
    on_disk = json.loads((Path(spec.output) / "manifest.json").read_text())
    assert on_disk["filter"]["per_class"] == f["per_class"]
    assert verify_dataset(spec.output).ok
    # the same task regenerates the same bytes
    again = run_shard(model, ShardTask.of(spec, "j-filt", 0), home=filter_home, filesystem=None)
    assert again["sha256"] == infos[0]["sha256"]


@pytest.mark.slow
def test_standalone_ray_job_with_filter_resumes_with_its_statistics(ray_local, filter_home):
    argv = ["--home", str(filter_home), "--model", "tiny-filter", "--counts", "2=30,8=12"]
    argv += ["--shard-rows", "15", "--job-id", "j-filt-ray", "--filter", "label"]
    assert main(argv) == 0
    out = Path(filter_home) / "datasets" / "j-filt-ray"
    first = json.loads((out / "manifest.json").read_text())["filter"]
    assert first["per_class"]["2"]["kept"] == 30 and first["per_class"]["8"]["kept"] == 12
    (out / "data" / "train-00001-of-00003.parquet").unlink()
    (out / "_SUCCESS").unlink()
    assert main(argv) == 0  # shards 0 and 2 come from disk: their statistics are recomputed
    assert json.loads((out / "manifest.json").read_text())["filter"]["per_class"] == first["per_class"]
    assert pd.read_parquet(out / "data").label.value_counts().to_dict() == {2: 30, 8: 12}


@pytest.mark.slow
def test_service_samples_and_jobs_take_the_filter(ray_local, filter_home):
    from cluster.client import Client
    from cluster.service import deploy, free_port, undeploy

    url = deploy(str(filter_home), "127.0.0.1", free_port(), {"max_replicas": 1, "max_in_flight": 2})
    try:
        client = Client(url, token="")
        req = {"model": "tiny-filter", "counts": {"3": 6, "9": 4}, "seed": 4, "format": "npz"}
        npz = np.load(io.BytesIO(client.samples({**req, "filter": "label"})))
        clf = label_filter.model_classifier(filter_home, "tiny-filter")
        assert np.array_equal(classify_u8(clf, npz["images"]), npz["labels"])
        again = np.load(io.BytesIO(client.samples({**req, "filter": "label"})))
        assert np.array_equal(npz["images"], again["images"])
        job = client.submit_job({"model": "tiny-filter", "per_class": 5, "filter": "label", "seed": 1})
        done = client.wait(job["id"], show=False)
        assert done["status"] == "succeeded", done
        manifest = client.manifest(job["id"])
        assert manifest["totals"]["per_class"] == {str(i): 5 for i in range(10)}
        assert set(manifest["filter"]["per_class"]) == {str(i) for i in range(10)}
        assert all(0 < v["acceptance_rate"] <= 1 for v in manifest["filter"]["per_class"].values())
    finally:
        undeploy()
