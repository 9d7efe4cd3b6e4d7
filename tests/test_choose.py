"""The sweep names its choice (issue 22 item 3): best.json by the mean over seeds of the best-epoch val
accuracy, closing lines that name it, results_by_config.md when seeds vary, the command that re-runs the
sweep in place, and outputs/<name>/latest."""
import json
import shlex
import sys

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg, run_cli, write_countries


def _job(d, overrides, seed, best, final, status="completed", epochs=3, ran=None):
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    cfg = compose_cfg([*overrides, f"seed={seed}", f"trainer.epochs={epochs}"])
    OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
    (d / "summary.json").write_text(json.dumps({
        "status": status, "final": {"val_acc": final, "test_acc": final / 2, "train_acc": 1.0, "val_loss": 1.0},
        "best": {"epoch": 1, "val_acc": best, "test_acc": best / 2}, "epochs_run": epochs if ran is None else ran,
        "wall_time_s": 1.0, "seed": seed, "overrides": [*overrides, f"seed={seed}"],
        "config": OmegaConf.to_container(cfg)}))


def test_best_is_the_mean_over_seeds_of_the_best_epoch_val_acc(tmp_path):
    from expkit.report.aggregate import write_table
    from expkit.report.choice import write_best

    s = tmp_path / "s"
    # lr 0.1: one lucky seed (0.95) but a poor mean; lr 0.01: best mean of the best epochs; lr 0.001: best
    # final epochs, worse best epochs; lr 1: the highest mean, but one seed diverged (out of the running)
    rows = [("0.1", 1, 0.95, 0.90), ("0.1", 2, 0.60, 0.60), ("0.01", 1, 0.85, 0.70), ("0.01", 2, 0.83, 0.70),
            ("0.001", 1, 0.80, 0.80), ("0.001", 2, 0.80, 0.80), ("1", 1, 0.99, 0.99)]
    for i, (lr, seed, best, final) in enumerate(rows):
        _job(s / str(i), [f"optim.lr={lr}"], seed, best, final)
    _job(s / "7", ["optim.lr=1"], 2, 0.98, 0.10, status="diverged")
    df = write_table(s)
    best = write_best(s, df)
    assert best == json.loads((s / "best.json").read_text())
    assert best["config"] == {"optim.lr": 0.01} and best["overrides"] == ["optim.lr=0.01"]
    assert best["best_val_acc"]["mean"] == pytest.approx(0.84) and best["best_val_acc"]["n"] == 2
    assert best["best_val_acc"]["std"] == pytest.approx(pd.Series([0.85, 0.83]).std())
    assert best["val_acc"]["mean"] == pytest.approx(0.70)  # the final epoch beside it
    assert best["seeds"] == [1, 2] and best["runs"] == ["2", "3"] and best["dirs"][0] == str((s / "2").resolve())
    assert best["n_configurations"] == 4 and best["competed"] == 3  # lr 1 (a diverged seed) did not compete
    # the terminal table ranks as best.json does
    from expkit.report.tables import terminal_table

    assert terminal_table(df).splitlines()[2].startswith("1.0")  # highest mean of the two jobs that count...
    assert terminal_table(df).splitlines()[3].startswith("0.01")  # ...the choice, all of whose seeds completed

    # no completed job: no best.json (a stale one is removed)
    for d in s.iterdir():
        if d.is_dir():
            summary = json.loads((d / "summary.json").read_text())
            (d / "summary.json").write_text(json.dumps(dict(summary, status="failed")))
    assert write_best(s, write_table(s)) is None and not (s / "best.json").exists()


def test_closing_lines_name_the_choice_the_per_config_table_the_rerun_and_pruning(tmp_path, monkeypatch):
    from expkit.report.aggregate import write_table
    from expkit.report.choice import close_sweep

    monkeypatch.chdir(tmp_path)
    s = tmp_path / "outputs" / "study" / "multirun_2026-01-01_00-00-00"
    _job(s / "0", ["optim.lr=0.1"], 1, 0.7, 0.6, epochs=9)
    _job(s / "1", ["optim.lr=0.01"], 1, 0.5, 0.5, status="pruned", epochs=9, ran=1)
    _job(s / "2", ["optim.lr=0.001"], 1, 0.4, 0.4, status="pruned", epochs=9, ran=3)
    write_table(s)
    argv = ["train.py", "-m", "optim.lr=0.1,0.01,0.001", "experiment=glob(ex4/*)", "hydra.sweep.dir=elsewhere"]
    lines = close_sweep(s, argv=argv).splitlines()
    assert lines[0].startswith("best: optim.lr=0.1: best-epoch val acc 0.7000") and "best.json" in lines[0]
    assert "member-epochs trained: 13 of the full grid's 27 (48%); pruned: 1 after epoch 1, 1 after epoch 3" in lines
    assert not any("results_by_config" in line for line in lines)  # one seed: no per-configuration table
    cmd = lines[-1].partition(": ")[2]
    assert shlex.split(cmd) == ["python", "train.py", "-m", "optim.lr=0.1,0.01,0.001", "experiment=glob(ex4/*)",
                                f"hydra.sweep.dir={s.relative_to(tmp_path)}"]
    latest = tmp_path / "outputs" / "study" / "latest"
    assert latest.is_symlink() and latest.resolve() == s.resolve()
    assert "member-epochs trained: 13 of the full grid's 27" in (s / "results.md").read_text()
    from expkit.report.choice import entrypoint

    assert entrypoint(["/venv/bin/expkit"]) == "expkit"
    assert entrypoint([str(ROOT / "expkit" / "__main__.py")]) == "python -m expkit"


def test_a_sweep_names_its_choice_and_its_rerun_command_skips_everything(tmp_path):
    data = write_countries(tmp_path / "d", n=200)
    sweep = tmp_path / "outputs" / "default" / "multirun_x"
    r = run_cli("-m", f"data.root={data}", "trainer.epochs=2", "optim.lr=0.1,0.01", "seed=1,2",
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    best = json.loads((sweep / "best.json").read_text())
    by_config = pd.read_csv(sweep / "results_by_config.csv")
    top = by_config.loc[by_config.best_val_acc_mean.idxmax()]
    assert best["config"]["optim.lr"] == top["optim.lr"] and best["best_val_acc"]["n"] == 2
    assert best["best_val_acc"]["mean"] == pytest.approx(top.best_val_acc_mean)
    tail = r.stdout.strip().splitlines()[-3:]
    assert tail[0].startswith(f"best: optim.lr={best['config']['optim.lr']}: best-epoch val acc")
    assert tail[1] == f"mean ± std over seeds per configuration: {sweep / 'results_by_config.md'}"
    assert (tmp_path / "outputs" / "default" / "latest").resolve() == sweep.resolve()
    cmd = shlex.split(tail[2].partition(": ")[2])
    assert cmd[:3] == ["python", "train.py", "-m"] and cmd[-1] == f"hydra.sweep.dir={sweep}"
    again = run_cli(*cmd[2:])  # the printed command, as typed: every job is skipped
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already finished") == 4


# ---- choose by the mean over seeds (issue 22 item 2) ----

def test_optuna_trials_of_three_seeds_are_valued_by_their_mean(tmp_path):
    optuna = pytest.importorskip("optuna", minversion="3", reason="pip install -e '.[hpo]'")
    data = write_countries(tmp_path / "d", n=200)
    sweep = tmp_path / "s"
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "hydra.sweeper.seeds=3", "hydra.sweeper.n_trials=4",
                "trainer.epochs=2", f"data.root={data}", f"hydra.sweep.dir={sweep}")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "fused: 6 job(s) train as 2 unit(s) (2 group(s) of 3, 3)" in out  # a trial's seeds fuse by default
    runs = sorted(p.parent.name for p in sweep.glob("*/summary.json"))
    assert len(runs) == 12 and runs[:3] == ["trial_0_seed1", "trial_0_seed2", "trial_0_seed3"]
    study = optuna.load_study(study_name="mlp_lr_width", storage=f"sqlite:///{sweep / 'optuna.db'}")
    trials = pd.read_csv(sweep / "optuna_trials.csv")
    assert len(study.trials) == 4 and [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    for t in study.trials:
        summaries = [json.loads((sweep / f"trial_{t.number}_seed{s}" / "summary.json").read_text()) for s in (1, 2, 3)]
        assert [s["config"]["seed"] for s in summaries] == [1, 2, 3]
        best = pd.Series([s["best"]["val_acc"] for s in summaries])
        assert t.value == pytest.approx(best.mean())  # the objective: the mean of the seeds' best val accuracies
        row = trials[trials.trial == t.number].iloc[0]
        assert row.value == pytest.approx(best.mean()) and row.value_std == pytest.approx(best.std())
        for epoch, value in t.intermediate_values.items():  # each epoch's report: the seeds' mean there
            seeds = [pd.read_csv(sweep / f"trial_{t.number}_seed{s}" / "metrics.csv").set_index("epoch").val_acc[epoch]
                     for s in (1, 2, 3)]
            assert value == pytest.approx(sum(seeds) / 3)
    by_config = pd.read_csv(sweep / "results_by_config.csv")
    assert list(by_config.n) == [3] * 4
    chosen = json.loads((sweep / "best.json").read_text())
    assert chosen["best_val_acc"]["mean"] == pytest.approx(study.best_value) and chosen["best_val_acc"]["n"] == 3

    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "hydra.sweeper.seeds=3", "seed=1,2",
                f"hydra.sweep.dir={tmp_path / 'bad'}")
    assert r.returncode == 2 and "leave seed out" in r.stderr and not (tmp_path / "bad").exists()
