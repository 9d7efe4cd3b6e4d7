"""CIFAR-10: 32x32 RGB images -> 10 object classes.

Real data: torchvision's files under data.root (ROOT/cifar-10-batches-py/{data_batch_1..5,
test_batch}, pickled dicts of `data` N x 3072 uint8 and `labels`; ROOT may also be that folder).
data.download=true lets torchvision fetch them (needs the internet). No embedded default.
Training batches get a random flip and a random 32x32 crop of the 4-pixel zero-padded image
(on the device); all inputs are normalised with the course's mean and std.

Splits: test = test_batch (10,000), untouched. Validation = data.val_size images (null: 10% of
the training images, 5,000 of the 50,000) carved from data_batch_1..5, stratified by class, with
data.split_seed (default 0; not the run's seed, so a seed sweep keeps the same split). Training =
the other training images, in file order. data.train_size=N trains on exactly the first N
training images (as pset10's SVC asks) and carves validation from the images after them. The
test set is never used for validation (val_size 0 is an error).
"""
import pickle
from pathlib import Path

import numpy as np

from expkit.data import Split, Splits, carve
from expkit.data.imageops import FlipCrop, Normalize
from expkit.errors import UserError, require
from expkit.schemas import Cifar10Conf as Conf  # noqa: F401 (declared once, there)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # the pset's Normalize constants
FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


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
    # train_size=N trains on exactly the first N images (pset10's SVC: 10,000); validation then comes
    # from the training images after them, so the source's training set is kept as it is
    pool = np.arange(len(ytr))
    if conf.train_size is not None:
        require(1 <= conf.train_size < len(ytr), f"data.train_size must be 1..{len(ytr) - 1} (the rest of the "
                f"training images give the validation split), got {conf.train_size}")
        pool = pool[conf.train_size:]
    n_val = min(len(ytr) // 10, len(pool) - (conf.train_size is None)) if conf.val_size is None else conf.val_size
    require(1 <= n_val <= len(pool) - (conf.train_size is None),
            f"data.val_size must be 1..{len(pool) - (conf.train_size is None)} (validation images carved from the "
            f"training images; the test set is never used for validation), got {n_val}")
    if conf.train_size is None:
        rest, held = carve(ytr, n_val, conf.split_seed)
    else:
        rest = np.arange(conf.train_size)
        held = pool[carve(ytr[pool], n_val, conf.split_seed)[1]] if n_val < len(pool) else pool
    val = Split(xtr[held], ytr[held], held)
    test = Split(xte, yte, np.arange(len(yte)))
    norm = Normalize(MEAN, STD)
    info = {"train": (f"{folder.name} data_batch_1..5: the first {len(rest):,} images" if conf.train_size is not None
                      else f"{folder.name} data_batch_1..5 minus val: {len(rest):,} images"),
            "val": f"{n_val:,} images carved from the training batches"
                   + (f" after the first {conf.train_size:,}" if conf.train_size is not None else "")
                   + f", stratified, split_seed {conf.split_seed}",
            "test": f"{folder.name} test_batch ({len(yte):,} images)"}
    desc = (f"CIFAR-10 from {folder}: {len(rest)} training images, {n_val} validation images carved from the "
            f"training batches" + (", flip+crop augmentation" if conf.augment else ""))
    return Splits(Split(xtr[rest], ytr[rest], rest), val, test, n_classes=10, description=desc,
                  prepare=norm, augment=FlipCrop(norm, 4) if conf.augment else None, split_info=info)


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
