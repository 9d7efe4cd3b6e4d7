"""Sweeps: the results table, paired axes, failure isolation, presets, re-running one job."""

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
    r, out = sweep(tmp_path, f"data.root={countries_root}", "trainer.epochs=1", "optim.lr=0.01,-1,0.001")
    assert r.returncode == 1  # the user is told something failed
    df = pd.read_csv(out / "results.csv")
    assert list(df.status) == ["completed", "failed", "completed"]
    assert "optim.lr must be > 0" in df.error[1]
    assert "1 failed" in r.stdout + r.stderr


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
