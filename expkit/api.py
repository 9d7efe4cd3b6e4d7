"""expkit from Python or a notebook, without the command line:

    import expkit
    r = expkit.run(["data.root=../shared/data/countries", "trainer.epochs=5"])
    r.summary["final"]["test_acc"], r.metrics.val_acc.max(), r.dir
    table = expkit.sweep(["optim.lr=0.1,0.01", "seed=1,2,3"])      # the results table (pandas)
    again = expkit.load(r.dir)                                      # a run dir or a sweep dir

`run` composes the same configs as the command line (overrides as strings, presets included)
and trains in this process, writing to outputs/<name>/<time>/ under the current directory
(or `dir=`); it logs to the "expkit" logger, never changes the working directory, and can be
called any number of times. `sweep` runs `expkit -m ...` in a subprocess (launchers, fused
groups and the sweeper's job identity work exactly as on the command line) and returns its table.
"""
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd


@dataclass
class Result:
    dir: Path
    summary: dict
    metrics: Optional[pd.DataFrame]  # one row per epoch (None for a run that did not finish)


def compose(overrides: Sequence[str] = ()):
    """The composed config for these overrides, as the command line composes it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from expkit.cli import conf_dir, register_plugins

    register_plugins()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def run(overrides: Sequence[str] = (), dir: Optional[str] = None) -> Result:
    """Train one run; returns its dir, summary and metrics."""
    from expkit.runner import run as run_one

    cfg = compose(overrides)
    out = Path(dir) if dir else _new_dir(Path("outputs") / str(cfg.get("name", "default")))
    run_one(cfg, out, list(overrides))
    return load(out)


def sweep(overrides: Sequence[str], sweep_dir: Optional[str] = None) -> pd.DataFrame:
    """`expkit -m OVERRIDES`; returns the sweep's results table (raises if it could not run)."""
    out = Path(sweep_dir) if sweep_dir else _new_dir(Path("outputs") / "sweeps")
    r = subprocess.run([sys.executable, "-m", "expkit", "-m", *overrides, f"hydra.sweep.dir={out}"],
                       capture_output=True, text=True)
    if r.returncode == 2 or not (out / "results.csv").exists():
        raise RuntimeError((r.stderr.strip().splitlines() or [f"expkit -m exited {r.returncode}"])[-1])
    return load(out)


def load(path):
    """A run dir -> Result; a sweep dir -> its results table (pandas), as saved (or rebuilt from the
    job dirs' files when results.csv is missing)."""
    import json

    path = Path(path)
    if (path / "summary.json").exists():
        m = path / "metrics.csv"
        return Result(path, json.loads((path / "summary.json").read_text()), pd.read_csv(m) if m.exists() else None)
    if (path / "results.csv").exists():
        return pd.read_csv(path / "results.csv")  # the table the sweep saved
    from expkit.report.aggregate import collect

    table = collect([path])
    if table.empty:
        raise FileNotFoundError(f"{path} holds no expkit run or sweep (no summary.json below it)")
    return table


def _new_dir(parent: Path) -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for i in range(1000):  # two calls in one second get two dirs
        d = parent / (stamp if i == 0 else f"{stamp}_{i}")
        if not d.exists():
            return d
    raise RuntimeError(f"no free run dir under {parent}")
