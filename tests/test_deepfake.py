"""ex4 deepfake: image folders, decode and feature caches, every model, weights, user errors."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg, load_for, run_cli
from expkit import features
from expkit.data import images, load
from expkit.errors import Skipped
from expkit.runner import run

TINY = ["data.resize=20", "data.crop=16", "trainer.threads=1", "trainer.epochs=1", "trainer.batch_size=8"]


def write_folder(root: Path, n=(8, 4, 4), size=32, seed=0):
    """ROOT/{train,val,test}/{0_real,1_fake}/*.jpg: smooth noise; fakes carry a 2-px checkerboard."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    checker = (np.indices((size, size)).sum(0) % 2 * 60)[..., None]
    for part, k in zip(("train", "val", "test"), n):
        for label, cls in enumerate(("0_real", "1_fake")):
            d = root / part / cls
            d.mkdir(parents=True)
            for i in range(k):
                img = np.kron(rng.integers(0, 190, (size // 4, size // 4, 3)), np.ones((4, 4, 1)))
                img = img + checker if label else img
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("df") / "faces")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised torchvision resnet18 state_dict, saved as the weights file (no download)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def cfg(folder, *extra):
    return compose_cfg(["data=deepfake", f"data.root={folder}", *TINY, *extra])


@pytest.mark.parametrize("model", ["resnet18 model.mode=scratch", "resnet18 model.mode=linear_probe",
                                   "resnet18 model.mode=finetune", "xgboost", "sklearn_probe"])
def test_every_model_runs_and_saves_test_predictions(folder, weights, tmp_path, model):
    name, *rest = model.split()
    extra = [f"model={name}", *rest] + ([f"model.weights_path={weights}"] if name != "xgboost" and "scratch" not in model else [])
    s = run(cfg(folder, *extra), tmp_path / "r")
    assert s["status"] == "completed"
    p = pd.read_csv(tmp_path / "r" / "predictions.csv")
    assert len(p) == 8 and set(p.label) == {0, 1}
    assert all(Path(i).is_file() for i in p.id)  # ids are the image paths (the image grid opens them)
    assert ((p.prob_1 >= 0) & (p.prob_1 <= 1)).all()
    assert (p.label == p.id.str.contains("1_fake").astype(int)).all()  # label 1 = fake folder


def test_weights_are_loaded_from_the_file(folder, weights):
    from expkit.models import resnet18

    c = cfg(folder, "model=resnet18", "model.mode=finetune", f"model.weights_path={weights}")
    model = resnet18.build(c.model, load_for(c))
    saved = torch.load(weights, weights_only=True)
    assert torch.equal(model.backbone.conv1.weight, saved["conv1.weight"])
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, saved["layer4.1.bn2.running_var"])


@pytest.mark.parametrize("cached", [True, False])
def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_stats(folder, weights, tmp_path, cached):
    import json

    from expkit.models import build, input_transform
    from expkit.runner import run

    c = cfg(folder, "model=resnet18", "model.mode=linear_probe", f"model.weights_path={weights}",
            f"model.feature_cache={str(cached).lower()}")
    splits = load(c.data, input_transform(c.model))
    torch.manual_seed(c.seed)
    _, model = build(c.model, splits)  # what the run starts from
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = run(c, tmp_path / "r")
    after = torch.load(tmp_path / "r" / "model.pt", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))  # incl. BN stats
    assert not torch.equal(before["head.weight"], after["head.weight"])
    model.train()
    assert model.training and not model.backbone.training
    # cached: run.py swapped the images for 512-d frozen features, in plain sight, and said so
    assert ("frozen ResNet18 features" in json.loads((tmp_path / "r" / "summary.json").read_text())["data"]) == cached
    assert summary["status"] == "completed"


def test_second_load_hits_decode_and_feature_caches(folder, weights, monkeypatch):
    from expkit.models import build

    c = cfg(folder, "model=sklearn_probe", f"model.weights_path={weights}", "data.resize=24")  # a fresh key
    from expkit.models import frozen_backbone

    def probe(splits):  # what run.py does for a model that trains on frozen features
        _, model = build(c.model, splits)
        net, digest, _ = frozen_backbone(c.model, model)
        return features.with_features(net, digest, splits)

    probe(load_for(c))

    def boom(*a, **k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(images, "decode_one", boom)
    monkeypatch.setattr(features, "extract", boom)
    splits = load_for(c)  # no image decoded
    assert probe(splits).train.x.shape == (16, 512)  # no backbone forward


def test_decode_cache_key_follows_file_content(tmp_path):
    root = write_folder(tmp_path / "f")
    t = images.Transform(resize=16)
    files, _ = images.list_folder(root, "train", ("0_real", "1_fake"))
    k1 = images.content_key(files, t)
    files[0].write_bytes(files[1].read_bytes())  # a changed file changes the key
    assert images.content_key(files, t) != k1
    assert images.content_key(files, images.Transform(resize=16, crop=8)) != images.content_key(files, t)


def test_standin_layout_and_description():
    c = compose_cfg(["data=deepfake", "model=xgboost", "data.resize=16", "data.crop=8", "trainer.threads=1"])
    s = load_for(c)
    assert (len(s.train), len(s.val), len(s.test)) == (1400, 200, 400)
    assert s.train.y.mean() == 0.5 and s.train.x.dtype == torch.uint8 and s.train.x.shape[1:] == (3, 8, 8)
    assert "STAND-IN" in s.description


def test_missing_weights_is_skipped_with_the_place_to_put_them(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    c = cfg(folder, "model=resnet18", "model.mode=finetune")
    with pytest.raises(Skipped, match="resnet18-f37072fd.pth.*model.weights_path"):
        load_for(c)


def _broken(root, what):
    import shutil

    if what == "split":
        shutil.rmtree(root / "val")
    elif what == "class":
        shutil.rmtree(root / "test" / "1_fake")
    elif what == "image":
        (root / "train" / "0_real" / "0.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.parametrize("what,message", [
    ("split", "missing split folder .*val"), ("class", "missing class folder .*1_fake"),
    ("image", "cannot read image .*0.jpg"), ("weights", "pretrained ResNet18 weights not found")])
def test_user_errors_one_line_exit_2_nothing_left(tmp_path, monkeypatch, what, message):
    import re

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_torch_home"))
    root = _broken(write_folder(tmp_path / "f", n=(2, 2, 2), size=16), what)
    extra = ["model=resnet18", "model.mode=linear_probe"] if what == "weights" else ["model=xgboost"]
    run_dir = tmp_path / "out"
    r = run_cli("data=deepfake", f"data.root={root}", *TINY, *extra, f"hydra.run.dir={run_dir}")
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: "), r.stderr
    assert re.search(message, err[0]), err[0]
    assert not run_dir.exists()  # no partial results


def test_cnn_baselines_sweep_without_weights_skips_the_pretrained_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "none"))
    sweep = tmp_path / "sweep"
    root = write_folder(tmp_path / "f", n=(6, 3, 3), size=16)
    r = run_cli("-m", "experiment=ex4/cnn_baselines", f"data.root={root}", "data.resize=16", "data.crop=16", "trainer.threads=1",
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 17
    status = dict(zip(table.job, table.status))
    assert [status[j] for j in range(6)] == ["completed"] * 6  # xgboost + 5 scratch
    assert {status[j] for j in range(6, 17)} == {"skipped"}
    assert "weights not found" in json.loads((sweep / "7" / "summary.json").read_text())["error"]
    ranking = (sweep / "ranking.md").read_text()
    assert "best 1 of scratch" in ranking and "worst overall" in ranking and "skipped" in ranking
    assert (sweep / "image_grid.csv").exists()
