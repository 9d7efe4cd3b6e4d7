"""Fusing is a sweeper policy (hydra.sweeper.fuse=true): group jobs that any launcher runs, spread
over workers and GPUs; each member keeps its own run dir and files; a re-run skips finished members."""
import json
import os
import re
import subprocess
import sys
from datetime import datetime

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import ROOT, run_cli
from hydra_plugins.expkit_plugins.fusing import Job, plan


def jobs_for(overrides_per_job):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return [Job(k, list(o), compose("config", overrides=list(o), return_hydra_config=True))
                for k, o in enumerate(overrides_per_job)]


def test_plan_bounds_groups_spreads_them_over_gpus_and_puts_the_costliest_first():
    seeds = [[f"seed={s}"] for s in range(12)]
    other = [["model.depth=2", f"seed={s}"] for s in range(3)]
    units = plan(jobs_for(seeds + other))
    assert [len(u) for u in units] == [12, 3]  # no bound on the CPU: one group per shape
    units = plan(jobs_for(seeds + other), max_group=5)
    assert [len(u) for u in units] == [5, 5, 2, 3]  # bounded, costliest first (2 of depth 6 > 3 of depth 2)
    assert sorted(j.num for u in units for j in u) == list(range(15))
    units = plan(jobs_for([[f"seed={s}"] for s in range(64)]), devices=8)
    assert [len(u) for u in units] == [8] * 8  # 64 seeds on 8 GPUs: 8 groups of 8, not one of 64
    units = plan(jobs_for(seeds + other), devices=4)
    assert len(units) >= 4 and max(len(u) for u in units) <= 6
    # costliest first (longest-processing-time-first), not largest: ex4/depth_width's groups of 3 seeds went
    # out in job order, so the 6x64 group ran alone on one worker at the end
    shapes = [["model.depth=1"], ["model.depth=6", "model.width=64"], ["model.depth=10"], ["model.depth=6"]]
    units = plan(jobs_for([[*o, f"seed={s}"] for o in shapes for s in (1, 2, 3)]))
    assert [(u[0].cfg.model.depth, u[0].cfg.model.width) for u in units] == [(6, 64), (10, 16), (6, 16), (1, 16)]
    units = plan(jobs_for([["model.depth=1", f"seed={s}"] for s in range(4)] + [["model.depth=6", "seed=1"],
                                                                                 ["model.depth=6", "seed=2"]]))
    assert [len(u) for u in units] == [2, 4]  # 2 members of depth 6 cost more than 4 of depth 1
    pairs = [("1", "1"), ("16", "10"), ("128", "50"), ("1024", "50")]  # ex4/batch_size: (batch size, epochs)
    units = plan(jobs_for([[f"trainer.batch_size={b}", f"trainer.epochs={e}", f"seed={s}"]
                           for b, e in reversed(pairs) for s in (1, 2)]))
    assert [u[0].cfg.trainer.batch_size for u in units] == [1, 16, 128, 1024]
    alone = plan(jobs_for([["model=xgboost"], ["optim.lr=-1"], ["seed=1"]]))
    why = sorted(u[0].why_alone.split(" (")[0] for u in alone)
    assert why[0].startswith("invalid config") and "estimator" in why[1] and "no other job" in why[2]


def test_groups_spread_over_the_joblib_workers_as_over_gpus(monkeypatch):
    """ex4/lr (4 lrs x 3 seeds, one shape) on joblib n_jobs=2 trained as one group of 12 beside an idle core."""
    from omegaconf import OmegaConf

    import expkit.placement
    from hydra_plugins.expkit_plugins.fusing import local_slots

    monkeypatch.setattr(expkit.placement, "visible_devices", lambda: [])
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert local_slots(OmegaConf.create({"_target_": joblib, "n_jobs": 2})) == 2
    assert local_slots(OmegaConf.create({"_target_": joblib, "n_jobs": -1})) == len(os.sched_getaffinity(0))
    assert local_slots(OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})) == 0
    assert local_slots(OmegaConf.create({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher."
                                                     "SlurmLauncher"})) == 0
    monkeypatch.setattr(expkit.placement, "visible_devices", lambda: list(range(4)))
    assert local_slots(OmegaConf.create({"_target_": joblib, "n_jobs": 2})) == 4
    units = plan(jobs_for([[f"optim.lr={lr}", f"seed={s}"] for lr in (1, 0.01, 0.001, 0.0001) for s in (1, 2, 3)]),
                 devices=2)
    assert [len(u) for u in units] == [6, 6]


def test_planning_groups_does_not_import_torch():
    """A sweep's main process plans its groups without torch (whose import cost ~2 s of every fused sweep
    when model kinds were read from the model modules): workers import it."""
    code = ("import sys; sys.path[:0] = ['tests', '.']; from test_fuse_anywhere import jobs_for, plan; "
            "u = plan(jobs_for([['seed=1'], ['seed=2'], ['model=xgboost']])); "
            "print(len(u), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stderr[-2000:]


def log_span(path):
    """(first, last) timestamps of a job log."""
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]", path.read_text(), re.M)
    t = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f") for s in stamps]
    return t[0], t[-1]


@pytest.mark.slow
def test_fused_groups_run_in_parallel_on_joblib_and_a_rerun_skips_them(tmp_path):
    """The issue's command, on small data: two groups of 4 train at the same time, 8 normal run dirs."""
    out = tmp_path / "s"
    args = ["-m", "experiment=hw6/synth_kernels", "seed=1,2,3,4,5,6,7,8", "data.n=200", "trainer.epochs=2",
            "hydra.sweeper.fuse=true", "hydra.sweeper.max_group=4", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={out}"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    assert "fused: 8 job(s) train as 2 unit(s) (2 group(s) of 4, 4)" in text
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [d.name for d in dirs] == [str(i) for i in range(8)]
    groups = set()
    for d in dirs:  # each member: its own .hydra/, log and files, as a separate run leaves them
        assert {p.name for p in (d / ".hydra").iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
        assert (d / "expkit.log").exists() and (d / "metrics.csv").exists() and (d / "model.pt").exists()
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "completed" and s["group_size"] == 4 and d.name in s["fused_with"]
        seed = int(yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())[0].split("=")[1])
        assert s["config"]["seed"] == seed
        groups.add(tuple(s["fused_with"]))
    assert len(groups) == 2
    (a, b) = [log_span(out / g[0] / "expkit.log") for g in groups]
    assert a[0] < b[1] and b[0] < a[1], (a, b)  # the two groups' jobs overlapped in time
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 8 and set(table.status) == {"completed"}

    again = run_cli(*args)
    assert again.returncode == 0 and "sweep: 8 job(s), 0 to run" in again.stdout + again.stderr


def test_the_fused_launcher_under_a_sweeper_that_cannot_fuse_stops_with_one_line(tmp_path):
    r = run_cli("-m", "hydra/sweeper=basic", "hydra/launcher=fused", "seed=1,2", "trainer.epochs=1",
                f"hydra.sweep.dir={tmp_path / 's'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: hydra/launcher=fused needs expkit's sweeper")
    assert not list((tmp_path / "s").glob("*/summary.json"))
