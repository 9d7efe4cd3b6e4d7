"""Sweep tables: one row per job (swept keys, status, metrics) -> results.csv and results.md.

Works on any directory of runs: a sweep dir (numbered job dirs), a single run dir, or several
sweeps merged: `python -m expkit.report DIR [DIR ...] [--out DIR]`.
"""
import json
import logging
from pathlib import Path

import pandas as pd
import yaml

from expkit.cache import atomic_write

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


def swept_keys(df):
    cols = list(df.columns)
    return cols[cols.index("job") + 1:cols.index("status")]


def to_markdown(df):
    def fmt(v):
        if isinstance(v, float):
            return "" if v != v else (f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}")
        return str(v).replace("|", "/").replace("\n", " ")[:120]

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(root, roots=None, out=None):
    out = Path(out or root)
    df = collect(roots or [root])
    if df.empty:
        return df
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(to_markdown(df)))
    return df


def plots_config(root: Path):
    """The preset's report.plots, as saved by Hydra with the sweep (multirun.yaml) or the run."""
    for f in (root / "multirun.yaml", root / ".hydra" / "config.yaml", root / "config.yaml"):
        if f.exists():
            cfg = yaml.safe_load(f.read_text()) or {}
            return (cfg.get("report") or {}).get("plots") or []
    return []


def build_report(root, roots=None, out=None, plots=None):
    """Table + the preset's plots for a sweep (or merged sweeps). Returns the table."""
    from expkit.report.plots import draw

    root = Path(root)
    out = Path(out or root)
    df = write_table(root, roots, out)
    specs = plots if plots is not None else plots_config(root)
    if len(df) and specs:
        roots = [Path(r) for r in (roots or [root])]
        dirs = {(str(r) if len(roots) > 1 else None, str(d.relative_to(r)) if d != r else d.name): d
                for r in roots for d in job_dirs(r)}
        paths = [dirs[(row.get("sweep"), row["job"])] for row in df.to_dict("records")]
        for spec in specs:
            try:
                draw(spec, df, paths, out)
            except Exception as ex:  # one bad plot must not lose the table or the other plots
                log.warning("plot %s failed: %s: %s", spec, type(ex).__name__, ex)
    return df
