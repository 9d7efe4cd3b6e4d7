"""HPO: expkit's Optuna sweeper searches on the jobs' best val accuracy; a study kept in storage
resumes to n_trials in total; a hopeless trial is pruned from its per-epoch reports; failed trials
stay in the tables with their status."""
import json

import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_cli, write_countries

optuna = pytest.importorskip("optuna", minversion="3", reason="pip install -e '.[hpo]'")


LR = "optim.lr=tag(log,interval({},{}))"


def _study(db, name="mlp_lr_width"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def test_study_resumes_prunes_and_records_failures(tmp_path):
    data = write_countries(tmp_path / "d", n=800)
    db = tmp_path / "study.db"
    common = ["-m", "experiment=hpo/mlp_lr_width", f"data.root={data}", "trainer.epochs=3", "model.width=choice(8)",
              f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_jobs=1",
              # prune from the first epoch on, once one trial has finished
              "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0"]
    r = run_cli(*common, "hydra.sweeper.n_trials=1", LR.format(0.04, 0.05), f"hydra.sweep.dir={tmp_path / 's1'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [t.state.name for t in _study(db).trials] == ["COMPLETE"]
    assert "best trial 0" in r.stdout

    # n_trials counts the study's total: 2 more; a hopeless lr is pruned, an invalid one fails
    r = run_cli(*common, "hydra.sweeper.n_trials=2", LR.format(1e-9, 2e-9), f"hydra.sweep.dir={tmp_path / 's2'}")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli(*common, "hydra.sweeper.n_trials=3", LR.format(0.04, 0.05), "trainer.epochs=0",
                f"hydra.sweep.dir={tmp_path / 's2'}")
    assert r.returncode == 1, r.stderr[-2000:]  # a failed trial fails the sweep's exit code, as in a grid sweep
    trials = _study(db).trials
    assert len(trials) == 3
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL"]
    assert trials[1].params["optim.lr"] < 1e-8
    pruned = next(t for t in trials if t.state.name == "PRUNED")
    summary = json.loads((tmp_path / "s2" / f"trial_{pruned.number}" / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_run"] < 3
    assert list(pruned.intermediate_values) == list(range(1, summary["epochs_run"] + 1))

    # the tables: this sweep's results with statuses, and every trial of the study
    table = pd.read_csv(tmp_path / "s2" / "results.csv")
    assert sorted(table.status) == ["failed", "pruned"]
    assert table[table.status == "failed"].error.str.contains("trainer.epochs must be >= 1").all()
    every = pd.read_csv(tmp_path / "s2" / "optuna_trials.csv")
    assert list(every.state) == ["complete", "pruned", "fail"] and every.dir.str.contains("s1/trial_0").iloc[0]
    assert every.error.fillna("").str.contains("trainer.epochs must be >= 1").sum() == 1
    best = yaml.safe_load((tmp_path / "s2" / "optimization_results.yaml").read_text())
    assert best["best_trial"] == 0 and best["n_trials"] == 3
    assert best["best_value"] == pytest.approx(trials[0].value)
    assert "pruned" in r.stdout and "failed" in r.stdout  # the printed table names both

    # already at n_trials: nothing runs
    r = run_cli(*common, "hydra.sweeper.n_trials=3", LR.format(0.04, 0.05), f"hydra.sweep.dir={tmp_path / 's3'}")
    assert r.returncode == 0 and len(_study(db).trials) == 3
    # a changed search space in a kept study: one line, nothing runs
    r = run_cli(*common, "hydra.sweeper.n_trials=4", "model.width=choice(8,16)", LR.format(0.04, 0.05),
                f"hydra.sweep.dir={tmp_path / 's4'}")
    assert r.returncode == 2 and "start a new study" in r.stderr and "Traceback" not in r.stderr
    assert len(_study(db).trials) == 3 and not (tmp_path / "s4").exists()  # nothing of that sweep is left


def test_objective_is_best_val_accuracy_and_logs_are_plain(tmp_path):
    data = write_countries(tmp_path / "d", n=200)
    sweep = tmp_path / "s"
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "hydra.sweeper.n_trials=2", "trainer.epochs=2",
                f"data.root={data}", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (sweep / "optuna.db").exists()  # the default storage: the sweep dir keeps its study
    study = _study(sweep / "optuna.db")
    for t in study.trials:
        s = json.loads((sweep / f"trial_{t.number}" / "summary.json").read_text())
        assert t.value == pytest.approx(s["best"]["val_acc"])  # never test accuracy
        cfg = yaml.safe_load((sweep / f"trial_{t.number}" / ".hydra" / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == pytest.approx(t.params["optim.lr"]) and cfg["model"]["width"] == t.params["model.width"]
    logs = "".join(p.read_text() for p in sweep.rglob("*.log")) + r.stdout + r.stderr
    assert "\x1b[" not in logs and "alembic" not in logs.lower()


def test_bad_search_settings_are_one_line(tmp_path):
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "hydra.sweeper.direction=minimize", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 2 and "only maximize" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "hydra.sweeper.params={}", "optim.lr=0.1", "model.width=8",
                f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 2 and "nothing to search" in r.stderr and "Traceback" not in r.stderr
    # a typo in a searched key or a choice: one line before any trial exists, not n failed trials
    for bad, says in (("optim.lrr=choice(0.1,0.01)", "unknown config key 'optim.lrr'"),
                      ("model=choice(mlp,mlpp)", "unknown model 'mlpp'")):
        r = run_cli("-m", "experiment=hpo/mlp_lr_width", bad, f"hydra.sweep.dir={tmp_path / 'typo'}")
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "typo").exists()


def test_search_space_from_the_preset_and_the_command_line():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.expkit_plugins.optuna_sweeper import distributions

    with open(ROOT / "conf/experiment/hpo/mlp_lr_width.yaml") as f:
        params = yaml.safe_load(f)["hydra"]["sweeper"]["params"]
    parser = OverridesParser.create()
    space, fixed = distributions(params, ["model.width=16,32", "trainer.epochs=2", "model.depth=range(2,8,2)"], parser)
    lr = space["optim.lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log and (lr.low, lr.high) == (1e-5, 1.0)
    assert space["model.width"].choices == (16, 32)  # the command line replaces the preset's choice
    assert isinstance(space["model.depth"], optuna.distributions.IntDistribution)
    assert (space["model.depth"].low, space["model.depth"].high, space["model.depth"].step) == (2, 6, 2)
    assert fixed == ["trainer.epochs=2"]
