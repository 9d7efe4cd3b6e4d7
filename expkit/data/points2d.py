"""A 2-D two-class toy problem that a linear model cannot solve (pset10 part 2).

Real data: ROOT/X_classification.npy (N x 2) and ROOT/y_classification.npy (N labels).
Default: a built-in generator (scikit-learn's make_circles: one ring inside another).
Split 50:50 with train_test_split(random_state=42), as in the pset: the test half is the pset's test
set, untouched. Validation = 10% of the training half (at least 1 point), carved stratified with
data.split_seed (default 0; not the run's seed, so a seed sweep keeps the same split) and never
trained on; the model trains on the other 90%. The test half is never used for validation.
"""
from pathlib import Path

import numpy as np

from expkit.data import Split, Splits, carve
from expkit.errors import UserError, require
from expkit.schemas import Points2dConf as Conf  # noqa: F401 (declared once, there)


def load(conf) -> Splits:
    from sklearn.model_selection import train_test_split

    if conf.root:
        x, y = _read(Path(conf.root))
        desc = f"points2d from {conf.root}"
    else:
        from sklearn.datasets import make_circles

        require(conf.n >= 4, f"data.n must be >= 4, got {conf.n}")
        x, y = make_circles(conf.n, noise=conf.noise, factor=0.5, random_state=0)
        desc = (f"points2d: EMBEDDED DEFAULT (built-in generator: {conf.n} points on two noisy concentric rings), "
                "not the pset's npy files; set data.root for those")
    idx = np.arange(len(y))
    xtr, xte, ytr, yte, itr, ite = train_test_split(x.astype(np.float32), y.astype(np.int64), idx,
                                                    test_size=0.5, random_state=42)
    rest, held = carve(ytr, max(1, len(ytr) // 10), conf.split_seed)
    info = {"train": f"train half (50:50, random_state 42) minus val: {len(rest):,} points",
            "val": f"{len(held):,} points (10%) carved from the train half, stratified, split_seed {conf.split_seed}",
            "test": f"test half (50:50, random_state 42): {len(yte):,} points"}
    return Splits(Split(xtr[rest], ytr[rest], itr[rest]), Split(xtr[held], ytr[held], itr[held]),
                  Split(xte, yte, ite), n_classes=int(y.max()) + 1, split_info=info,
                  description=desc + f"; 50:50 train/test split, validation = {len(held)} points of the train half")


def _read(root):
    paths = [root / "X_classification.npy", root / "y_classification.npy"]
    for p in paths:
        require(p.is_file(), f"missing {p}; data.root must hold X_classification.npy and y_classification.npy")
    try:
        x, y = (np.load(p, allow_pickle=False) for p in paths)
    except Exception as ex:
        raise UserError(f"cannot read the npy files in {root} ({type(ex).__name__}: {ex})") from None
    y = y.reshape(-1)
    require(x.ndim == 2 and x.shape[1] == 2 and len(x) == len(y),
            f"{root}: X must be N x 2 and y must hold N labels (got {x.shape} and {y.shape})")
    require(np.isfinite(x).all(), f"{root}/X_classification.npy holds NaN/inf values; drop or fix those rows")
    require(np.issubdtype(y.dtype, np.number) and (y == np.round(y)).all() and y.min() >= 0,
            f"{root}/y_classification.npy must hold integer class ids 0..K-1")
    return x, y
