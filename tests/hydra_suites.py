"""Hydra's contract: expkit's sweeper (hydra/sweeper=expkit), and the launchers it feeds, pass Hydra's own
plugin test suites (hydra.test_utils.launcher_common_tests) for task functions that are not expkit's,
parametrized as Hydra's basic and joblib launchers parametrize them; with hydra.sweeper.fuse=true too
(a plain app's jobs have no expkit config: each runs as a single job, through the same path).

IntegrationTestSuite runs a plain `@hydra.main` app in a fresh interpreter: there Hydra must find
expkit's plugins by itself (its scan of the hydra_plugins namespace), however expkit is installed."""
import ast
import os
import subprocess
import sys

import pandas as pd
import pytest
from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, IntegrationTestSuite, LauncherTestSuite
from omegaconf import OmegaConf

from conftest import run_cli, write_countries

EXPKIT = ["hydra/sweeper=expkit"]
FUSE = EXPKIT + ["hydra.sweeper.fuse=true"]

try:
    import hydra_plugins.hydra_joblib_launcher  # noqa: F401

    JOBLIB = []
except ImportError:
    JOBLIB = ["pip install -e '.[launchers]' (hydra-joblib-launcher)"]
joblib = pytest.mark.skipif(bool(JOBLIB), reason=(JOBLIB or [""])[0])

# The matrix (the suites: 1-2 minutes on two busy cores): the sweeper with the basic launcher, the
# fused shorthand (basic + fuse) and joblib with fuse=true; fuse=true on the basic launcher runs the
# batched suite. A plain app's jobs do not fuse, so joblib with fuse=true is handed exactly the jobs
# joblib alone is (fusing.launch_batch): that covers joblib unfused too.
LAUNCHERS = [
    pytest.param("basic", EXPKIT, id="basic"),
    pytest.param("fused", EXPKIT, id="fused"),  # the shorthand: basic + hydra.sweeper.fuse=true
    pytest.param("joblib", FUSE + ["hydra.launcher.n_jobs=2"], id="joblib-fuse", marks=joblib),
]


@pytest.mark.parametrize("launcher_name, overrides", LAUNCHERS)
class TestExpkitSweeperLaunchers(LauncherTestSuite):
    """Hydra's LauncherTestSuite: its tests are inherited, run for each launcher above."""


@pytest.mark.parametrize("launcher_name, overrides", [
    pytest.param("basic", EXPKIT + ["hydra.sweeper.max_batch_size=2"], id="basic"),
    pytest.param("basic", FUSE + ["hydra.sweeper.max_batch_size=2"], id="basic-fuse"),
    pytest.param("joblib", FUSE + ["hydra.sweeper.max_batch_size=2", "hydra.launcher.n_jobs=2"], id="joblib-fuse",
                 marks=joblib),
])
class TestExpkitSweeperBatches(BatchedSweeperTestSuite):
    """Hydra's BatchedSweeperTestSuite: its tests are inherited, run for each launcher above."""


def _app(launcher, *extra):
    """As Hydra's basic launcher's integration tests: no launcher config in the app, all on the command line."""
    return {}, ["-m", "hydra/sweeper=expkit", f"hydra/launcher={launcher}", "hydra/hydra_logging=disabled",
                "hydra/job_logging=disabled", *extra]


@pytest.mark.parametrize("task_launcher_cfg, extra_flags", [
    pytest.param(*_app("basic"), id="basic"),
    pytest.param(*_app("fused"), id="fused"),
])
class TestExpkitSweeperIntegration(IntegrationTestSuite):
    """A plain app in a fresh interpreter: Hydra's own plugin scan finds hydra/sweeper=expkit."""


def test_a_plain_hydra_app_finds_expkits_plugins_by_itself(tmp_path):
    """Hydra's own plugin scan, in a fresh interpreter that never imports expkit, finds expkit's
    sweepers and launcher (an editable install is a static .pth, not an import hook: setup.py)."""
    code = ("import sys; from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
            "from hydra.plugins.launcher import Launcher; p = Plugins.instance(); "
            "print(sorted(c.__name__ for c in p.discover(Sweeper) + p.discover(Launcher))); "
            "print('expkit.runner' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-2000:]
    found, runner = r.stdout.splitlines()
    assert {"ExpkitSweeper", "OptunaSweeper", "FusedLauncher"} <= set(ast.literal_eval(found)), \
        f"Hydra's scan found {found}: an install from before setup.py's layout? pip install -e ."
    assert runner == "False"  # the scan loads no training code (torch and friends)


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_a_failing_plain_job_fails_the_sweep_once_the_others_ran(hydra_sweep_runner, tmpdir):
    """Hydra's sweepers raise a failed job's error; expkit's runs every job first (failures are rows
    for expkit's runs, which record them in summary.json; a plain app's job has no such record)."""
    ran = []

    def task(cfg):
        ran.append(cfg.a)
        if cfg.a == 0:
            raise ValueError("job 0 fails")
        return cfg.a

    sweep = hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=task,
                               config_path="configs", config_name="compose", overrides=EXPKIT + ["+a=0,1"],
                               temp_dir=tmpdir)
    with pytest.raises(ValueError, match="job 0 fails"):
        with sweep:  # entering runs the sweep: the failing job must surface as its error
            ...
    assert ran == [0, 1]


def test_a_subdir_the_user_sets_wins_and_identity_decides_skip_and_refusal(tmp_path):
    data = write_countries(tmp_path / "d", n=200)
    out = tmp_path / "s"

    def sweep(*args):
        return run_cli("-m", f"data.root={data}", "trainer.epochs=1", f"hydra.sweep.dir={out}", *args)

    r = sweep("optim.lr=0.1,0.01", "hydra.sweep.subdir=lr${optim.lr}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.parent.name for p in out.glob("*/summary.json")) == ["lr0.01", "lr0.1"]
    assert len(pd.read_csv(out / "results.csv")) == 2
    before = (out / "lr0.1" / "summary.json").read_text()
    # both name lr0.1: the same config finished there (skipped), another one is refused (never written there)
    r = sweep("optim.lr=0.1,0.001", "hydra.sweep.subdir=lr0.1")
    log = r.stdout + r.stderr
    assert r.returncode == 1 and "optim.lr=0.1: this exact config already finished" in log and "holds another config's results" in log, log[-2000:]
    assert (out / "lr0.1" / "summary.json").read_text() == before
    assert OmegaConf.load(out / "lr0.1" / ".hydra" / "config.yaml").optim.lr == 0.1  # not even .hydra/ rewritten
