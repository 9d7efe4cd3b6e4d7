"""Fit an sklearn-style estimator (sklearn, xgboost, or a feature pipeline) once: one 'epoch' row."""
import logging

import numpy as np

from expkit.trainers import History

log = logging.getLogger("expkit")


def as_matrix(split):
    x = split.x.numpy() if hasattr(split.x, "numpy") else np.asarray(split.x)
    return x.reshape(len(split), -1)


def probabilities(model, x, n_classes):
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(x), dtype=np.float64)
    return np.eye(n_classes)[np.asarray(model.predict(x), dtype=np.int64)]  # hard predictions only


def device_for(model, device):
    """The device an estimator fits on: XGBoost follows the run onto CUDA (its own GPU tree
    method; trainer.device=auto sends it there when a GPU is present); sklearn is CPU-only and
    says so when the run's device is a GPU (a probe's features may have been computed there)."""
    import torch

    from expkit.device import is_xgboost

    if is_xgboost(model):
        model.set_params(device=str(device) if device.type == "cuda" else "cpu")
        return device if device.type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        log.info("%s is an sklearn estimator: it fits on the CPU (summary.json device: cpu)", type(model).__name__)
    return torch.device("cpu")


def fit(model, splits, cfg) -> History:
    model.fit(as_matrix(splits.train), splits.train.y)
    row, probs = {"epoch": 1}, {}
    for part, split in splits.items():
        p = probabilities(model, as_matrix(split), splits.n_classes)
        p_true = np.clip(p[np.arange(len(split)), split.y], 1e-15, 1.0)
        row[f"{part}_loss"] = float(-np.log(p_true).mean())  # log loss (hard predictions: large)
        row[f"{part}_acc"] = float((p.argmax(1) == split.y).mean())
        probs[part] = p
    extras = {}
    if splits.extras.get("features"):  # inputs made by a frozen backbone: where and in what precision
        extras["features"] = dict(splits.extras["features"])
    if hasattr(model, "n_support_"):
        extras["n_support_vectors"] = int(np.sum(model.n_support_))
        extras["report_columns"] = {"n_support_vectors": extras["n_support_vectors"]}
    return History(rows=[row], iterations_per_epoch=1, test_probs=probs["test"], extras=extras)
