"""sklearn LogisticRegression (defaults) on frozen ImageNet ResNet18 features (cached)."""
from dataclasses import dataclass
from typing import Optional

from expkit.models import resnet18

KIND = "estimator"


@dataclass
class Conf:
    name: str = "sklearn_probe"
    weights_path: Optional[str] = None  # null = torch hub cache (see model=resnet18)


def input_transform(conf):
    resnet18.weights_file(conf)  # no weights: skipped before any decoding
    return resnet18.Transform(resize=256, crop=224, normalize=resnet18.IMAGENET)


def build(conf, splits):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression()


def frozen_backbone(conf, model):
    """The estimator fits on the frozen ImageNet ResNet18's cached features."""
    net, digest = resnet18.backbone(conf)
    return net, digest, model
