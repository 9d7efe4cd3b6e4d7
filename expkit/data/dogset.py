"""DogSet: 64x64 RGB photos of dogs -> breed (10 classes in the course set).

Real data only (no embedded default: the set is not redistributable): ROOT/dogs.csv with
columns filename, partition (train | valid | test), numeric_label, semantic_label, and the
images in ROOT/images/. Decoded images are cached (keyed by the file list, sizes and times).
Inputs are normalised per channel with the training set's mean and std.
Splits: the csv's own partitions (train -> train, valid -> val, test -> test); the test
partition is never used for validation.
"""
import logging
from pathlib import Path

import numpy as np

from expkit.cache import atomic_write, cache_dir, key
from expkit.data import Split, Splits
from expkit.data.imageops import Normalize, channel_stats
from expkit.errors import UserError, require
from expkit.schemas import DogsetConf as Conf  # noqa: F401 (declared once, there)

log = logging.getLogger(__name__)
COLUMNS = ["filename", "partition", "numeric_label", "semantic_label"]
PARTS = {"train": "train", "val": "valid", "test": "test"}


def load(conf) -> Splits:
    require(conf.root, "data=dogset needs data.root=DIR holding dogs.csv and images/ (no embedded default; "
            "`python scripts/make_fixtures.py DIR` writes a tiny one in the real format to try)")
    require(conf.image_size >= 8, f"data.image_size must be >= 8, got {conf.image_size}")
    root = Path(conf.root)
    df = _read_csv(root / "dogs.csv")
    labels = sorted(df.numeric_label.unique())
    to_class = {v: i for i, v in enumerate(labels)}  # numeric labels -> 0..K-1
    x = _images(root / "images", list(df.filename), conf.image_size)
    y = df.numeric_label.map(to_class).to_numpy(np.int64)
    splits, info = {}, {}
    for ours, theirs in PARTS.items():
        m = (df.partition == theirs).to_numpy()
        require(m.any(), f"{root / 'dogs.csv'} has no rows with partition '{theirs}'; need train, valid and test")
        splits[ours] = Split(x[m], y[m], df.filename[m].to_numpy())
        info[ours] = f"dogs.csv partition {theirs} ({int(m.sum()):,} images)"
    mean, std = channel_stats(splits["train"].x)
    names = df.drop_duplicates("numeric_label").set_index("numeric_label").semantic_label
    desc = (f"DogSet from {root}: {len(labels)} breeds ({', '.join(str(names[v]) for v in labels[:4])}...), "
            f"{conf.image_size}x{conf.image_size} RGB")
    return Splits(splits["train"], splits["val"], splits["test"], n_classes=len(labels), description=desc,
                  prepare=Normalize(mean, std), split_info=info)


def _read_csv(path):
    import pandas as pd

    require(path.is_file(), f"missing {path}; data.root must hold dogs.csv and images/ (DogSet layout)")
    try:
        df = pd.read_csv(path)
    except Exception as ex:
        raise UserError(f"cannot read {path} as CSV ({ex}); expected columns {COLUMNS}") from None
    missing = [c for c in COLUMNS[:3] if c not in df.columns]
    require(not missing, f"{path} lacks column(s) {missing}; expected {COLUMNS} (found {list(df.columns)})")
    require(np.issubdtype(df.numeric_label.dtype, np.integer), f"{path}: numeric_label must hold integers")
    if "semantic_label" not in df:
        df["semantic_label"] = df.numeric_label.astype(str)
    bad = set(df.partition) - set(PARTS.values())
    require(not bad, f"{path}: unknown partition value(s) {sorted(bad)}; use train, valid, test")
    return df


def _images(folder, names, size):
    """N, 3, size, size uint8, decoded once and cached by content."""
    from PIL import Image

    require(folder.is_dir(), f"missing image folder {folder}; DogSet images go in ROOT/images/")
    missing = [n for n in names if not (folder / n).is_file()]
    require(not missing, f"{len(missing)} image(s) listed in dogs.csv are missing from {folder} (first: {missing[:1]})")
    stats = [(n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in names]
    path = cache_dir("data") / f"dogset_{key(str(folder.resolve()), stats, size)}.npy"
    if path.exists():
        return np.load(path)
    log.info("decoding %d DogSet images (once; cached at %s)", len(names), path)
    x = np.empty((len(names), size, size, 3), np.uint8)
    for i, n in enumerate(names):
        try:
            with Image.open(folder / n) as im:
                im = im.convert("RGB")
                x[i] = np.asarray(im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR))
        except Exception as ex:
            raise UserError(f"cannot decode image {folder / n} ({type(ex).__name__}); remove or replace it") from None
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), x))
    return x
