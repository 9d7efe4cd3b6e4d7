"""Launchers: joblib and submitit_local give the basic launcher's results table; SLURM preset; threads."""
import json
import os

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, run_cli, write_countries

METRICS = ["train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "best_val_acc"]
CORES = len(os.sched_getaffinity(0))


def _sweep(tmp_path, data, launcher):
    out = tmp_path / launcher
    r = run_cli("-m", "experiment=ex4/lr", f"hydra/launcher={launcher}", f"data.root={data}", "trainer.epochs=1",
                f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    threads = [json.loads((out / str(j) / "summary.json").read_text())["threads"] for j in range(4)]
    return pd.read_csv(out / "results.csv"), threads


@pytest.fixture(scope="module")
def basic(tmp_path_factory):
    """The tiny data and the basic launcher's sweep on it, shared by the launcher comparisons."""
    tmp = tmp_path_factory.mktemp("launchers")
    data = write_countries(tmp / "d", n=200)
    return data, *_sweep(tmp, data, "basic")


@pytest.mark.parametrize("launcher, plugin", [("joblib", "hydra_plugins.hydra_joblib_launcher"),
                                              ("submitit_local", "hydra_plugins.hydra_submitit_launcher")])
def test_parallel_launcher_gives_the_basic_table_with_one_thread_per_job(tmp_path, basic, launcher, plugin):
    pytest.importorskip(plugin, reason="pip install -e '.[launchers]'")
    data, basic, basic_threads = basic
    table, threads = _sweep(tmp_path, data, launcher)
    assert list(table["optim.lr"]) == [1, 0.01, 0.001, 1e-4] and set(table.status) == {"completed"}
    pd.testing.assert_frame_equal(table[["optim.lr", *METRICS]], basic[["optim.lr", *METRICS]])
    # a small MLP trains on 1 thread whatever the launcher (expkit.runner.SMALL_MODEL); the launcher
    # shares are checked on pick_threads itself below
    assert basic_threads == threads == [1] * 4


def test_slurm_preset_sets_the_cluster_knobs_and_the_job_threads():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    from hydra.core.hydra_config import HydraConfig

    from expkit.runner import pick_threads

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=3"], return_hydra_config=True)
    la = cfg.hydra.launcher
    assert la._target_.endswith("SlurmLauncher")
    assert la.partition and la.gpus_per_node == 1 and la.timeout_min > 0 and la.array_parallelism >= 1
    HydraConfig.instance().set_config(cfg)
    try:
        assert pick_threads(None) == 3 and pick_threads(5) == 5
    finally:
        HydraConfig.instance().cfg = None  # process-global: leave no launcher behind for other tests


def test_slurm_preset_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """What Hydra's SlurmLauncher hands to submitit, rendered as the sbatch script (no cluster here:
    a stub `srun` lets submitit's executor be built; sbatch itself is never called)."""
    submitit = pytest.importorskip("submitit", reason="pip install -e '.[launchers]'")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=a100"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    for k in ("_target_", "submitit_folder"):
        params.pop(k)
    ex = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "sub", slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params["name"] = "train"  # as the launcher does, the rest prefixed like it (submitit rejects unknown keys)
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = ex._executor._make_submission_file_text("python train.py", "uid")
    for line in ("--partition=a100", "--gpus-per-node=1", "--cpus-per-task=8", "--time=240", "--mem=32GB"):
        assert f"#SBATCH {line}" in script, line


def test_missing_launcher_names_the_extra_to_install():
    r = run_cli("-m", "hydra/launcher=nosuch", "trainer.epochs=1")
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "available:" in r.stderr and 'pip install -e ".[launchers' in r.stderr


def test_thread_share_per_launcher():
    """basic: all cores for one job at a time; joblib n_jobs=-1 on this machine: 1 each."""
    from hydra.core.hydra_config import HydraConfig

    from expkit.runner import pick_threads

    for launcher, want in (("basic", CORES), ("joblib", 1)):
        if launcher == "joblib":
            pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", [f"hydra/launcher={launcher}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            assert pick_threads(None) == want, launcher
        finally:
            HydraConfig.instance().cfg = None
