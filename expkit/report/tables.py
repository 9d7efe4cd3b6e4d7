"""Table helpers shared by the sweep tables (aggregate.py) and the plots: which columns were swept,
the configurations (the swept keys but seed) and their jobs, mean ± std over seeds, markdown.
numpy, pandas and expkit.config (values compared by value) only: nothing here draws, and nothing
here imports another report module."""
import json

import numpy as np
import pandas as pd

from expkit.config import by_value

SEED = "seed"
# The jobs whose metrics count in a configuration's mean, in every table (results_by_config, the
# terminal table): those with a result. Pruned (an Optuna trial stopped early: its last epoch is not
# comparable), failed, skipped and unfinished jobs are counted, never averaged.
OK = ("completed", "diverged")
PARALLEL = "parallel_coordinates"  # the plot kind every sweep varying two or more keys draws (parallel.py)


def swept_keys(df):
    cols = list(df.columns)
    return cols[cols.index("job") + 1:cols.index("status")]


def config_keys(df):
    """The swept keys that define a configuration: all but the seed."""
    return [k for k in swept_keys(df) if k != SEED]


def seed_varies(df):
    return len(df) > 0 and SEED in swept_keys(df)  # collect() keeps only the swept keys that vary


def config_groups(df, keys=None):
    """[(config values, [row index, ...])] in order of first appearance, the values compared by value
    (1 and 1.0 are one value; a missing value is its own value, under any pandas). collect() shows the
    keys that tell configurations apart, so these are the configurations (expkit.config.identity
    without seed). Jobs group only when they differ in seed: without a swept seed, every job is its
    own group."""
    if not seed_varies(df):
        return [((str(i),), [i]) for i in df.index]
    keys = config_keys(df) if keys is None else keys
    groups = {}
    columns = [df[k].tolist() for k in keys]
    for n, i in enumerate(df.index):  # not itertuples: over no columns, pandas 2 yields no rows at all
        groups.setdefault(tuple(same_value(c[n]) for c in columns), []).append(i)
    return list(groups.items())


def missing(v):
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)


def same_value(v):
    """A cell's key for comparing by value; every missing value (None, NaN, pd.NA) is one value."""
    return "<missing>" if missing(v) else json.dumps(by_value(v), sort_keys=True, default=str)


def _finite(values):
    v = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype(float)
    return v[np.isfinite(v)]


def _mean_std(v):
    """Mean and sample std (ddof 1) over seeds; the std is NaN with fewer than two values."""
    return (v.mean() if len(v) else np.nan), (v.std(ddof=1) if len(v) > 1 else np.nan)


def pm(mean, std, digits=4):
    """'0.9123 ± 0.0045' ('0.9123' without a std; '' without a mean)."""
    if mean != mean:
        return ""
    f = (lambda x: f"{x:.{digits}f}") if abs(mean) < 1000 else (lambda x: f"{x:.0f}")
    return f(mean) + ("" if std != std else f" ± {f(std)}")


def to_markdown(df):
    def fmt(v):
        if isinstance(v, float):
            return "" if v != v else (f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}")
        return str(v).replace("|", "/").replace("\n", " ")[:120]

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _status_labels(g):
    """Each job's status as the terminal table shows it: a pruned job with the epoch it stopped after
    (`pruned@2`)."""
    if "epochs_run" not in g:
        return g.status
    return pd.Series([f"{s}@{int(e)}" if s == "pruned" and not missing(e) else str(s)
                      for s, e in zip(g.status, g.epochs_run)], index=g.index)


def terminal_table(df, width=120):
    """The compact end-of-sweep summary: swept keys, status (a pruned job with the epoch it stopped after),
    final val and test accuracy, time; best first by the mean best-epoch val accuracy (the sweep's choice,
    best.json), else by final val accuracy; with seeds swept, one line per configuration with mean ± std
    and n."""
    if df is None or not len(df):
        return "(no jobs)"
    keys = config_keys(df)
    rows = []
    for vals, idx in config_groups(df, keys):
        g = df.loc[idx]
        ok = g[g.status.isin(OK)]
        status = ",".join(f"{s}" + (f" x{c}" if c > 1 else "") for s, c in _status_labels(g).value_counts().items())
        stats = {m: _mean_std(_finite(ok[m])) if m in ok else (np.nan, np.nan)
                 for m in ("val_acc", "test_acc", "wall_time_s", "best_val_acc")}
        rows.append(([str(g[k].iloc[0]) for k in keys], status, len(ok), stats))
    # best first by the sweep's choice (best.json: the mean best-epoch val accuracy), else by final val accuracy
    rank = "best_val_acc" if "best_val_acc" in df else "val_acc"
    rows.sort(key=lambda r: -(r[3][rank][0] if r[3][rank][0] == r[3][rank][0] else -1))
    seeds = seed_varies(df)
    head = keys + ["status"] + (["n"] if seeds else []) + ["val_acc", "test_acc", "time_s"]
    table = [head] + [vals + [status] + ([str(n)] if seeds else []) +
                      [pm(*st["val_acc"]), pm(*st["test_acc"]), pm(*st["wall_time_s"], digits=1)]
                      for vals, status, n, st in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()[:width] for r in table]
    return "\n".join([lines[0], "-" * min(width, len(lines[0]))] + lines[1:])
