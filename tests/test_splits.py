"""Model selection never looks at test data: every data set's validation split is its own split or
is carved from its training data with a fixed seed (not the run's seed), disjoint from the test
split, and each load says how its splits were made (Splits.split_info -> summary.json "splits")."""
import hashlib
import importlib.util
import json
import pickle
import types

import numpy as np
import pytest
import torch

from conftest import ROOT, compose_cfg, load_for, run_cli, write_countries
from expkit.config import validate
from expkit.data import Split, Splits, carve
from expkit.errors import UserError
from expkit.runner import run

_spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

PARTS = ("train", "val", "test")


def cfg(*overrides):
    return validate(compose_cfg(["trainer.threads=1", *overrides]))


def load_as_run(*overrides, seed=42):
    """Load the data the way run() does: after seeding numpy and torch with the run's seed."""
    c = cfg(*overrides, f"seed={seed}")
    np.random.seed(c.seed)
    torch.manual_seed(c.seed)
    return load_for(c)


def rows(split):
    """One hash per sample (its content), to compare splits whose ids live in different spaces."""
    x = split.x.numpy() if hasattr(split.x, "numpy") else np.asarray(split.x)
    return [hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest() for r in x]


def assert_separate(s, by_ids=True):
    """No sample is in two splits (by content, and by id where the ids share one space)."""
    content = {p: set(rows(getattr(s, p))) for p in PARTS}
    assert len(content["val"]) == len(s.val)  # (tiny fixtures hold no duplicate samples)
    assert not content["val"] & content["test"], "validation shares samples with the test split"
    assert not content["val"] & content["train"], "validation shares samples with the training split"
    assert not content["train"] & content["test"]
    if by_ids:
        ids = {p: set(np.asarray(getattr(s, p).ids).tolist()) for p in PARTS}
        assert not ids["val"] & ids["test"] and not ids["val"] & ids["train"] and not ids["train"] & ids["test"]


def assert_info(s):
    assert set(s.split_info) >= set(PARTS) and all(isinstance(s.split_info[p], str) and s.split_info[p]
                                                  for p in PARTS), s.split_info
    assert "test" not in s.split_info["val"].lower() or "never" in s.split_info["val"].lower()


def assert_same_carve(a, b):
    for p in PARTS:
        assert np.array_equal(np.asarray(getattr(a, p).ids), np.asarray(getattr(b, p).ids)), p
        assert rows(getattr(a, p)) == rows(getattr(b, p)), p
    assert a.split_info == b.split_info


# ---- the shared carve ----

def test_carve_is_stratified_disjoint_and_fixed_by_its_seed():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    rest, held = carve(y, 10, seed=0)
    assert np.bincount(y[held]).tolist() == [5, 3, 2]  # each class in proportion
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(100)) and list(rest) == sorted(rest)
    again, held2 = carve(y, 10, seed=0)
    assert np.array_equal(held, held2) and np.array_equal(rest, again)
    assert not np.array_equal(held, carve(y, 10, seed=1)[1])
    assert len(carve(y, 7, seed=0)[1]) == 7
    with pytest.raises(UserError):
        carve(y, 0, seed=0)


def test_loader_requires_every_data_set_to_say_how_its_splits_were_made(monkeypatch):
    import expkit.data as datasets

    s = Split(np.zeros((4, 2), np.float32), np.arange(4) % 2)
    fake = types.SimpleNamespace(load=lambda conf: Splits(s, s, s, n_classes=2, description="fake",
                                                          split_info={"train": "a", "test": "c"}))
    monkeypatch.setattr(datasets, "_module", lambda name: fake)
    with pytest.raises(UserError, match="'val' split"):
        datasets.load(types.SimpleNamespace(name="fake"))


# ---- per data set ----

def _cifar_batches(root):
    folder = root / "cifar-10-batches-py"
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d["labels"]))
    return np.concatenate(xs), np.concatenate(ys)


def test_cifar10_validates_on_images_carved_from_the_training_batches(tmp_path):
    root = fx.write_cifar(tmp_path / "c", per_batch=40, n_test=50)  # 200 training images
    over = ["data=cifar10", f"data.root={root}"]
    s = load_as_run(*over, seed=1)
    assert_separate(s, by_ids=False)  # train/val ids index the training batches, test ids the test batch
    assert (len(s.train), len(s.val), len(s.test)) == (180, 20, 50)  # default: 10% of the training images
    assert not set(s.train.ids) & set(s.val.ids)
    xtr, ytr = _cifar_batches(root)
    assert np.array_equal(s.val.x, xtr[s.val.ids]) and np.array_equal(s.val.y, ytr[s.val.ids])
    assert (np.abs(np.bincount(s.val.y, minlength=10) - np.bincount(ytr, minlength=10) / 10) < 1).all()  # stratified
    assert_info(s)
    assert "split_seed 0" in s.split_info["val"] and "test_batch" in s.split_info["test"]
    assert_same_carve(s, load_as_run(*over, seed=2))  # the run's seed does not move the split
    assert not np.array_equal(s.val.ids, load_as_run(*over, "data.split_seed=1").val.ids)
    small = load_as_run(*over, "data.val_size=7", "data.train_size=30")
    # train_size=N trains on exactly the first N training images (pset10's SVC); val comes after them
    assert len(small.val) == 7 and list(small.train.ids) == list(range(30)) and small.val.ids.min() >= 30


def test_cifar10_val_size_0_is_one_error_line(tmp_path):
    root = fx.write_cifar(tmp_path / "c", per_batch=4, n_test=5)
    with pytest.raises(UserError, match="val_size"):
        load_as_run("data=cifar10", f"data.root={root}", "data.val_size=0")
    r = run_cli("data=cifar10", f"data.root={root}", "data.val_size=0", "trainer.threads=1",
                f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "val_size" in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_mnist_standin_validates_on_training_digits_not_the_test_digits():
    from sklearn.datasets import load_digits

    s = load_as_run("data=mnist", seed=1)
    assert_separate(s, by_ids=False)
    assert len(s.test) == 297 and len(s.val) == 150 and len(s.train) == 1350
    assert not set(s.train.ids) & set(s.val.ids)
    assert np.bincount(s.val.y).tolist() == [15] * 10
    # val is drawn from the 1,500 training digits: none of its images is among the 297 test digits
    every = {hashlib.sha1(np.ascontiguousarray(r[None]).tobytes()).hexdigest()
             for r in load_digits().images.astype(np.uint8)}
    assert set(rows(s.val)) <= every and not set(rows(s.val)) & set(rows(s.test))
    assert_info(s)
    assert_same_carve(s, load_as_run("data=mnist", seed=2))
    assert not np.array_equal(s.val.ids, load_as_run("data=mnist", "data.split_seed=1").val.ids)
    with pytest.raises(UserError, match="val_size"):
        load_as_run("data=mnist", "data.val_size=0")


def test_mnist_idx_files_validate_on_training_images(tmp_path):
    from torchvision.datasets.mnist import read_image_file

    root = fx.write_mnist(tmp_path / "m", train_per_class=20, test_per_class=8)
    over = ["data=mnist", f"data.root={root}", "data.test_size=50"]
    s = load_as_run(*over, seed=1)
    assert_separate(s, by_ids=False)
    assert len(s.val) == 20 and len(s.test) == 50  # default: 10% of the 200 training images
    assert not set(s.train.ids) & set(s.val.ids)
    train_file = read_image_file(str(root / "MNIST" / "raw" / "train-images-idx3-ubyte")).numpy()
    assert np.array_equal(s.val.x[:, 0], train_file[s.val.ids])
    assert_info(s)
    assert_same_carve(s, load_as_run(*over, seed=2))


def test_points2d_validates_on_part_of_the_train_half_and_keeps_the_pset_test_half(tmp_path):
    from sklearn.model_selection import train_test_split

    for n, over in ((200, ["data=points2d", "data.n=200"]),
                    (100, ["data=points2d", f"data.root={fx.write_points2d(tmp_path / 'p', n=100)}"])):
        s = load_as_run(*over, seed=1)
        _, _, _, _, itr, ite = train_test_split(np.zeros((n, 2)), np.zeros(n), np.arange(n), test_size=0.5,
                                                random_state=42)
        assert sorted(s.test.ids) == sorted(ite)  # the pset's test half, untouched
        assert set(s.val.ids) <= set(itr) and len(s.val) == len(itr) // 10  # carved from the train half
        assert sorted(np.concatenate([s.train.ids, s.val.ids])) == sorted(itr)
        assert_separate(s)
        assert_info(s)
        assert_same_carve(s, load_as_run(*over, seed=2))
        assert not np.array_equal(s.val.ids, load_as_run(*over, "data.split_seed=1").val.ids)


def test_synth_edges_validation_and_test_are_disjoint_parts_of_the_source(tmp_path):
    for over in (["data=synth_edges", "data.n=100"],
                 ["data=synth_edges", f"data.root={fx.write_synth(tmp_path / 'synth_data.pkl', n=100)}"]):
        s = load_as_run(*over, seed=1)
        assert (len(s.train), len(s.val), len(s.test)) == (80, 10, 10)
        assert_separate(s)
        assert_info(s)
        assert_same_carve(s, load_as_run(*over, seed=2))


def test_dogset_uses_the_csv_partitions(tmp_path):
    root = fx.write_dogset(tmp_path / "d", classes=3, per_partition=(4, 2, 2), size=16)
    s = load_as_run("data=dogset", f"data.root={root}", "data.image_size=16", seed=1)
    assert all(str(f).startswith("valid_") for f in s.val.ids) and all(str(f).startswith("test_") for f in s.test.ids)
    assert_separate(s)
    assert_info(s)
    assert "valid" in s.split_info["val"]
    assert_same_carve(s, load_as_run("data=dogset", f"data.root={root}", "data.image_size=16", seed=2))


def test_countries_csvs_and_embedded_default(tmp_path):
    root = write_countries(tmp_path / "c", n=200)
    s = load_as_run(f"data.root={root}", seed=1)
    assert_separate(s, by_ids=False)  # the csv's first column is an original row index, not unique across files
    assert s.split_info["val"].startswith("validation.csv") and s.split_info["test"].startswith("test.csv")
    assert_info(s)
    e = load_as_run("data=countries", seed=1)
    ids = {p: set(getattr(e, p).ids.tolist()) for p in PARTS}  # geonames ids (two cities may share a place)
    assert not ids["val"] & ids["test"] and not ids["val"] & ids["train"]
    assert_info(e)
    assert_same_carve(e, load_as_run("data=countries", seed=2))


def test_deepfake_folders_and_standin(tmp_path):
    from test_deepfake import TINY, write_folder

    root = write_folder(tmp_path / "faces", n=(4, 2, 2), size=16)
    tiny = [o for o in TINY if o.startswith("data.")]
    s = load_as_run("data=deepfake", f"data.root={root}", *tiny, seed=1)
    assert all("/val/" in f for f in s.val.ids) and all("/test/" in f for f in s.test.ids)
    assert_separate(s)
    assert_info(s)
    assert_same_carve(s, load_as_run("data=deepfake", f"data.root={root}", *tiny, seed=2))
    standin = load_as_run("data=deepfake", "data.resize=8", "data.crop=8")
    assert (len(standin.train), len(standin.val), len(standin.test)) == (1400, 200, 400)
    assert all("/val/" in f for f in standin.val.ids)
    assert_separate(standin)
    assert_info(standin)


# ---- summary.json ----

def test_summary_json_records_the_splits(tmp_path):
    summary = run(cfg("data=points2d", "data.n=100", "trainer.epochs=1", "trainer.checkpoint=false",
                      "trainer.save_model=false"), tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    for s in (summary, saved):
        assert set(s["splits"]) == set(PARTS) and "carved from the train half" in s["splits"]["val"]
        assert (s["n_train"], s["n_val"], s["n_test"]) == (45, 5, 50)
