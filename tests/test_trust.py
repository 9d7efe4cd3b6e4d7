"""What the user asks for is what runs: precedence, presets, job identity, re-runs, the ex4 setup."""
import json
import os

import pandas as pd
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import ROOT, compose_cfg, run_cli, run_python
from expkit.errors import UserError
from hydra_plugins.expkit_plugins.sweeper import expand


def jobs(params, *args):
    return [sorted(j) for j in expand(params, list(args), OverridesParser.create())]


# ---- precedence: the command line replaces a preset's sweep of the same key ----

def test_command_line_replaces_a_paired_key_and_identical_jobs_run_once():
    params = {"model.depth,model.width": "[1,16],[2,16],[6,16],[10,16],[6,8],[6,32],[6,64]"}
    assert len(jobs(params)) == 7
    got = jobs(params, "model.width=8,32")
    assert len(got) == 8  # depths {1, 2, 6, 10} x widths {8, 32}: (6, w) four times in the preset -> once
    assert {tuple(j) for j in got} == {(f"model.depth={d}", f"model.width={w}") for d in (1, 2, 6, 10) for w in (8, 32)}


def test_command_line_replaces_a_grid_key_in_place():
    assert jobs({"optim.lr": "1,0.01"}, "optim.lr=0.5") == [["optim.lr=0.5"]]
    assert jobs({"optim.lr": "1,0.01"}, "seed=1,2") == [["optim.lr=1", "seed=1"], ["optim.lr=1", "seed=2"],
                                                          ["optim.lr=0.01", "seed=1"], ["optim.lr=0.01", "seed=2"]]


def test_malformed_paired_tuple_is_a_user_error():
    with pytest.raises(UserError, match="list of 2"):
        jobs({"model.depth,model.width": "[1,16],[2]"})
    with pytest.raises(UserError, match="cannot parse"):
        jobs({"model.depth,model.width": "[1,16],[2"})


def test_malformed_paired_tuple_in_a_users_preset_is_one_line(tmp_path):
    (tmp_path / "cfg" / "experiment").mkdir(parents=True)
    (tmp_path / "cfg" / "experiment" / "bad.yaml").write_text(
        '# @package _global_\nhydra:\n  sweeper:\n    params:\n      model.depth,model.width: "[1,16],[2]"\n')
    r = run_cli("-m", "--config-dir", tmp_path / "cfg", "experiment=bad", f"hydra.sweep.dir={tmp_path / 's'}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: paired sweep"), r.stderr[-2000:]
    assert not (tmp_path / "s" / "0").exists()


def test_paired_epochs_yield_to_the_command_line(countries_root, tmp_path):
    out = tmp_path / "s"
    r = run_cli("-m", "experiment=ex4/batch_size", "trainer.epochs=1", f"data.root={countries_root}",
                "trainer.record_steps=false", f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["trainer.batch_size"]) == [1, 16, 128, 1024] and (df.epochs_run == 1).all()
    assert "command line replaces trainer.epochs in the paired sweep" in r.stdout + r.stderr


# ---- several presets in one sweep ----

def test_each_preset_runs_its_own_sweep_in_its_own_dir(countries_root, tmp_path):
    out = tmp_path / "s"
    r = run_cli("-m", "experiment=ex4/lr,ex4/implicit", "trainer.epochs=1", f"data.root={countries_root}",
                f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    lr, implicit = pd.read_csv(out / "ex4_lr" / "results.csv"), pd.read_csv(out / "ex4_implicit" / "results.csv")
    assert sorted(lr["optim.lr"]) == [0.0001, 0.001, 0.01, 1.0]
    assert sorted(implicit["model.encoding"]) == ["raw", "sines"]
    assert (out / "ex4_lr" / "val_loss_vs_epoch.png").exists() and list((out / "ex4_implicit").glob("boundary_*.png"))
    assert len(pd.read_csv(out / "results.csv")) == 6  # the merged table


# ---- a sweep dir knows its jobs by config ----

def test_rerun_with_reordered_values_skips_finished_configs(countries_root, tmp_path):
    out = tmp_path / "s"
    args = ("trainer.epochs=1", f"data.root={countries_root}", f"hydra.sweep.dir={out}")
    assert run_cli("-m", "optim.lr=0.1,0.01", *args).returncode == 0
    before = {d: (out / d / "metrics.csv").stat().st_mtime_ns for d in ("0", "1")}
    r = run_cli("-m", "optim.lr=0.01,0.1,0.001", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {d: (out / d / "metrics.csv").stat().st_mtime_ns for d in ("0", "1")} == before  # untouched
    assert (r.stdout + r.stderr).count("already finished") == 2
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["optim.lr"]) == [0.001, 0.01, 0.1]  # one row per config
    lr_of = {d.name: json.loads((d / "summary.json").read_text())["config"]["optim"]["lr"]
             for d in out.iterdir() if (d / "summary.json").exists()}
    assert lr_of == {"0": 0.1, "1": 0.01, "2": 0.001}


def test_jobs_from_before_a_schema_gained_a_key_are_still_known(countries_root, tmp_path):
    """A sweep dir written before a key was added (at its default) is not re-run into new dirs;
    a job whose value differs from the new default is a different job."""
    import yaml

    out = tmp_path / "s"
    args = ("trainer.epochs=1", f"data.root={countries_root}", f"hydra.sweep.dir={out}")
    assert run_cli("-m", "optim.lr=0.1,0.01", *args).returncode == 0
    for d in ("0", "1"):  # as an older expkit wrote them: no checkpoint_every_s, no data.split_seed
        f = out / d / ".hydra" / "config.yaml"
        cfg = yaml.safe_load(f.read_text())
        del cfg["trainer"]["checkpoint_every_s"]
        cfg["data"].pop("split_seed", None)
        f.write_text(yaml.safe_dump(cfg))
    r = run_cli("-m", "optim.lr=0.1,0.01", *args)
    assert r.returncode == 0 and (r.stdout + r.stderr).count("already finished") == 2
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["0", "1"]
    r = run_cli("-m", "optim.lr=0.1", "trainer.checkpoint_every_s=5", *args)  # not the default: a new job
    assert r.returncode == 0 and "already finished" not in r.stdout + r.stderr and (out / "2").is_dir()


def test_a_run_never_writes_into_a_dir_of_another_config(countries_root, tmp_path):
    d = tmp_path / "r"
    assert run_cli("trainer.epochs=1", f"data.root={countries_root}", f"hydra.run.dir={d}").returncode == 0
    before = (d / "summary.json").read_text()
    r = run_cli("trainer.epochs=1", "optim.lr=0.1", f"data.root={countries_root}", f"hydra.run.dir={d}")
    assert r.returncode == 2 and "holds the results of another config" in r.stderr, r.stderr[-2000:]
    assert (d / "summary.json").read_text() == before


def test_expkit_rerun_always_trains_afresh_and_compares(countries_root, tmp_path):
    d = tmp_path / "r"
    assert run_cli("trainer.epochs=2", f"data.root={countries_root}", f"hydra.run.dir={d}").returncode == 0
    for n in (1, 2):
        r = run_python("-m", "expkit.rerun", str(d))
        assert r.returncode == 0 and "identical metrics" in r.stdout, r.stdout + r.stderr
        assert "skipping" not in r.stdout + r.stderr and (d / f"rerun_{n}" / "metrics.csv").exists()
    m = pd.read_csv(d / "metrics.csv")
    m.loc[1, "val_loss"] += 1e-3  # a tampered original: the comparison must notice
    m.to_csv(d / "metrics.csv", index=False)
    r = run_python("-m", "expkit.rerun", str(d))
    assert r.returncode == 1 and "differ in ['val_loss']" in r.stdout, r.stdout


# ---- the ex4 MLP presets run the course's setup ----

EX4_MLP = ["ex4/lr", "ex4/epochs", "ex4/batchnorm", "ex4/batch_size", "ex4/depth_width", "ex4/gradients",
           "ex4/gradients_fixed", "ex4/implicit"]


@pytest.mark.parametrize("preset", EX4_MLP)
def test_ex4_mlp_presets_feed_raw_coordinates(preset, countries_root):
    from expkit.data import load
    from expkit.models import build

    cfg = compose_cfg([f"experiment={preset}", f"data.root={countries_root}"])
    assert cfg.model.name == "mlp" and cfg.model.standardize is False
    _, model = build(cfg.model, load(cfg.data))
    assert not any(type(m).__name__ == "Standardize" for m in model.modules())


def test_ex4_lr_grid_is_the_exercise_grid():
    from hydra import compose, initialize_config_dir  # the sweep params live in the hydra node

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=ex4/lr"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params["optim.lr"] == "1,0.01,0.001,0.0001"


def test_no_bias_in_a_linear_feeding_batchnorm(countries_root):
    from expkit.data import load
    from expkit.models import build

    cfg = compose_cfg([f"data.root={countries_root}", "model.batchnorm=true"])
    _, model = build(cfg.model, load(cfg.data))
    assert all(b.linear.bias is None for b in model.blocks) and model.head.bias is not None
    cfg = compose_cfg([f"data.root={countries_root}"])
    assert all(b.linear.bias is not None for b in build(cfg.model, load(cfg.data))[1].blocks)


def test_gradient_metric_is_the_weight_matrix_norm(countries_root, tmp_path):
    """One full-batch step per epoch: epoch 1's value is ||dL/dW||^2 at initialisation, by hand."""
    from expkit.data import load
    from expkit.models import build
    from expkit.runner import run

    over = [f"data.root={countries_root}", "trainer.epochs=1", "trainer.batch_size=100000", "trainer.grad_layers=[0,3]"]
    run(compose_cfg(over), tmp_path / "r")
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    cfg = compose_cfg(over)
    splits = load(cfg.data)
    torch.manual_seed(cfg.seed)
    _, model = build(cfg.model, splits)
    loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(splits.train.x)), torch.as_tensor(splits.train.y))
    loss.backward()
    for layer in (0, 3):
        w, b = model.linears[layer].weight.grad, model.linears[layer].bias.grad
        assert m[f"grad_sq_layer{layer}"][0] == pytest.approx(w.pow(2).sum().item(), rel=1e-4)
        assert m[f"grad_sq_bias_layer{layer}"][0] == pytest.approx(b.pow(2).sum().item(), rel=1e-4)


def test_hydra_full_error_shows_the_traceback(countries_root, tmp_path):
    args = ["train.py", f"data.root={countries_root}", "trainer.grad_layers=[50]", f"hydra.run.dir={tmp_path / 'r'}"]
    import subprocess
    import sys

    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "out of range" in r.stderr
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    r = subprocess.run([sys.executable, "train.py", "experiment=ex4/lrr"], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_sweep_ends_with_a_compact_table_best_first():
    from expkit.report.tables import terminal_table

    df = pd.DataFrame({"job": ["0", "1", "2", "3"], "optim.lr": [0.1, 0.1, 0.01, 0.01], "seed": [1, 2, 1, 2],
                       "status": ["completed"] * 4, "val_acc": [0.5, 0.7, 0.8, 0.9], "test_acc": [0.4, 0.6, 0.7, 0.8],
                       "wall_time_s": [1.0, 3.0, 2.0, 2.0]})
    lines = terminal_table(df).splitlines()
    assert lines[0].split() == ["optim.lr", "status", "n", "val_acc", "test_acc", "time_s"]
    assert lines[2].split()[:6] == ["0.01", "completed", "x2", "2", "0.8500", "±"]  # best config first, mean ± std
    assert lines[3].startswith("0.1") and "0.6000 ± 0.1414" in lines[3]


def test_progress_lines_name_the_job_and_the_eta(countries_root, tmp_path):
    r = run_cli("-m", f"data.root={countries_root}", "trainer.epochs=2", "optim.lr=0.1,0.01",
                f"hydra.sweep.dir={tmp_path / 's'}")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "job #0/2 epoch 1/2" in out and "job #1/2 epoch 2/2" in out, out[-2000:]
    assert "ETA 0m0" in out  # plain lines off a terminal, with the time left
    assert "\x1b[" not in (tmp_path / "s" / "0" / "expkit.log").read_text()  # no terminal codes in the log file


def test_the_eta_leaves_out_the_compile_time():
    """A compiled run's first epoch waits for the compile (seconds, once): the ETA is the pace of the steps, not
    that wait spread over every epoch left (a 50-epoch run of 0.2 s epochs said 6m15s after a 7 s compile)."""
    import time

    from expkit.trainers.progress import Progress

    started = (0, time.perf_counter() - 11.0)  # 11 s ago: 10 s compiling, then 1 s for epoch 1's 10 steps
    bar = Progress(0, 10, 10, started, excluded=lambda: 10.0)
    assert bar.eta(10) == pytest.approx(9.0, abs=0.2)
    assert Progress(0, 10, 10, started).eta(10) == pytest.approx(99.0, abs=1)  # nothing excluded: the wait counts


def test_types_are_checked_when_the_config_is_composed():
    """trainer/optim/logger/report take their defaults and types from expkit/config.py's schemas
    (one source), so even `--cfg job` rejects a wrong type."""
    r = run_cli("trainer.epochs=abc", "--cfg", "job")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "could not be converted to Integer" in lines[0], r.stderr
    text = (ROOT / "conf" / "trainer" / "default.yaml").read_text()
    assert "epochs" not in text  # the default lives in TrainerConf only
    assert "epochs: 50" in run_cli("--cfg", "job").stdout
