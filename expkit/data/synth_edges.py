"""Synthetic edges: 28x28 grey images of a horizontal (class 0) or vertical (class 1) edge (a short
bright line) at a random position; what differs within a class is where the edge is, and its length.

Real data: the course pickle (a dict with `trainX`, N x 28 x 28, and `trainY`) at data.root
(the file, or a folder holding synth_data / synth_data.pkl). Default: a built-in generator.
Both are split 80/10/10 into train/val/test, stratified, with the fixed random_state 0 (not the
run's seed, so a seed sweep keeps the same split): validation and test are disjoint 10% parts of
the one source (the course pickle holds only trainX/trainY); the test part never validates.
"""
import pickle
from pathlib import Path

import numpy as np

from expkit.data import Split, Splits
from expkit.data.imageops import Normalize
from expkit.errors import UserError, require
from expkit.schemas import SynthEdgesConf as Conf  # noqa: F401 (declared once, there)

NAMES = ("synth_data", "synth_data.pkl", "synth_data.pickle")


def generate(n, noise=0.1, seed=0, size=28):
    """A bright line segment 2 pixels thick and 8..16 long, horizontal (class 0) or vertical
    (class 1), anywhere in the image, plus Gaussian noise. Returns float32 N x size x size, int64."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    length = rng.integers(8, 17, n)
    r0 = rng.integers(0, size - 1, n)               # the row of a horizontal segment
    c0 = (rng.random(n) * (size - length + 1)).astype(int)  # where it starts along the row
    r = np.arange(size)
    rows = (r[None, :] >= r0[:, None]) & (r[None, :] < r0[:, None] + 2)
    cols = (r[None, :] >= c0[:, None]) & (r[None, :] < (c0 + length)[:, None])
    img = rows[:, :, None] & cols[:, None, :]       # horizontal; transposed for class 1
    img = np.where(y[:, None, None] == 1, img.transpose(0, 2, 1), img).astype(np.float32)
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    order = rng.permutation(n)
    return img[order], y[order].astype(np.int64)


def load(conf) -> Splits:
    if conf.root:
        x, y = _read(Path(conf.root))
        desc = f"synthetic edges from the pickle {conf.root}"
    else:
        require(conf.n >= 20, f"data.n must be >= 20, got {conf.n}")
        x, y = generate(conf.n, conf.noise)
        x = x * conf.scale
        desc = (f"synth_edges: EMBEDDED DEFAULT (built-in generator: {conf.n} 28x28 images of horizontal vs "
                "vertical edges at random positions), not the course pickle; set data.root for that")
    x = x.reshape(len(x), 1, *x.shape[-2:])
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.2, random_state=0, stratify=y)
    va, te = train_test_split(rest, test_size=0.5, random_state=0, stratify=y[rest])
    parts = [Split(x[i], y[i], i) for i in (tr, va, te)]
    source = "the pickle's trainX" if conf.root else "the generated images"
    info = {part: f"stratified {pct}% of {source}: {len(i):,} images (80/10/10, random_state 0)"
            for part, pct, i in zip(("train", "val", "test"), (80, 10, 10), (tr, va, te))}
    return Splits(*parts, n_classes=int(y.max()) + 1, description=desc, prepare=Normalize([0.0], [1.0], 1.0),
                  split_info=info)


def _read(root: Path):
    path = root if root.is_file() else next((root / n for n in NAMES if (root / n).is_file()), None)
    require(path is not None, f"no synth_data pickle at {root}; give the file or a folder holding one of {list(NAMES)}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f)  # the course format is a pickle: only open files you trust
        x, y = np.asarray(d["trainX"], np.float32), np.asarray(d["trainY"])
    except (KeyError, TypeError, IndexError):
        raise UserError(f"{path} is not the synth_data format: expected a dict with keys 'trainX', 'trainY'") from None
    except Exception as ex:
        raise UserError(f"cannot read {path} as a pickle ({type(ex).__name__}: {ex})") from None
    y = y.reshape(-1)
    require(x.ndim in (3, 4) and len(x) == len(y), f"{path}: trainX must be N x 28 x 28 with N labels in trainY "
            f"(got {x.shape} and {y.shape})")
    require(np.isfinite(x).all(), f"{path}: trainX holds NaN/inf values")
    require(np.issubdtype(y.dtype, np.number) and (y == y.round()).all() and y.min() >= 0,
            f"{path}: trainY must hold integer class ids 0..K-1")
    if x.ndim == 4:  # N x H x W x 1 or N x 1 x H x W
        x = x[..., 0] if x.shape[-1] == 1 else x[:, 0]
    return x, y.astype(np.int64)
