"""MNIST digits -> 10 classes, class-balanced training subsets of a given size.

Real data: torchvision's files under data.root (ROOT/MNIST/raw/*-ubyte, as
torchvision.datasets.MNIST(ROOT) leaves them; ROOT/raw/ or ROOT/ itself also work).
data.download=true lets torchvision fetch them into ROOT (needs the internet).
Default: scikit-learn's bundled 8x8 digits (1,797 images; no download): a fixed class-balanced
1,500 (150 per class) stand in for the training file, the other 297 for the test file; the
model's input size follows the data.

Splits: test = a class-balanced subset of the test file (data.test_size; all of it when that is
as large; drawn with the fixed seed 0). Validation = data.val_size images (null: 10% of the
training images, at most 1,000: MNIST 1,000, the digits 150) carved class-balanced from the
training images with data.split_seed (default 0; not the run's seed, so a seed sweep keeps the
same split); they are never trained on. Training = a class-balanced subset of the rest
(data.train_size; same seed). The test images are never used for validation.
"""
import logging
from pathlib import Path

import numpy as np

from expkit.data import Split, Splits
from expkit.data.imageops import Normalize, balanced_indices
from expkit.errors import UserError, require
from expkit.schemas import MnistConf as Conf  # noqa: F401 (declared once, there)

log = logging.getLogger(__name__)
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DIGITS_TRAIN_PER_CLASS = 150  # the embedded digits: 150 per class as the training file, the other 297 to test
VAL_MAX = 1000  # data.val_size null: 10% of the training images, at most this many


def load(conf) -> Splits:
    for key in ("train_size", "val_size", "test_size"):
        v = getattr(conf, key)
        require(v is None or v >= 1, f"data.{key} must be >= 1, got {v}"
                + (" (validation images are carved from the training images; the test set is never used "
                   "for validation)" if key == "val_size" else ""))
    if conf.root:
        (xtr, ytr), (xte, yte) = _read(Path(conf.root), conf.download)
        desc = f"MNIST from {conf.root}"
        source = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
        scale = 255.0
    else:
        require(not conf.download, "data.download=true needs data.root=DIR to download MNIST into")
        (xtr, ytr), (xte, yte) = _digits()
        desc = ("mnist: EMBEDDED DEFAULT (scikit-learn's 8x8 digits, 1,797 images: 1,500 training images, "
                "validation carved from them, 297 to test), not MNIST; set data.root for MNIST")
        source = {"train": "the 1,500 sklearn digits set aside for training (150 per class, fixed seed 0)",
                  "test": "the other 297 sklearn digits"}
        scale = 16.0  # digits pixels are 0..16
    # the test subset is fixed (seed 0): the whole test set when it is asked for (the digits' 297 are
    # not balanced); else a balanced subset
    te = (np.arange(len(yte)) if conf.test_size >= len(yte)
          else balanced_indices(yte, conf.test_size, np.random.default_rng(0), "data.test_size"))
    # validation: held-out training images; the subsets to train on come from the rest
    rng = np.random.default_rng(conf.split_seed)  # not the run's seed: seeds and sizes see the same data
    n_val = min(VAL_MAX, len(ytr) // 10) if conf.val_size is None else conf.val_size
    if n_val > len(ytr) // 2:
        log.warning("data.val_size=%d is more than half of the %d training images; using %d",
                    n_val, len(ytr), len(ytr) // 2)
        n_val = len(ytr) // 2
    order = rng.permutation(len(ytr))
    val = balanced_indices(ytr, n_val, rng, "data.val_size")
    pool = np.setdiff1d(order, val, assume_unique=True)
    n = conf.train_size or len(pool)
    tr = pool[balanced_indices(ytr[pool], n, rng)]
    desc += f"; {len(tr)} training images, class-balanced; {len(val)} validation images carved from the training images"
    info = {"train": f"{source['train']} minus val: {len(tr):,} class-balanced images",
            "val": f"{len(val):,} images carved from {source['train']}, class-balanced, split_seed {conf.split_seed}",
            "test": (f"{source['test']}: all {len(te):,} images" if len(te) == len(yte)
                     else f"{source['test']}: {len(te):,} of {len(yte):,} images, class-balanced, fixed seed 0")}
    return Splits(Split(xtr[tr], ytr[tr], tr), Split(xtr[val], ytr[val], val), Split(xte[te], yte[te], te),
                  n_classes=10, description=desc, prepare=Normalize([0.0], [1.0], scale), split_info=info)


def _read(root: Path, download):
    import torch

    if download:
        from torchvision.datasets import MNIST

        try:
            for train in (True, False):
                MNIST(str(root), train=train, download=True)
        except Exception as ex:
            raise UserError(f"downloading MNIST into {root} failed ({type(ex).__name__}: "
                            f"{str(ex).splitlines()[0][:150]}); without internet, copy the files there") from None
    from torchvision.datasets.mnist import read_image_file, read_label_file

    dirs = [root / "MNIST" / "raw", root / "raw", root]
    found = next((d for d in dirs if (d / FILES["train"][0]).is_file()), None)
    if found is None:
        gz = next((d for d in dirs if (d / (FILES["train"][0] + ".gz")).is_file()), None)
        hint = f"gunzip the .gz files in {gz}" if gz else "or data.download=true to fetch them"
        raise UserError(f"no MNIST files under {root}: expected {root}/MNIST/raw/{FILES['train'][0]} "
                        f"(torchvision's layout) and the other three idx files; {hint}")
    out = []
    for part, (images, labels) in FILES.items():
        try:
            x, y = read_image_file(str(found / images)), read_label_file(str(found / labels))
        except FileNotFoundError as ex:
            raise UserError(f"missing MNIST file {ex.filename}; {found} must hold all four idx files") from None
        except Exception as ex:
            raise UserError(f"cannot read MNIST idx file in {found} ({type(ex).__name__}: {ex}); "
                            "are they intact, un-gzipped idx files?") from None
        require(len(x) == len(y), f"MNIST {part}: {len(x)} images but {len(y)} labels in {found}")
        out.append((x.unsqueeze(1).numpy(), y.to(torch.int64).numpy()))  # N, 1, 28, 28 uint8
    return out


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]  # N, 1, 8, 8 with values 0..16
    y = d.target.astype(np.int64)
    tr = balanced_indices(y, 10 * DIGITS_TRAIN_PER_CLASS, np.random.default_rng(0))
    te = np.setdiff1d(np.arange(len(y)), tr)
    return (x[tr], y[tr]), (x[te], y[te])
