"""Sweeps do what was typed (issue 17, Trust II): a sweep over `sweep=` or a glob of presets runs each
option's own sweep; a command-line key (also ++key) replaces a preset's search; a finished dir wins
a job identity; `-m ... --cfg job` previews a sweep; the one-line errors a newcomer meets."""
import json

import pandas as pd
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli, write_countries
from expkit.cli import sweep_preview_argv
from hydra_plugins.expkit_plugins.sweeper import existing_jobs, expand


def one_error_line(r, says):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


@pytest.fixture
def small(tmp_path):
    return write_countries(tmp_path / "d", n=120)


# ---- item 2: -m sweep=a,b runs each option's own sweep ----

def test_sweep_group_list_runs_each_options_sweep_in_its_own_dir(small, tmp_path):
    out = tmp_path / "s"
    r = run_cli("-m", "sweep=lr,batch_size", "trainer.epochs=1", "trainer.record_steps=false", f"data.root={small}",
                f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stdout + r.stderr
    assert "1 to run" not in log
    assert sorted(pd.read_csv(out / "lr" / "results.csv")["optim.lr"]) == [0.0001, 0.001, 0.01, 1.0]
    assert sorted(pd.read_csv(out / "batch_size" / "results.csv")["trainer.batch_size"]) == [1, 16, 128, 1024]
    assert len(pd.read_csv(out / "results.csv")) == 8  # the merged table
    # issue 22: the per-job line shows the user's overrides only; the job counter still reaches the job
    job_lines = [ln for ln in log.splitlines() if "\t#" in ln]
    assert job_lines and not any("hydra." in ln or "EXPKIT_JOB" in ln for ln in job_lines), job_lines
    assert "job #0/4 epoch 1/1" in log and "job #3/4 epoch 1/1" in log


# ---- item 4: a command-line key, with or without +/++, replaces a preset's search ----

def test_plus_plus_key_replaces_the_grid_presets_sweep():
    parser = OverridesParser.create()
    assert expand({"optim.lr": "1,0.01"}, ["++optim.lr=0.5"], parser) == [["++optim.lr=0.5"]]
    got = expand({"model.depth,model.width": "[1,16],[2,16]"}, ["++model.width=8"], parser)
    assert sorted(map(sorted, got)) == [["++model.width=8", "model.depth=1"], ["++model.width=8", "model.depth=2"]]


def test_plus_plus_key_replaces_the_optuna_presets_search(tmp_path):
    pytest.importorskip("optuna", minversion="3")
    from hydra_plugins.expkit_plugins.optuna_sweeper import distributions

    params = {"optim.lr": "tag(log, interval(1e-5, 1.0))", "model.width": "choice(8, 16, 32, 64)"}
    space, fixed = distributions(params, ["++optim.lr=0.5", "++model.width=choice(4,5)"], OverridesParser.create())
    assert list(space) == ["model.width"] and space["model.width"].choices == (4, 5)  # one width, no lr search
    assert fixed == ["++optim.lr=0.5"]

    data = write_countries(tmp_path / "d", n=120)
    out = tmp_path / "s"
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "++optim.lr=0.5", "++model.width=choice(4,5)",
                "hydra.sweeper.n_trials=2", "trainer.epochs=1", f"data.root={data}", f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "command line replaces the preset's search over optim.lr" in r.stdout + r.stderr
    for d in out.glob("trial_*"):
        cfg = yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == 0.5 and cfg["model"]["width"] in (4, 5)


# ---- item 7: a finished dir wins a job identity ----

def test_a_finished_dir_wins_over_an_unfinished_one_of_the_same_config(tmp_path):
    cfg = compose_cfg(["trainer.epochs=1"])
    for name, status in (("0", None), ("1", "completed"), ("2", "failed")):  # "0" sorts first: unfinished
        (tmp_path / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, tmp_path / name / ".hydra" / "config.yaml")
        if status:
            (tmp_path / name / "summary.json").write_text(json.dumps({"status": status}))
    assert list(existing_jobs(tmp_path).values()) == [("1", True)]


# ---- item 9: glob(...) over experiment / sweep ----

def test_glob_over_presets_runs_each_and_leaves_out_another_sweepers(small, tmp_path):
    out = tmp_path / "s"
    r = run_cli("-m", "experiment=glob([ex4/lr,ex4/imp*,hpo/*],exclude=ex4/linear*)", "trainer.epochs=1",
                f"data.root={small}", f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["ex4_implicit", "ex4_lr"]
    assert len(pd.read_csv(out / "results.csv")) == 6
    left = [ln for ln in (r.stdout + r.stderr).splitlines() if "left out" in ln]
    assert len(left) == 1 and "hpo/mlp_lr_width" in left[0] and "hydra/sweeper=optuna" in left[0]


def test_glob_and_list_mistakes_are_one_line(tmp_path):
    out = tmp_path / "s"
    for args, says in ((["experiment=glob(ex4/zz*)"], "matches no experiment option"),
                       (["sweep=glob(zz*)"], "matches no sweep option"),
                       (["experiment=glob(hpo/*)"], "brings another sweeper"),
                       (["experiment=ex4/lr,hpo/mlp_lr_width"], "run it alone")):
        one_error_line(run_cli("-m", *args, f"hydra.sweep.dir={out}"), says)
        assert not out.exists()


# ---- item 11: -m ... --cfg job previews the sweep ----

def test_preview_argv_forms():
    assert sweep_preview_argv(["-m", "a=1,2", "--cfg", "job"]) == ["-m", "a=1,2"]
    assert sweep_preview_argv(["--cfg=all", "--resolve", "--multirun", "-p", "model", "a=1"]) == ["--multirun", "a=1"]
    assert sweep_preview_argv(["-c", "job", "-cd", "d", "-m"]) == ["-cd", "d", "-m"]
    assert sweep_preview_argv(["--cfg", "job", "a=1"]) is None and sweep_preview_argv(["-m", "a=1,2"]) is None


def test_preview_shows_jobs_finished_ones_and_fused_units_and_writes_nothing(small, tmp_path):
    out = tmp_path / "s"
    common = ("trainer.epochs=1", f"data.root={small}", f"hydra.sweep.dir={out}")
    assert run_cli("-m", "optim.lr=0.1", "seed=1", *common).returncode == 0
    before = sorted(str(p) for p in out.rglob("*"))
    for order in (("--cfg", "job", "-m"), ("-m", "--cfg", "job")):
        r = run_cli(*order, "optim.lr=0.1,0.01", "seed=1,2", "model=mlp,logreg", *common)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        text = r.stdout
        assert "8 job(s): 7 to run, 1 already finished there" in text, text
        assert "finished in 0" in text and "optim.lr=0.01 seed=2 model=logreg" in text
        assert "hydra." not in text.split("sweep preview", 1)[1]
        assert "together: #2 + #4 + #6" in text  # the mlp jobs fuse; the estimators run alone, saying why
        assert text.count("alone:") == 4 and "is an estimator" in text
        assert sorted(str(p) for p in out.rglob("*")) == before  # nothing written
    fresh = tmp_path / "new"
    r = run_cli("-m", "sweep=lr,batch_size", "--cfg", "job", f"hydra.sweep.dir={fresh}")
    assert r.returncode == 0 and "sweep preview" in r.stdout and str(fresh / "batch_size") in r.stdout
    assert not fresh.exists()


def test_preview_of_an_optuna_preset_shows_its_search(tmp_path):
    pytest.importorskip("optuna", minversion="3")
    out = tmp_path / "s"
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "--cfg", "job", f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "optim.lr: float in [1e-05, 1.0], log scale" in r.stdout and "model.width: one of 8, 16, 32, 64" in r.stdout
    assert "pruner: MedianPruner(n_startup_trials=5, n_warmup_steps=2)" in r.stdout and "n_trials=20" in r.stdout
    assert not out.exists()


# ---- issue 22: one-line errors that say what to do ----

def test_forgotten_m_and_typod_key_say_what_to_do(tmp_path):
    line = one_error_line(run_cli("optim.lr=0.01,0.001", f"hydra.run.dir={tmp_path / 'r'}"), "Ambiguous value")
    assert "add -m" in line
    line = one_error_line(run_cli("model.widht=32", f"hydra.run.dir={tmp_path / 'r'}"), "did you mean model.width?")
    assert "+model.widht" not in line
    # a typo in a sweep: nothing written, not even the sweep dir's multirun.yaml
    one_error_line(run_cli("-m", "model.depth=3,4", "model.widht=4", f"hydra.sweep.dir={tmp_path / 's'}"),
                   "did you mean model.width?")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
