"""The Optuna sweeper fuses its batches as the grid sweeper does (issue 18 item 1): a batch of n_jobs
trials that differ only in lr trains as one group job, each trial still in its own dir with its trial
file, and the study is told each trial's own best val accuracy from its summary.json."""
import json
from pathlib import Path

import pytest

from conftest import run_cli, write_countries

optuna = pytest.importorskip("optuna", minversion="3", reason="pip install -e '.[hpo]'")


def _sweep(tmp_path, data, name, *args):
    out = tmp_path / name
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", f"data.root={data}", "model.width=8",
                f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={out}", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")
    return r.stdout + r.stderr, study.trials


def test_optuna_batches_fuse_and_each_trial_is_told_its_own_summary(tmp_path):
    data = write_countries(tmp_path / "d", n=200)
    log, trials = _sweep(tmp_path, data, "fuse", "trainer.epochs=2", "hydra.sweeper.n_jobs=4",
                         "hydra.sweeper.n_trials=4", "hydra.sweeper.fuse=true")
    assert "fused: 4 job(s) train as 1 unit(s)" in log and "Launching 1 jobs" in log
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    dirs = set()
    for t in trials:
        d = Path(t.user_attrs["dir"])
        summary = json.loads((d / "summary.json").read_text())
        assert t.value == summary["best"]["val_acc"] and summary["status"] == "completed"
        assert summary["group_size"] == 4 and d.name == f"trial_{t.number}"
        assert json.loads((d / "optuna_trial.json").read_text())["number"] == t.number
        assert (d / ".hydra" / "config.yaml").exists() and (d / "metrics.csv").exists()
        dirs.add(d)
    assert len(dirs) == 4 and len({t.params["optim.lr"] for t in trials}) == 4

    # the shorthand: hydra/launcher=fused under the Optuna sweeper fuses too (groups of max_group)
    log, trials = _sweep(tmp_path, data, "shorthand", "trainer.epochs=1", "hydra.sweeper.n_jobs=4",
                         "hydra.sweeper.n_trials=4", "hydra/launcher=fused", "hydra.sweeper.max_group=2")
    assert "fused: 4 job(s) train as 2 unit(s) (2 group(s) of 2, 2)" in log
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
