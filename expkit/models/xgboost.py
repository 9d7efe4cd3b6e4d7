"""XGBoost (default parameters) on flattened pixels: resize 224, centre crop 64 -> 12,288 values."""
from expkit.data.images import Transform
from expkit.schemas import XGBoostConf as Conf  # noqa: F401 (declared once, there)



def input_transform(conf):
    return Transform(resize=224, crop=64)  # uint8 pixels: trees split on order, so no scaling needed


def build(conf, splits):
    import torch
    from xgboost import XGBClassifier

    return XGBClassifier(n_jobs=torch.get_num_threads())  # defaults; threads = this job's share of cores
