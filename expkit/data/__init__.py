"""Data sets, one module each, keyed by `data.name`. A module defines `Conf` and `load(conf)`."""
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

    @property
    def input_shape(self):
        return tuple(self.train.x.shape[1:])

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def _module(name):
    require(name in DATASETS, f"unknown data set {name!r}; choose one of {sorted(DATASETS)} (data=NAME)")
    return importlib.import_module(DATASETS[name])


def data_schema(name):
    return _module(name).Conf


def load(conf, model_conf=None) -> Splits:
    """model_conf lets a data set pick the input transform a model needs (e.g. ResNet vs XGBoost)."""
    mod = _module(conf.name)
    splits = mod.load(conf, model_conf) if getattr(mod, "WANTS_MODEL_CONF", False) else mod.load(conf)
    for part, s in splits.items():
        require(len(s) > 0, f"data split {part!r} is empty; check data.root")
    return splits
