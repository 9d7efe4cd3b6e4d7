"""Data sets, one module each, keyed by `data.name`. A module defines `load(conf)`; its `Conf`, the
schema of `data`, is declared in expkit/schemas.py (DATA_SCHEMAS) and imported from there.

Model selection (best epoch, early stopping, a sweep's "best") reads only `Splits.val`, never
`Splits.test`: a data set without its own validation split carves one from its training data
with a fixed seed (`carve`; never the run's `seed`, so a seed sweep keeps the same split), and
every `load` says in `Splits.split_info` how each part was made (saved in summary.json)."""
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from expkit.errors import require

DATASETS = {
    "countries": "expkit.data.countries",
    "mnist": "expkit.data.mnist", "dogset": "expkit.data.dogset", "synth_edges": "expkit.data.synth_edges", "cifar10": "expkit.data.cifar10", "points2d": "expkit.data.points2d",
    "deepfake": "expkit.data.deepfake",
}


@dataclass
class Split:
    x: Any                   # np.ndarray or torch.Tensor (images stay uint8 until `prepare`)
    y: np.ndarray            # int64 class labels
    ids: Optional[Any] = None  # sample ids saved with predictions (file names, row indices)

    def __len__(self):
        return len(self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    n_classes: int
    description: str                     # logged, and saved in summary.json
    prepare: Optional[Callable] = None   # batch on device -> float model input (all splits)
    augment: Optional[Callable] = None   # batch on device -> augmented batch (train only)
    extras: dict = field(default_factory=dict)
    split_info: dict = field(default_factory=dict)  # "train"/"val"/"test" -> how it was made (summary.json)

    @property
    def input_shape(self):
        return tuple(self.train.x.shape[1:])

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def _module(name):
    require(name in DATASETS, f"unknown data set {name!r}; choose one of {sorted(DATASETS)} (data=NAME)")
    return importlib.import_module(DATASETS[name])


def data_schema(name):
    """The schema of data set `name` (expkit/schemas.py), without importing its module."""
    from expkit.schemas import DATA_SCHEMAS

    require(name in DATASETS, f"unknown data set {name!r}; choose one of {sorted(DATASETS)} (data=NAME)")
    return DATA_SCHEMAS[name]


def load(conf, transform=None) -> Splits:
    """transform: the image transform the model needs (expkit.models.input_transform), for data
    sets that decode images (TAKES_TRANSFORM); the others have fixed inputs."""
    mod = _module(conf.name)
    splits = mod.load(conf, transform) if getattr(mod, "TAKES_TRANSFORM", False) else mod.load(conf)
    for part, s in splits.items():
        require(len(s) > 0, f"data split {part!r} is empty; check data.root")
        require(splits.split_info.get(part), f"data set {conf.name!r} does not say how its {part!r} split was made "
                "(Splits.split_info); every data module must fill it for train, val and test")
    return splits


def carve(y, n, seed):
    """(rest, held): `n` indices of labels `y` held out, stratified (each class in proportion, the
    largest remainders rounded up), drawn with `np.random.default_rng(seed)`; `rest` = the other
    indices in their original order. The same y, n and seed always give the same carve."""
    y = np.asarray(y)
    require(1 <= n < len(y), f"cannot hold out {n} of {len(y)} samples; the validation size must be 1..{len(y) - 1}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n / len(y))
    k = np.floor(quota).astype(int)
    k[np.argsort(-(quota - k), kind="stable")[:n - k.sum()]] += 1
    held = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:m] for c, m in zip(classes, k)])
    mask = np.zeros(len(y), bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.sort(held)
