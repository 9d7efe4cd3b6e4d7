"""Sweep tables: one row per job (swept keys, status, metrics) -> results.csv and results.md;
when the jobs differ in seed, also one row per configuration (mean ± std over seeds) ->
results_by_config.csv and results_by_config.md.

Works on any directory of runs: a sweep dir (numbered job dirs), a single run dir, or several
sweeps merged: `python -m expkit.report DIR [DIR ...] [--out DIR]`.

The helpers the plots share (swept_keys, config_groups, pm, to_markdown, ...) live in tables.py and
are importable from here too. Nothing here imports the plotting code at import time: build_report
draws through kinds.draw, imported when it runs.
"""
import json
import logging
from pathlib import Path

import pandas as pd
import yaml

from expkit.cache import atomic_write
from expkit.report.tables import (  # noqa: F401  (swept_keys, pm, to_markdown, ...: importable from here too)
    SEED, _finite, _mean_std, config_groups, config_keys, pm, seed_varies, swept_keys, to_markdown)

log = logging.getLogger(__name__)
METRICS = ["train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss"]


def job_dirs(root: Path):
    """Run dirs under root (a run dir itself counts), in job order."""
    root = Path(root)
    if (root / ".hydra").is_dir() or (root / "summary.json").exists():
        return [root]
    dirs = [p.parent for p in root.glob("*/.hydra")] + [p.parent for p in root.glob("*/summary.json")]
    dirs = sorted(set(dirs), key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))
    return dirs


def _overrides(d: Path):
    f = d / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(f.read_text()) if f.exists() else []
    if not items and (d / "summary.json").exists():
        items = json.loads((d / "summary.json").read_text()).get("overrides", [])
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def _row(d: Path, root: Path):
    row = {"job": str(d.relative_to(root)) if d != root else d.name}
    row.update({f"@{k}": v for k, v in _overrides(d).items()})
    s = {}
    if (d / "summary.json").exists():
        try:
            s = json.loads((d / "summary.json").read_text())
        except ValueError:
            s = {"status": "failed", "error": "unreadable summary.json"}
    row["status"] = s.get("status", "unfinished")
    final = s.get("final", {})
    for m in METRICS:
        row[m] = final.get(m)
    best = s.get("best", {})
    row["best_val_acc"], row["best_epoch"] = best.get("val_acc"), best.get("epoch")
    row["best_test_acc"] = best.get("test_acc")  # test accuracy at the epoch of best val accuracy
    for k in ("epochs_run", "iterations_per_epoch", "wall_time_s", "n_params"):
        row[k] = s.get(k)
    for k, v in s.get("report_columns", {}).items():
        row[k] = v
    row["error"] = s.get("error", "")
    return row


def collect(roots):
    """The results table over one or more run/sweep dirs. Columns of swept keys come first,
    named without their '@' marker; keys equal in every job are dropped (they were not swept)."""
    rows = []
    for root in roots:
        root = Path(root)
        for d in job_dirs(root):
            r = _row(d, root)
            if len(roots) > 1:
                r["sweep"] = str(root)
            rows.append(r)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    swept = [c for c in df.columns if c.startswith("@")]
    varying = [c for c in swept if df[c].astype(str).nunique() > 1]  # one job: nothing was swept
    df = df.drop(columns=[c for c in swept if c not in varying])
    df = df.rename(columns={c: c[1:] for c in varying})
    lead = (["sweep"] if "sweep" in df else []) + ["job"] + [c[1:] for c in varying]
    df = df[lead + [c for c in df.columns if c not in lead]]
    df = df.dropna(axis=1, how="all")
    if "error" in df and not df.error.astype(bool).any():
        df = df.drop(columns="error")
    return df


# ---- results over seeds: one row per configuration = per combination of the swept keys but seed ----

OK = ("completed", "diverged")  # jobs with a result; the others (failed, skipped, unfinished) count as failed
AGG = METRICS + ["best_val_acc", "best_test_acc", "wall_time_s"]


def _summaries(df):
    """Per configuration: its key values, counts, seeds and each metric's finite values over its seeds."""
    keys = config_keys(df)
    for _, idx in config_groups(df, keys):
        g = df.loc[idx]
        ok = g[g.status.isin(OK)]
        yield {
            "keys": {k: g[k].iloc[0] for k in keys},
            "n": len(ok),
            "seeds": ",".join("-" if s != s else str(s) for s in ok[SEED]),
            "diverged": int((g.status == "diverged").sum()),
            "failed": len(g) - len(ok),
            "values": {m: _finite(ok[m]) for m in AGG if m in g},
        }


def by_config(df):
    """results_by_config: one row per configuration with n (seeds with a result), the seeds, diverged
    and failed counts, and <metric>_mean / <metric>_std over its seeds (non-finite values left out).
    None when the jobs do not differ in seed."""
    if not seed_varies(df):
        return None
    rows = []
    for s in _summaries(df):
        r = dict(s["keys"], n=s["n"], seeds=s["seeds"], diverged=s["diverged"], failed=s["failed"])
        for m, v in s["values"].items():
            r[f"{m}_mean"], r[f"{m}_std"] = _mean_std(v)
        rows.append(r)
    out = pd.DataFrame(rows)
    empty = [m for m in AGG if f"{m}_mean" in out and out[f"{m}_mean"].isna().all()]
    return out.drop(columns=[f"{m}_{x}" for m in empty for x in ("mean", "std")])


def by_config_markdown(df):
    """The .md of results_by_config: mean ± std strings; '(k/n)' where only k of the n seeds had a value."""
    table = by_config(df)
    rows = []
    for s in _summaries(df):
        r = dict(s["keys"], n=s["n"], seeds=s["seeds"], diverged=s["diverged"], failed=s["failed"])
        for m, v in s["values"].items():
            if f"{m}_mean" in table:
                r[m] = pm(*_mean_std(v)) + (f" ({len(v)}/{s['n']})" if 0 < len(v) < s["n"] else "")
        rows.append(r)
    t = pd.DataFrame(rows)
    if not t.diverged.any():
        t = t.drop(columns="diverged")
    head = ("Mean ± sample std (ddof 1) over seeds, per configuration (the swept keys but seed). "
            "n: seeds with a result (completed or diverged); failed: jobs without one (failed, skipped, "
            "unfinished), left out of the means; (k/n): only k seeds had a finite value.\n\n")
    return head + to_markdown(t.astype(object))


def write_table(root, roots=None, out=None):
    out = Path(out or root)
    df = collect(roots or [root])
    if df.empty:
        return df
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(to_markdown(df)))
    if seed_varies(df):
        table, md = by_config(df), by_config_markdown(df)
        atomic_write(out / "results_by_config.csv", lambda tmp: table.to_csv(tmp, index=False))
        atomic_write(out / "results_by_config.md", lambda tmp: tmp.write_text(md))
    else:  # a rebuilt table without several seeds: no stale per-config table beside it
        for f in ("results_by_config.csv", "results_by_config.md"):
            (out / f).unlink(missing_ok=True)
    return df


def plots_config(root: Path):
    """The preset's report.plots, as saved by Hydra with the sweep (multirun.yaml) or the run."""
    for f in (root / "multirun.yaml", root / ".hydra" / "config.yaml", root / "config.yaml"):
        if f.exists():
            cfg = yaml.safe_load(f.read_text()) or {}
            return (cfg.get("report") or {}).get("plots") or []
    return []


def study_name(roots):
    """The study's `name` (the preset's), from the sweep's multirun.yaml or the run's config; merged
    sweeps of different studies: their names joined by ' + '."""
    names = []
    for root in roots:
        root = Path(root)
        for f in (root / "multirun.yaml", root / ".hydra" / "config.yaml", root / "config.yaml"):
            if f.exists():
                name = (yaml.safe_load(f.read_text()) or {}).get("name")
                if name:
                    names.append(str(name))
                break
    return " + ".join(dict.fromkeys(names)) or None


def build_report(root, roots=None, out=None, plots=None, study=None):
    """Table (+ results_by_config when seeds vary) + the preset's plots for a sweep (or merged
    sweeps); plot titles name the study (`name` of the sweep's config unless given). Returns the table."""
    from expkit.report.kinds import draw  # here, not at the top: the tables never load the plotting code

    root = Path(root)
    out = Path(out or root)
    df = write_table(root, roots, out)
    specs = plots if plots is not None else plots_config(root)
    if len(df) and specs:
        roots = [Path(r) for r in (roots or [root])]
        study = study or study_name(roots)
        dirs = {(str(r) if len(roots) > 1 else None, str(d.relative_to(r)) if d != r else d.name): d
                for r in roots for d in job_dirs(r)}
        paths = [dirs[(row.get("sweep"), row["job"])] for row in df.to_dict("records")]
        for spec in specs:
            try:
                draw(spec, df, paths, out, study=study)
            except Exception as ex:  # one bad plot must not lose the table or the other plots
                log.warning("plot %s failed: %s: %s", spec, type(ex).__name__, ex)
    return df
