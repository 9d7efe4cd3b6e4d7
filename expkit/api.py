"""expkit from Python or a notebook, without the command line:

    import expkit
    r = expkit.run(["data.root=../shared/data/countries", "trainer.epochs=5"])
    r.summary["final"]["test_acc"], r.metrics.val_acc.max(), r.dir
    s = expkit.sweep(["optim.lr=0.1,0.01", "seed=1,2,3"])   # progress lines as it runs; then the table
    s.dir, s.table, s.by_config, s.best                      # its folder, results.csv, mean ± std, best.json
    expkit.sweep(["optim.lr=0.1,0.01,0.001", "seed=1,2,3"], sweep_dir=s.dir)  # extend it: finished jobs skipped
    again = expkit.load(r.dir)                               # a run dir or a sweep dir

`run` composes the same configs as the command line (overrides as strings, presets included) and
trains in this process, writing to outputs/<name>/<time>/ under the current directory (or `dir=`); it
logs to the "expkit" logger, never changes the working directory, and can be called any number of
times. `sweep` runs `expkit -m ...` in a subprocess (launchers, fused groups and the sweeper's job
identity work exactly as on the command line), into the command line's folder
(outputs/<name>/multirun_<time>/), and returns a SweepResult. Nothing here imports pandas until it
is called: `import expkit` stays light.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union


@dataclass
class Result:
    """One run: its dir, its summary.json and its metrics.csv (one row per epoch; None for a run that did
    not finish)."""
    dir: Path
    summary: dict
    metrics: object  # pandas.DataFrame or None


@dataclass(eq=False)
class SweepResult:
    """A sweep: `dir` (its folder: results.md, plots, every job's run dir), `table` (results.csv: one row
    per job, pandas), `by_config` (results_by_config.csv: mean ± std over seeds per configuration; None
    when the seeds do not vary), `best` (best.json: the best configuration by the mean over seeds of the
    best-epoch val accuracy; None when none completed), `returncode` (0; 1 when a job failed: its row
    says why) and `command` (the command line it ran).

    It prints as the sweep's compact table with its best configuration; the table's columns and methods
    are the result's too (`s["optim.lr"]`, `s.status`, `s.sort_values(...)`)."""
    dir: Path
    table: object  # pandas.DataFrame
    by_config: object = None
    best: Optional[dict] = None
    returncode: int = 0
    command: list = field(default_factory=list)

    def __getitem__(self, key):
        return self.table[key]

    def __getattr__(self, name):  # the table's columns and methods
        if name.startswith("_") or "table" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["table"], name)

    def __len__(self):
        return len(self.table)

    def __repr__(self):
        from expkit.report.choice import describe
        from expkit.report.tables import terminal_table

        lines = [f"SweepResult: {len(self.table)} job(s) in {self.dir}", terminal_table(self.table)]
        if self.best:
            lines.append(f"best: {describe(self.best)}")
        if self.by_config is not None:
            lines.append(f"mean ± std over seeds per configuration: .by_config ({self.dir / 'results_by_config.md'})")
        return "\n".join(lines)

    def _repr_html_(self):
        from html import escape

        best = f"<p>best: {escape(_best_line(self.best))}</p>" if self.best else ""
        return f"<p>SweepResult: {len(self.table)} job(s) in <code>{escape(str(self.dir))}</code></p>" + best + \
            self.table._repr_html_()


def _best_line(best):
    from expkit.report.choice import describe

    return describe(best)


def compose(overrides: Sequence[str] = ()):
    """The composed config for these overrides, as the command line composes it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from expkit.cli import conf_dir, register_plugins

    register_plugins()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def run(overrides: Sequence[str] = (), dir: Optional[str] = None) -> Result:
    """Train one run in this process, as `python train.py OVERRIDES` would; returns its Result (dir,
    summary, metrics). It writes to outputs/<name>/<time>/ under the current directory, or to `dir`."""
    from expkit.runner import run as run_one

    cfg = compose(overrides)
    out = Path(dir) if dir else _new_dir(Path("outputs") / str(cfg.get("name", "default")))
    run_one(cfg, out, list(overrides))
    return load(out)


PROGRESS = ("jobs", "epochs", None)


def sweep(overrides: Sequence[str], sweep_dir: Optional[Union[str, Path]] = None, progress: Optional[str] = "jobs",
          echo: Optional[Callable[[str], None]] = None) -> SweepResult:
    """Run a sweep, as `expkit -m OVERRIDES` (`python train.py -m ...`) would, in a subprocess; returns a
    SweepResult: its folder (`.dir`), its table (`.table`; also its columns, `s["optim.lr"]`), the mean ±
    std over seeds per configuration (`.by_config`) and the best configuration (`.best`, best.json).

    overrides: the command line's words, e.g. ["optim.lr=0.1,0.01", "seed=1,2,3"] or
        ["experiment=ex4/lr", "data.root=../shared/data/countries"].
    sweep_dir: where to write. Default: the command line's folder, outputs/<name>/multirun_<time>/ under
        the current directory (outputs/<name>/latest links to it). Give an existing sweep's dir to re-run
        or extend it in place: its finished jobs are skipped, unfinished ones resume, new configurations
        get new dirs (an Optuna sweep resumes its study).
    progress: "jobs" (default) streams the sweep's lines as they come (jobs starting and finishing, the
        table, the closing lines) but not each epoch's; "epochs" every line; None nothing.
    echo: where the lines go (default: print).

    Raises RuntimeError with the sweep's error line when it could not run (a typo'd key, an unknown
    preset: nothing is written). A sweep whose jobs failed still returns: returncode 1, their rows say
    why."""
    import re

    if progress not in PROGRESS:
        raise ValueError(f"progress={progress!r}: one of {PROGRESS}")
    echo = echo or (lambda line: print(line, flush=True))
    if sweep_dir is not None:
        target, where = str(sweep_dir), Path(sweep_dir)
    else:  # the command line's folder; ${name} resolved by Hydra (a preset's name), the time made unique here
        stamp = _free_stamp()
        target, where = f"outputs/${{name}}/multirun_{stamp}", None
    overrides = [o for o in overrides if not str(o).startswith("hydra.sweep.dir=")]
    cmd = [sys.executable, "-m", "expkit", "-m", *map(str, overrides), f"hydra.sweep.dir={target}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    epoch_line = re.compile(r" epoch \d+/\d+ ")
    tail = deque(maxlen=200)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env=env) as proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if progress == "epochs" or (progress == "jobs" and not epoch_line.search(line)):
                echo(line)
    if where is None:
        found = sorted(Path("outputs").glob(f"*/multirun_{stamp}"))
        where = found[0] if found else None
    if proc.returncode == 2 or where is None or not (where / "results.csv").exists():
        errors = [ln for ln in tail if ln.startswith("error:")]
        raise RuntimeError(errors[-1] if errors else (tail[-1] if tail else f"expkit -m exited {proc.returncode}"))
    result = load_sweep(where)
    result.returncode, result.command = proc.returncode, cmd
    return result


def load_sweep(path) -> SweepResult:
    """A sweep dir as a SweepResult (its saved tables and best.json; the table rebuilt from the job dirs when
    results.csv is missing)."""
    import json

    import pandas as pd

    path = Path(path)
    table = load(path)
    if not isinstance(table, pd.DataFrame):
        raise FileNotFoundError(f"{path} is a run dir, not a sweep dir")
    by = path / "results_by_config.csv"
    best = path / "best.json"
    return SweepResult(path, table, pd.read_csv(by, dtype={"seeds": str}) if by.exists() else None,
                       json.loads(best.read_text()) if best.exists() else None)


def load(path):
    """A run dir -> Result; a sweep dir -> its results table (pandas), as saved (or rebuilt from the
    job dirs' files when results.csv is missing). load_sweep(dir) gives a sweep's SweepResult."""
    import json

    import pandas as pd

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


def _free_stamp():
    """A time stamp no outputs/<name>/multirun_<stamp> uses yet (two sweeps in one second get two)."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for i in range(1000):
        s = stamp if i == 0 else f"{stamp}_{i}"
        if not list(Path("outputs").glob(f"*/multirun_{s}")):
            return s
    raise RuntimeError("no free sweep dir under outputs/")


def _new_dir(parent: Path) -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for i in range(1000):  # two calls in one second get two dirs
        d = parent / (stamp if i == 0 else f"{stamp}_{i}")
        if not d.exists():
            return d
    raise RuntimeError(f"no free run dir under {parent}")
