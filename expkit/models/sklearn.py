"""Any scikit-learn (or xgboost) estimator by its class path: model._target_ + model.params.

    model=sklearn model._target_=sklearn.svm.SVC +model.params.kernel=rbf
Inputs are the data's arrays flattened to one row per sample (images: their raw pixels).
"""
import importlib

from expkit.errors import UserError, require
from expkit.schemas import SklearnConf as Conf  # noqa: F401 (declared once, there)

ALLOWED = ("sklearn.", "xgboost.")  # only estimator libraries: a config must not import arbitrary code


def build(conf, splits):
    target = conf._target_
    require(target.startswith(ALLOWED) and "." in target,
            f"model._target_ must be an estimator class path under {'/'.join(a[:-1] for a in ALLOWED)}, "
            f"e.g. sklearn.svm.SVC (got {target!r})")
    module, _, cls = target.rpartition(".")
    try:
        est = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        raise UserError(f"model._target_={target} not found; check the class path (e.g. sklearn.svm.SVC)") from None
    try:
        model = est(**dict(conf.params))
        if hasattr(model, "_validate_params"):  # sklearn checks values only at fit time: fail before training
            model._validate_params()
    except (TypeError, ValueError) as ex:
        raise UserError(f"model.params for {cls}: {str(ex).splitlines()[0]}") from None
    return model
