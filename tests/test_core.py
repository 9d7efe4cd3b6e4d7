"""The core runner: composing, training on tiny data, outputs, reproducibility."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SHARED, compose_cfg, run_cli, write_countries
from expkit.runner import run

FILES = ["metrics.csv", "summary.json", "config.yaml", "predictions.csv", "model.pt", "curves.png", "boundary.npz"]


def quick(root, *extra):
    return compose_cfg([f"data.root={root}", "trainer.epochs=3", "trainer.batch_size=32", "optim.lr=0.01", *extra])


def test_short_run_beats_chance_and_writes_every_output(countries_root, tmp_path):
    summary = run(quick(countries_root), tmp_path / "run")
    for f in FILES:
        assert (tmp_path / "run" / f).stat().st_size > 0, f
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(m.epoch) == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"} <= set(m.columns)
    assert summary["final"]["test_acc"] > 0.6  # 4 separable blobs: chance is ~0.25
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["iterations_per_epoch"] == 19  # ceil(600/32)
    assert saved["config"]["seed"] == 42 and saved["versions"]["torch"]


def test_same_seed_same_metrics(countries_root, tmp_path):
    run(quick(countries_root), tmp_path / "a")
    run(quick(countries_root), tmp_path / "b")
    run(quick(countries_root, "seed=7"), tmp_path / "c")
    cols = ["train_loss", "val_loss", "test_acc"]
    a, b, c = (pd.read_csv(tmp_path / d / "metrics.csv")[cols] for d in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_last_batch_of_one_does_not_crash_batchnorm(tmp_path):
    root = write_countries(tmp_path / "d", n=132)  # 99 train rows = 3 * 32 + 3 -> with batch 49: 49+49+1
    n = len(pd.read_csv(root / "train.csv"))
    s = run(compose_cfg([f"data.root={root}", "trainer.epochs=2", f"trainer.batch_size={n - 1}",
                         "model.batchnorm=true"]), tmp_path / "run")
    assert s["status"] == "completed" and s["iterations_per_epoch"] == 1


def test_grad_and_step_records(countries_root, tmp_path):
    run(quick(countries_root, "trainer.grad_layers=[0,6]", "trainer.record_steps=true"), tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert (m.grad_sq_layer0 > 0).all() and (m.grad_sq_layer6 > 0).all()
    steps = pd.read_csv(tmp_path / "r" / "steps.csv")
    assert len(steps) == 3 * 19 and steps.epoch.max() == 3


def test_divergence_is_recorded_not_crashed(countries_root, tmp_path):
    s = run(quick(countries_root, "optim=sgd", "optim.lr=1e6"), tmp_path / "r")
    assert s["status"] == "diverged" and s["diverged"]


def test_sines_encoding_has_20_features(countries_root):
    from expkit.data import load
    from expkit.models import build

    cfg = quick(countries_root, "model.encoding=sines")
    _, model = build(cfg.model, load(cfg.data))
    assert model.blocks[0].linear.in_features == 20


def test_csv_loader_reads_real_header_by_name(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    # columns shuffled: selection must be by name, not position
    for p in ("train", "validation", "test"):
        (root / f"{p}.csv").write_text(",country,lat,long\n5,2,50.5,3.25\n9,0,41.0,-3.5\n")
    from expkit.data import load

    s = load(compose_cfg([f"data.root={root}"]).data)
    np.testing.assert_allclose(s.train.x, [[3.25, 50.5], [-3.5, 41.0]])
    assert list(s.train.y) == [2, 0] and list(s.train.ids) == [5, 9] and s.n_classes == 3


@pytest.mark.skipif(not (SHARED / "countries" / "train.csv").exists(), reason="../shared/data absent")
def test_real_countries_csvs():
    import hashlib

    from expkit.data import load

    root = SHARED / "countries"
    for line in (root / "SHA256SUMS").read_text().split("\n"):
        if line.strip():
            digest, name = line.split()
            assert hashlib.sha256((root / name.lstrip("*")).read_bytes()).hexdigest() == digest
    s = load(compose_cfg([f"data.root={root}"]).data)
    assert (len(s.train), len(s.val), len(s.test), s.n_classes) == (106897, 13363, 13363, 33)
    assert abs(np.bincount(s.test.y).max() / len(s.test) - 0.1055) < 0.01


def test_cli_run_and_help(countries_root, tmp_path):
    r = run_cli(f"data.root={countries_root}", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'cli'}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli" / "summary.json").exists()
    # a single run skips the interpreter's teardown (expkit.__main__.quick_exit): nothing may be lost
    out = r.stdout + r.stderr
    assert "completed: test acc" in out and out.rstrip().endswith(str(tmp_path / "cli"))
    assert (tmp_path / "cli" / "expkit.log").read_text().rstrip().endswith(str(tmp_path / "cli"))
    h = run_cli("--help")
    assert h.returncode == 0 and "countries" in h.stdout and "experiment/ex4: " in h.stdout


GROUPS = ["data", "model", "optim", "trainer", "sweep", "report"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((ROOT / "conf" / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_group_option_composes(group, option):
    from expkit.config import validate

    cfg = compose_cfg([f"{group}={option}"])
    validate(cfg)  # every key declared, every type right
