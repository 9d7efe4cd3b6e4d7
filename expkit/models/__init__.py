"""Models, one module each, keyed by `model.name`.

A module defines `KIND` ("torch": an nn.Module trained by trainers/torch.py, or "estimator": an
sklearn-style object fit by trainers/estimator.py) and `build(conf, splits)`; its `Conf`, the
schema of `model`, is declared in expkit/schemas.py (MODEL_SCHEMAS) and imported from there.
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
    """The schema of model `name` (expkit/schemas.py), without importing its module."""
    from expkit.schemas import MODEL_SCHEMAS

    require(name in MODELS, f"unknown model {name!r}; choose one of {sorted(MODELS)} (model=NAME)")
    return MODEL_SCHEMAS[name]


def model_kind(name):
    return _module(name).KIND


def input_transform(conf):
    """The image transform a model needs (e.g. a pretrained ResNet's own), or None. It may raise
    Skipped (pretrained weights not on this machine) before any image is decoded."""
    mod = _module(conf.name)
    return mod.input_transform(conf) if hasattr(mod, "input_transform") else None


def frozen_backbone(conf, model):
    """(backbone, weights digest, the part that trains) when this model trains on cached frozen
    features (a linear probe, sklearn_probe), else None: run.py swaps the inputs for features."""
    mod = _module(conf.name)
    return mod.frozen_backbone(conf, model) if hasattr(mod, "frozen_backbone") else None


def build(conf, splits):
    """Return (kind, model)."""
    mod = _module(conf.name)
    return mod.KIND, mod.build(conf, splits)
