"""Table helpers shared by the sweep tables (aggregate.py) and the plots: which columns were swept,
the configurations (the swept keys but seed) and their jobs, mean ± std over seeds, markdown.
numpy and pandas only: nothing here draws, and nothing here imports another report module."""
import numpy as np
import pandas as pd

SEED = "seed"


def swept_keys(df):
    cols = list(df.columns)
    return cols[cols.index("job") + 1:cols.index("status")]


def config_keys(df):
    """The swept keys that define a configuration: all but the seed."""
    return [k for k in swept_keys(df) if k != SEED]


def seed_varies(df):
    return len(df) > 0 and SEED in swept_keys(df)  # collect() keeps only the swept keys that vary


def config_groups(df, keys=None):
    """[(config values, [row index, ...])] in order of first appearance; a missing value is its own value.
    Jobs group only when they differ in seed: without a swept seed, every job is its own group."""
    if not seed_varies(df):
        return [((str(i),), [i]) for i in df.index]
    keys = config_keys(df) if keys is None else keys
    groups = {}
    for i, vals in zip(df.index, df[keys].astype(str).itertuples(index=False, name=None)):
        groups.setdefault(tuple(vals), []).append(i)
    return list(groups.items())


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
