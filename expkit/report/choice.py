"""The sweep names its choice: `best.json` in the sweep dir and the sweep's closing lines.

The best configuration is the one with the highest mean over its seeds of the best-epoch validation
accuracy (`best_val_acc`, the Optuna objective's metric; the test set never chooses). Only
configurations whose every job completed compete (a diverged, failed, pruned or unfinished seed rules
its configuration out), unless none did, then those with at least one completed job; ties go to the
higher final-epoch val accuracy, then the lower std, then the first in the table.

`best.json`: the metric and the rule, the configuration (its swept keys), its overrides (a single run
of it: `python train.py OVERRIDES`), best-epoch val acc mean/std/n, final-epoch val acc mean/std,
test acc at the best epoch and at the final one (shown, never used to choose), its seeds and run dirs.

The closing lines (close_sweep) name the choice, `results_by_config.md` when seeds vary, the
member-epochs trained against the full grid's when jobs were pruned, and the command that re-runs or
extends this very sweep in place (its `hydra.sweep.dir`; finished jobs are skipped, an Optuna study
resumes). `outputs/<name>/latest` becomes a symlink to the newest sweep dir.
"""
import json
import math
import os
import shlex
import sys
from pathlib import Path

import pandas as pd
import yaml

from expkit.cache import atomic_write
from expkit.report.aggregate import member_epochs, member_epochs_line
from expkit.report.tables import OK, SEED, _finite, config_groups, config_keys, seed_varies

BEST = "best.json"
METRIC = "best_val_acc"
LATEST = "latest"
RULE = ("highest mean over seeds of the best-epoch val accuracy (best_val_acc, the Optuna objective); only "
        "configurations whose every job completed compete (else those with one completed job); ties: higher "
        "final-epoch val_acc, then lower std")


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _stats(values):
    v = _finite(values)
    return {"mean": _num(v.mean()) if len(v) else None, "std": _num(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v))}


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and v != v else v


def _user_overrides(job_dir: Path):
    """The job's task overrides (Hydra's record) without the seed: the configuration as a single run's."""
    f = job_dir / ".hydra" / "overrides.yaml"
    try:
        items = (yaml.safe_load(f.read_text()) or []) if f.exists() else []
    except yaml.YAMLError:
        items = []
    if not items:
        try:
            items = json.loads((job_dir / "summary.json").read_text()).get("overrides") or []
        except (OSError, ValueError):
            items = []
    return [str(o) for o in items if str(o).partition("=")[0].lstrip("+~") != SEED]


def best_configuration(df: pd.DataFrame, sweep_dir=None):
    """The sweep's choice from its results table (one row per job), as best.json holds it; None when no
    configuration has a completed job (or the table has no best_val_acc)."""
    if df is None or not len(df) or METRIC not in df or "status" not in df:
        return None
    keys = config_keys(df)
    candidates = []
    for order, (_, idx) in enumerate(config_groups(df, keys)):
        g = df.loc[idx]
        done = g[g.status == "completed"]
        score = _stats(done[METRIC])
        if score["mean"] is None:
            continue
        final = _stats(done["val_acc"]) if "val_acc" in g else {"mean": None, "std": None, "n": 0}
        candidates.append({"all_completed": len(done) == len(g), "score": score, "final": final, "rows": g,
                           "order": order})
    if not candidates:
        return None
    pool = [c for c in candidates if c["all_completed"]] or candidates
    best = max(pool, key=lambda c: (c["score"]["mean"], c["final"]["mean"] if c["final"]["mean"] is not None else -1,
                                    -(c["score"]["std"] or 0.0), -c["order"]))
    g = best["rows"]
    done = g[g.status == "completed"]
    out = {
        "metric": METRIC,
        "rule": RULE,
        "config": {k: _plain(g[k].iloc[0]) for k in keys},
        "overrides": _user_overrides(Path(sweep_dir) / str(g.job.iloc[0])) if sweep_dir is not None else [],
        METRIC: best["score"],
        "val_acc": {k: best["final"][k] for k in ("mean", "std")},
        "best_test_acc": {k: v for k, v in _stats(done["best_test_acc"]).items() if k != "n"}
        if "best_test_acc" in g else None,
        "test_acc": {k: v for k, v in _stats(done["test_acc"]).items() if k != "n"} if "test_acc" in g else None,
        "n_jobs": int(len(g)),
        "statuses": {str(k): int(v) for k, v in g.status.value_counts().items()},
        "seeds": [_plain(s) for s in done[SEED]] if SEED in g else None,
        "runs": [str(j) for j in done.job],
        "n_configurations": len(config_groups(df, keys)),
        "competed": len(pool),  # configurations in the running (every job completed, else one)
    }
    if sweep_dir is not None:
        out["sweep_dir"] = str(Path(sweep_dir).resolve())
        out["dirs"] = [str((Path(sweep_dir) / j).resolve()) for j in out["runs"]]
    return out


def write_best(sweep_dir, df=None):
    """best.json in the sweep dir (from its results.csv unless the table is given); returns it (None:
    no configuration completed, and a stale best.json is removed)."""
    sweep_dir = Path(sweep_dir)
    if df is None:
        df = read_table(sweep_dir)
    best = best_configuration(df, sweep_dir)
    if best is None:
        (sweep_dir / BEST).unlink(missing_ok=True)
        return None
    atomic_write(sweep_dir / BEST, lambda tmp: tmp.write_text(json.dumps(best, indent=2, default=str) + "\n"))
    return best


def read_table(sweep_dir):
    f = Path(sweep_dir) / "results.csv"
    return pd.read_csv(f) if f.exists() else pd.DataFrame()


def describe(best):
    """'optim.lr=0.01 model.width=32: best-epoch val acc 0.9123 ± 0.0040 (n=3), final-epoch 0.9050 ± 0.0060'."""
    def pm(s):
        if s.get("mean") is None:
            return "-"
        return f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s.get("std") is not None else "")

    config = " ".join(f"{k}={v}" for k, v in best["config"].items()) or "(the only configuration)"
    n = best[METRIC]["n"]
    return (f"{config}: best-epoch val acc {pm(best[METRIC])} ({'mean over ' + str(n) + ' seeds' if n > 1 else 'n=1'}), "
            f"final-epoch val acc {pm(best['val_acc'])}")


def entrypoint(argv=None):
    """How this process was started, as a user types it: `python train.py`, `expkit` or `python -m expkit`."""
    argv = list(sys.argv if argv is None else argv)
    prog = argv[0] if argv else "train.py"
    name = Path(prog).name
    if name == "__main__.py":
        return f"python -m {Path(prog).resolve().parent.name}"
    if name.endswith(".py"):
        return f"python {shlex.quote(prog)}"
    return shlex.quote(name)


def rerun_command(sweep_dir, argv=None):
    """The command that re-runs this sweep into the same dir: this process's arguments with its
    hydra.sweep.dir set to the sweep's (relative to the current dir when below it)."""
    argv = list(sys.argv if argv is None else argv)
    args = [a for a in argv[1:] if not a.lstrip("+~").startswith("hydra.sweep.dir=")]
    if not any(a in ("-m", "--multirun") for a in args):
        args.insert(0, "-m")
    d = Path(sweep_dir).resolve()
    try:
        shown = str(d.relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(d)
    return " ".join([entrypoint(argv)] + [shlex.quote(a) for a in args] + [shlex.quote(f"hydra.sweep.dir={shown}")])


def link_latest(sweep_dir):
    """outputs/<name>/latest -> the newest sweep dir (relative link, replaced atomically); only for the
    default folder names (multirun_<time>), never beside a dir the user named."""
    d = Path(sweep_dir)
    if not d.name.startswith("multirun_") or not d.is_dir():
        return None
    link = d.parent / LATEST
    if link.exists() and not link.is_symlink():  # a user's own folder called latest: leave it
        return None
    tmp = d.parent / f".{LATEST}.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(d.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return link


def _is_optuna(sweep_dir):
    f = Path(sweep_dir) / "multirun.yaml"
    try:
        cfg = yaml.safe_load(f.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return "optuna" in str(((cfg.get("hydra") or {}).get("sweeper") or {}).get("_target_", "")).lower()


def study_lines(sweep_dir, df=None, label=""):
    """The lines naming one study's choice (best.json written), its per-configuration table and, where
    jobs were pruned, the member-epochs."""
    sweep_dir = Path(sweep_dir)
    df = read_table(sweep_dir) if df is None else df
    best = write_best(sweep_dir, df)
    lines = []
    if best is None:
        lines.append(f"{label}no configuration completed: no best.json")
    else:
        lines.append(f"{label}best: {describe(best)} -> {sweep_dir / BEST}")
    if len(df) and seed_varies(df) and (sweep_dir / "results_by_config.md").exists():
        lines.append(f"{label}mean ± std over seeds per configuration: {sweep_dir / 'results_by_config.md'}")
    if len(df) and "status" in df and (df.status == "pruned").any():
        counts = member_epochs(sweep_dir)
        if counts:
            lines.append(label + member_epochs_line(counts))
    return lines


def close_sweep(root, studies=None, argv=None):
    """Write best.json in each study's dir, link outputs/<name>/latest to the sweep, and return the
    closing lines to print: each study's choice, results_by_config.md when seeds vary, and the
    command that re-runs or extends this sweep in place."""
    root = Path(root)
    studies = [Path(s) for s in (studies or [root])]
    lines = []
    for s in studies:
        if not (s / "results.csv").exists():  # not expkit's runs (a plain Hydra app's jobs): no choice to name
            continue
        label = f"[{s.relative_to(root)}] " if s != root and len(studies) > 1 else ""
        try:
            lines += study_lines(s, label=label)
        except Exception as ex:  # the choice must never lose the sweep's results
            lines.append(f"{label}could not name the best configuration: {type(ex).__name__}: {ex}")
    link_latest(root)
    cmd = rerun_command(root, argv)
    if _is_optuna(root):
        lines.append(f"resume this study in place (raise hydra.sweeper.n_trials to add trials): {cmd}")
    else:
        lines.append(f"re-run or extend this sweep in place (finished jobs are skipped, new values get new dirs): "
                     f"{cmd}")
    return "\n".join(lines)
