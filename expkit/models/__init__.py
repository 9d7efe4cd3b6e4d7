"""Models, one module each, keyed by `model.name`.

A module defines `Conf`, `KIND` ("torch": an nn.Module trained by trainers/torch.py, or
"estimator": an sklearn-style object fit by trainers/estimator.py) and `build(conf, splits)`.
"""
import importlib

from expkit.errors import require

MODELS = {
    "mlp": "expkit.models.mlp",
    "cnn": "expkit.models.cnn", "sklearn": "expkit.models.sklearn",
    "resnet18": "expkit.models.resnet18", "xgboost": "expkit.models.xgboost", "sklearn_probe": "expkit.models.sklearn_probe",
}


def _module(name):
    require(name in MODELS, f"unknown model {name!r}; choose one of {sorted(MODELS)} (model=NAME)")
    return importlib.import_module(MODELS[name])


def model_schema(name):
    return _module(name).Conf


def build(conf, splits):
    """Return (kind, model)."""
    mod = _module(conf.name)
    return mod.KIND, mod.build(conf, splits)
