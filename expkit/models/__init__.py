"""Models, one module each, keyed by `model.name`.

A module defines `build(conf, splits)`; its kind ("torch": an nn.Module trained by trainers/torch.py,
or "estimator": an sklearn-style object fit by trainers/estimator.py) is declared here, beside its
module path, so a sweep can plan its jobs without importing torch (~2 s); its `Conf`, the schema of
`model`, is declared in expkit/schemas.py (MODEL_SCHEMAS) and imported from there.
"""
import importlib

from expkit.errors import require

MODELS = {  # name -> (module, kind)
    "mlp": ("expkit.models.mlp", "torch"), "cnn": ("expkit.models.cnn", "torch"),
    "resnet18": ("expkit.models.resnet18", "torch"), "sklearn": ("expkit.models.sklearn", "estimator"),
    "xgboost": ("expkit.models.xgboost", "estimator"), "sklearn_probe": ("expkit.models.sklearn_probe", "estimator"),
}


def _known(name):
    require(name in MODELS, f"unknown model {name!r}; choose one of {sorted(MODELS)} (model=NAME)")
    return MODELS[name]


def _module(name):
    return importlib.import_module(_known(name)[0])


def model_schema(name):
    """The schema of model `name` (expkit/schemas.py), without importing its module."""
    from expkit.schemas import MODEL_SCHEMAS

    _known(name)
    return MODEL_SCHEMAS[name]


def model_kind(name):
    return _known(name)[1]


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


def relative_cost(conf):
    """A rough cost of one step of this model, comparable between configurations of one model (a sweep
    dispatches the costliest units first). Models without an estimate cost 1. Does not import torch.
    MLP: per hidden layer a fixed launch cost plus its matmul's (width/40)^2 (fitted, roughly, to
    ex4/depth_width's fused groups on a CPU core: depth 6 at width 8 / 16 / 32 / 64 took 2.6 / 2.9 /
    3.3 / 7.7 s)."""
    if conf.name != "mlp":
        return 1.0
    widths = list(conf.hidden) if conf.hidden else [conf.width] * conf.depth
    return 1.0 + sum(1.0 + (w / 40) ** 2 for w in widths)


def build(conf, splits):
    """Return (kind, model)."""
    return model_kind(conf.name), _module(conf.name).build(conf, splits)
