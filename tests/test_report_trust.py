"""Trust II: a config that changes nothing is refused; one notion of "the same configuration" for
jobs, tables and the merged report (compared by value); the seed column of an extended sweep; the
terminal table and results_by_config agree on which jobs count."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from conftest import compose_cfg, run_cli
from expkit.config import identity, validate
from expkit.errors import UserError


# ---- optim: momentum only where it is read, every value in range ----

@pytest.mark.parametrize("overrides,words", [
    (["optim.momentum=0.9"], "optim.momentum=0.9 has no effect with optim=adam"),
    (["optim=sgd", "optim.momentum=-0.1"], "optim.momentum must be in [0, 1)"),
    (["optim=sgd", "optim.momentum=1"], "optim.momentum must be in [0, 1)"),
    (["optim=sgd", "optim.momentum=nan"], "optim.momentum must be in [0, 1)"),
    (["optim.lr=-0.1"], "optim.lr must be > 0 and finite"),
    (["optim.lr=inf"], "optim.lr must be > 0 and finite"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay must be >= 0 and finite"),
    (["optim=sgd", "optim.weight_decay=nan"], "optim.weight_decay must be >= 0 and finite"),
])
def test_optim_values_that_change_nothing_or_make_no_sense_are_refused(overrides, words):
    with pytest.raises(UserError) as info:
        validate(compose_cfg(overrides))
    assert words in str(info.value)


def test_sgd_momentum_and_the_defaults_validate():
    assert validate(compose_cfg(["optim=sgd", "optim.momentum=0.9"])).optim.momentum == 0.9
    assert validate(compose_cfg(["optim=sgd", "optim.momentum=0"])).optim.name == "sgd"
    assert validate(compose_cfg([])).optim.momentum == 0


def test_adam_momentum_on_the_command_line_is_one_error_line(countries_root, tmp_path):
    r = run_cli(f"data.root={countries_root}", "trainer.epochs=1", "optim.momentum=0.9", f"hydra.run.dir={tmp_path / 'r'}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: optim.momentum=0.9"), r.stderr[-2000:]
    assert not (tmp_path / "r").exists()


# ---- one notion of the same configuration: by value, from each job's config ----

def _job(d, overrides, cfg_overrides, seed, val_acc, status="completed"):
    """A finished job dir as a run leaves it, its config composed from cfg_overrides (+ seed)."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    cfg = compose_cfg([*cfg_overrides, f"seed={seed}"])
    OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
    final = {"epoch": 1, "train_acc": val_acc, "val_acc": val_acc, "test_acc": val_acc, "train_loss": 1.0,
             "val_loss": 1.0, "test_loss": 1.0}
    (d / "summary.json").write_text(json.dumps({
        "status": status, "final": final, "best": {"epoch": 1, "val_acc": val_acc, "test_acc": val_acc},
        "epochs_run": 1, "wall_time_s": 1.0, "seed": seed, "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg)}))


def test_identity_compares_by_value_and_leaves_out_the_seed_when_asked():
    a, b = compose_cfg(["optim.lr=1", "seed=1"]), compose_cfg(["optim.lr=1.0", "seed=2"])
    assert identity(a) != identity(b) and identity(a, seed=False) == identity(b, seed=False)
    assert identity(a, seed=False) != identity(compose_cfg(["optim.lr=0.5", "seed=1"]), seed=False)
    assert identity({"seed": 1, "model": {"name": "mlp"}}, seed=False) == identity({"seed": 3, "model": {"name": "mlp"}},
                                                                                  seed=False)  # not valid: as composed


@pytest.mark.parametrize("merged", [False, True])
def test_the_same_override_text_for_different_configs_is_two_configurations(tmp_path, merged):
    """A preset edited between two runs into one sweep dir, or two sweeps pooled by expkit.report: the
    override text is the same (experiment=mine seed=N), the configs differ (model.width 8 / 32)."""
    from expkit.report.__main__ import main

    a, b = (tmp_path / "a", tmp_path / "b") if merged else (tmp_path / "s", tmp_path / "s")
    for root, width, first in ((a, 8, 0), (b, 32, 2)):
        for k, seed in enumerate((1, 2)):
            _job(root / str(first + k), ["experiment=mine", f"seed={seed}"], [f"model.width={width}"], seed,
                 0.5 + width / 100 + k / 100)
    out = tmp_path / "m"
    assert main([str(a), str(b), "--out", str(out)] if merged else [str(a), "--out", str(out)]) == 0
    t = pd.read_csv(out / "results_by_config.csv")
    assert list(t["model.width"]) == [8, 32] and list(t.n) == [2, 2]
    assert list(t.val_acc_mean) == pytest.approx([0.585, 0.825])
    assert list(pd.read_csv(out / "results.csv")["model.width"]) == [8, 8, 32, 32]


def test_one_value_written_two_ways_is_one_configuration(tmp_path):
    """Hand-made: optim.lr=1 (seeds 1, 2), optim.lr=1.0 (seed 3) and optim.lr=0.1 in one dir: lr 1.0 is one row, n = 3."""
    from expkit.report.aggregate import by_config, collect
    from expkit.report.tables import terminal_table

    for i, (text, seed) in enumerate((("1", 1), ("1", 2), ("1.0", 3), ("0.1", 1))):
        _job(tmp_path / "s" / str(i), [f"optim.lr={text}", f"seed={seed}"], [f"optim.lr={text}"], seed, 0.5 + i / 10)
    df = collect([tmp_path / "s"])
    assert list(df["optim.lr"]) == [1.0, 1.0, 1.0, 0.1] and list(df.seed) == [1, 2, 3, 1]
    t = by_config(df)
    assert list(t["optim.lr"]) == [1.0, 0.1] and list(t.n) == [3, 1] and t.seeds[0] == "1,2,3"
    assert t.val_acc_mean[0] == pytest.approx(0.6)
    lines = terminal_table(df).splitlines()
    assert len(lines) == 4 and lines[3].split()[:4] == ["1.0", "completed", "x3", "3"]


def test_cli_one_value_written_two_ways_skips_finished_seeds_and_is_one_row(countries_root, tmp_path):
    out = tmp_path / "s"
    args = ("trainer.epochs=1", f"data.root={countries_root}", f"hydra.sweep.dir={out}")
    assert run_cli("-m", "optim.lr=1", "seed=1,2", *args).returncode == 0
    r = run_cli("-m", "optim.lr=1.0", "seed=1,2,3", *args)
    assert r.returncode == 0 and (r.stdout + r.stderr).count("already finished") == 2, r.stderr[-2000:]
    t = pd.read_csv(out / "results_by_config.csv", dtype={"seeds": str})
    assert len(t) == 1 and list(t.n) == [3] and list(t.seeds) == ["1,2,3"]
    assert "optim.lr" not in t  # one value: not a swept key
    assert list(pd.read_csv(out / "results.csv").seed) == [1, 2, 3]
    assert "completed x3  3" in r.stdout


# ---- a seed added to a finished sweep: the seed column, by value, missing values counted ----

def test_a_job_without_a_seed_override_shows_the_seed_it_ran(tmp_path):
    from expkit.report.aggregate import by_config, collect

    s = tmp_path / "s"
    _job(s / "0", ["optim.lr=0.1"], ["optim.lr=0.1"], 42, 0.5)  # run before seed was swept: seed 42
    _job(s / "1", ["optim.lr=0.01"], ["optim.lr=0.01"], 42, 0.6)
    _job(s / "2", ["optim.lr=0.1", "seed=1"], ["optim.lr=0.1"], 1, 0.7)
    _job(s / "3", ["optim.lr=0.01", "seed=1"], ["optim.lr=0.01"], 1, 0.8)
    df = collect([s])
    assert list(df.columns[:3]) == ["job", "optim.lr", "seed"] and list(df.seed) == [42, 42, 1, 1]
    t = by_config(df)
    assert list(t["optim.lr"]) == [0.1, 0.01] and list(t.seeds) == ["42,1", "42,1"]
    assert list(t.val_acc_mean) == pytest.approx([0.6, 0.7])


def test_cli_sweep_extended_by_a_seed_gets_its_seed_column_and_by_config(countries_root, tmp_path):
    from conftest import run_python

    out = tmp_path / "s"
    args = ("trainer.epochs=1", f"data.root={countries_root}", f"hydra.sweep.dir={out}")
    assert run_cli("-m", "optim.lr=0.1,0.01", *args).returncode == 0
    r = run_cli("-m", "optim.lr=0.1,0.01", "seed=42,1", *args)
    assert r.returncode == 0 and (r.stdout + r.stderr).count("already finished") == 2, r.stderr[-2000:]
    df = pd.read_csv(out / "results.csv")
    assert list(df.seed) == [42, 42, 1, 1] and "| seed |" in (out / "results.md").read_text()
    t = pd.read_csv(out / "results_by_config.csv", dtype={"seeds": str})
    assert list(t["optim.lr"]) == [0.1, 0.01] and list(t.n) == [2, 2] and list(t.seeds) == ["42,1", "42,1"]
    head = r.stdout[r.stdout.index("optim.lr  status"):].splitlines()[0].split()
    assert head == ["optim.lr", "status", "n", "val_acc", "test_acc", "time_s"]
    (out / "results.csv").unlink()
    (out / "results_by_config.csv").unlink()
    assert run_python("-m", "expkit.report", str(out)).returncode == 0  # the rebuilt table: the same
    assert pd.read_csv(out / "results.csv").equals(df)
    assert pd.read_csv(out / "results_by_config.csv", dtype={"seeds": str}).equals(t)


# ---- which jobs count in a mean: one rule for every table ----

def test_terminal_table_and_results_by_config_leave_out_the_same_jobs(tmp_path):
    from expkit.report.aggregate import by_config, collect
    from expkit.report.tables import terminal_table

    s = tmp_path / "s"
    for i, (seed, acc, status) in enumerate(((1, 0.8, "completed"), (2, 0.6, "completed"), (3, 0.1, "pruned"))):
        _job(s / str(i), [f"seed={seed}"], [], seed, acc, status=status)
    df = collect([s])
    t = by_config(df)
    assert t.n[0] == 2 and t.pruned[0] == 1 and t.failed[0] == 0 and t.val_acc_mean[0] == pytest.approx(0.7)
    row = terminal_table(df).splitlines()[2]
    assert "completed x2,pruned" in row and f"{t.val_acc_mean[0]:.4f} ± {t.val_acc_std[0]:.4f}" in row


def test_a_sweep_over_seeds_only_is_one_configuration(tmp_path):
    """No key but the seed varies: one configuration of three seeds (pandas 2 iterated no rows over no columns)."""
    from expkit.report.aggregate import by_config, by_config_markdown, collect

    for i, seed in enumerate((1, 2, 3)):
        _job(tmp_path / "s" / str(i), [f"seed={seed}"], [], seed, 0.5 + i / 10)
    df = collect([tmp_path / "s"])
    t = by_config(df)
    assert list(df.columns[:2]) == ["job", "seed"] and len(t) == 1 and t.n[0] == 3 and t.seeds[0] == "1,2,3"
    assert "0.6000 ± 0.1000" in by_config_markdown(df)
