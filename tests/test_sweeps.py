"""Sweeps: the results table, paired axes, failure isolation, presets, re-running one job."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, compose_cfg, run_cli, run_python
from expkit.config import validate

PRESETS = sorted(str(p.relative_to(ROOT / "conf" / "experiment").with_suffix(""))
                 for p in (ROOT / "conf" / "experiment").rglob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_validates(preset):
    cfg = compose_cfg([f"experiment={preset}"])
    assert cfg.name != "default", "a preset names its output folder"
    validate(cfg)


def sweep(tmp_path, *args):
    out = tmp_path / "sweep"
    r = run_cli("-m", *args, f"hydra.sweep.dir={out}")
    return r, out


def test_cli_sweep_writes_table_with_a_row_per_job(countries_root, tmp_path):
    r, out = sweep(tmp_path, f"data.root={countries_root}", "trainer.epochs=1", "optim.lr=0.1,0.01,0.001")
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert list(df["optim.lr"]) == [0.1, 0.01, 0.001]
    assert (df.status == "completed").all() and df.test_acc.notna().all()
    assert "| optim.lr |" in (out / "results.md").read_text()


def test_a_nested_subdir_sweep_leaves_one_table_and_skips_its_finished_jobs(tmp_path):
    """hydra.sweep.subdir=lr${optim.lr}/s${seed} puts the jobs two levels down: the sweep still leaves one
    table (and best.json, the terminal table) in its dir, with the jobs' paths, and none per level; run again,
    its finished jobs are skipped. Before: a table per lr dir, none for the sweep, no best.json."""
    args = ["data=points2d", "data.n=200", "trainer.epochs=1", "optim.lr=0.1,0.01", "seed=1,2",
            "hydra.sweep.subdir=lr${optim.lr}/s${seed}"]
    r, out = sweep(tmp_path, *args)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert sorted(df.job) == ["lr0.01/s1", "lr0.01/s2", "lr0.1/s1", "lr0.1/s2"] and (df.status == "completed").all()
    assert not list(out.glob("*/results.csv"))  # no partial table per level
    best = json.loads((out / "best.json").read_text())
    assert all(Path(d).parent.name == f"lr{best['config']['optim.lr']}" for d in best["dirs"])
    assert "optim.lr  status" in r.stdout + r.stderr and "0 failed; table:" in r.stdout + r.stderr
    r, _ = sweep(tmp_path, *args[:-3], "optim.lr=0.1,0.001", "seed=1,2", args[-1])
    log = r.stdout + r.stderr
    assert r.returncode == 0 and log.count("this exact config already finished") == 2, log[-2000:]
    assert len(pd.read_csv(out / "results.csv")) == 6


@pytest.mark.parametrize("preset,n,keys", [("ex4/depth_width", 7, ["model.depth", "model.width"]),
                                           ("ex4/batch_size", 4, ["trainer.batch_size", "trainer.epochs"])])
def test_paired_presets_launch_exactly_their_jobs(countries_root, tmp_path, preset, n, keys):
    extra = ["trainer.epochs=1"] if "depth" in preset else []
    r, out = sweep(tmp_path, f"experiment={preset}", f"data.root={countries_root}", *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert len(df) == n and (df.status == "completed").all()
    pairs = list(map(tuple, df[keys].values))
    assert len(set(pairs)) == n  # paired, not a product (a grid would be 5x4=20 / 4x3=12)
    if "depth" in preset:
        assert (6, 64) in pairs and (10, 16) in pairs
        for f in ["best_boundary.png", "worst_loss_curves.png", "accuracy_vs_depth.png", "accuracy_vs_width.png"]:
            assert (out / f).stat().st_size > 0, f
    else:
        assert set(pairs) == {(1, 1), (16, 10), (128, 50), (1024, 50)}
        assert df.set_index("trainer.batch_size").iterations_per_epoch[16] == 38  # ceil(600/16)
        assert (out / "train_loss_vs_step.png").exists() and (out / "val_acc_vs_epoch.png").exists()


def test_failing_job_is_marked_and_others_finish(countries_root, tmp_path):
    """A job that fails while running (its data is missing) is a failed row; the others finish."""
    missing = tmp_path / "missing"
    r, out = sweep(tmp_path, "trainer.epochs=1", f"data.root={countries_root},{missing},{countries_root}",
                   "optim.lr=0.01")
    assert r.returncode == 1  # the user is told something failed
    df = pd.read_csv(out / "results.csv")
    assert sorted(df.status) == ["completed", "failed"]  # the third job is the first one again: it runs once
    assert "missing data file" in df.error[df.status == "failed"].iloc[0]
    assert "1 failed" in r.stdout + r.stderr


def test_a_job_that_cannot_run_stops_the_sweep_before_anything_runs(countries_root, tmp_path):
    """An invalid value (a negative lr, Adam with a momentum) is one line naming the job, exit 2, nothing written."""
    for bad in (["optim.lr=0.01,-1"], ["optim.momentum=0,0.9"]):
        r = run_cli("-m", f"data.root={countries_root}", "trainer.epochs=1", *bad, f"hydra.sweep.dir={tmp_path / 's'}")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: job ") and ("optim.lr must be > 0" in last or "only SGD" in last), last
        assert not (tmp_path / "s").exists()


def test_report_rebuilds_and_merges(countries_root, tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d, lr in ((a, "0.1,0.01"), (b, "0.001")):
        assert run_cli("-m", f"data.root={countries_root}", "trainer.epochs=1", f"optim.lr={lr}",
                       f"hydra.sweep.dir={d}").returncode == 0
    (a / "results.csv").unlink()
    r = run_python("-m", "expkit.report", str(a))
    assert r.returncode == 0 and len(pd.read_csv(a / "results.csv")) == 2
    r = run_python("-m", "expkit.report", str(a), str(b), "--out", str(tmp_path / "m"))
    assert r.returncode == 0, r.stderr
    merged = pd.read_csv(tmp_path / "m" / "results.csv")
    assert len(merged) == 3 and set(merged["sweep"]) == {str(a), str(b)}
    assert run_python("-m", "expkit.report", str(tmp_path / "nope")).returncode == 2
    # a parent of sweeps: it says where the runs are instead of an empty table or a silent skip
    r = run_python("-m", "expkit.report", str(tmp_path))
    assert r.returncode == 2 and str(a) in r.stderr and str(b) in r.stderr and "Traceback" not in r.stderr
    # a dir with runs and a sweep inside: the table has the runs, and the sweep is named as not in it
    (a / "inner").mkdir()
    (b / "0").rename(a / "inner" / "0")
    r = run_python("-m", "expkit.report", str(a))
    assert r.returncode == 0 and len(pd.read_csv(a / "results.csv")) == 2
    assert "not in this table" in r.stdout and str(a / "inner") in r.stdout


def test_rerun_one_job_reproduces_its_metrics(countries_root, tmp_path):
    r, out = sweep(tmp_path, f"data.root={countries_root}", "trainer.epochs=2", "optim.lr=0.01,0.001")
    assert r.returncode == 0
    r = run_python("-m", "expkit.rerun", str(out / "1"))
    assert r.returncode == 0 and "identical metrics" in r.stdout, r.stdout + r.stderr
    assert pd.read_csv(out / "1" / "rerun_1" / "metrics.csv").val_loss.equals(
        pd.read_csv(out / "1" / "metrics.csv").val_loss)
