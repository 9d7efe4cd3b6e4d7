"""CIFAR-10: 32x32 RGB images -> 10 object classes.

Real data: torchvision's files under data.root (ROOT/cifar-10-batches-py/{data_batch_1..5,
test_batch}, pickled dicts of `data` N x 3072 uint8 and `labels`; ROOT may also be that folder).
data.download=true lets torchvision fetch them (needs the internet). No embedded default.
Training batches get a random flip and a random 32x32 crop of the 4-pixel zero-padded image
(on the device); all inputs are normalised with the course's mean and std.
"""
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from expkit.data import Split, Splits
from expkit.data.imageops import FlipCrop, Normalize
from expkit.errors import UserError, require

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # the pset's Normalize constants
FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


@dataclass
class Conf:
    name: str = "cifar10"
    root: Optional[str] = None
    download: bool = False            # let torchvision download CIFAR-10 into root (internet)
    train_size: Optional[int] = None  # the first N training images (pset10's SVC: 10,000); null = all
    val_size: int = 0                 # hold out the last N training images; 0 = validate on the test set
    augment: bool = True              # random flip + crop (padding 4) of training batches


def load(conf) -> Splits:
    require(conf.root, "data=cifar10 needs data.root=DIR with torchvision's cifar-10-batches-py/ (no embedded "
            "default; data.download=true data.root=DIR fetches it; `python scripts/make_fixtures.py DIR` writes "
            "a tiny one in the real format to try)")
    root = Path(conf.root)
    if conf.download:
        _download(root)
    folder = root if (root / "test_batch").is_file() else root / FOLDER
    require((folder / "test_batch").is_file(), f"no CIFAR-10 batches under {root}: expected {root / FOLDER}/"
            "data_batch_1..5 and test_batch (torchvision's layout); or data.download=true to fetch them")
    xtr, ytr = map(np.concatenate, zip(*[_batch(folder / f) for f in TRAIN]))
    xte, yte = _batch(folder / "test_batch")
    require(conf.val_size >= 0 and conf.val_size < len(ytr), f"data.val_size must be 0..{len(ytr) - 1}, got {conf.val_size}")
    ids = np.arange(len(ytr))
    val = None
    if conf.val_size:
        val = Split(xtr[-conf.val_size:], ytr[-conf.val_size:], ids[-conf.val_size:])
        xtr, ytr, ids = xtr[:-conf.val_size], ytr[:-conf.val_size], ids[:-conf.val_size]
    if conf.train_size is not None:
        require(conf.train_size >= 1, f"data.train_size must be >= 1, got {conf.train_size}")
        xtr, ytr, ids = xtr[:conf.train_size], ytr[:conf.train_size], ids[:conf.train_size]
    test = Split(xte, yte, np.arange(len(yte)))
    norm = Normalize(MEAN, STD)
    desc = (f"CIFAR-10 from {folder}: {len(ytr)} training images"
            + ("" if val else " (validation = the test set)") + (", flip+crop augmentation" if conf.augment else ""))
    return Splits(Split(xtr, ytr, ids), val or test, test, n_classes=10, description=desc,
                  prepare=norm, augment=FlipCrop(norm, 4) if conf.augment else None)


def _batch(path):
    require(path.is_file(), f"missing CIFAR-10 file {path}; the folder must hold data_batch_1..5 and test_batch")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # torchvision reads the same pickles the same way
        x = np.asarray(d["data"], np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d["labels"] if "labels" in d else d["fine_labels"], np.int64)
    except Exception as ex:
        raise UserError(f"cannot read CIFAR-10 batch {path} ({type(ex).__name__}: {ex}); "
                        "expected a pickled dict with 'data' (N x 3072 uint8) and 'labels'") from None
    require(len(x) == len(y), f"{path}: {len(x)} images but {len(y)} labels")
    require(len(y) == 0 or (y.min() >= 0 and y.max() <= 9), f"{path}: labels must be 0..9")
    return x, y


def _download(root):
    from torchvision.datasets import CIFAR10

    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as ex:
        raise UserError(f"downloading CIFAR-10 into {root} failed ({type(ex).__name__}: "
                        f"{str(ex).splitlines()[0][:150]}); without internet, copy cifar-10-batches-py there") from None
