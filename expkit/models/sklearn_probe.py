"""sklearn LogisticRegression (defaults) on frozen ImageNet ResNet18 features (cached)."""
from expkit.models import resnet18
from expkit.schemas import SklearnProbeConf as Conf  # noqa: F401 (declared once, there)



def input_transform(conf):
    resnet18.weights_file(conf)  # no weights: skipped before any decoding
    return resnet18.Transform(resize=256, crop=224, normalize=resnet18.IMAGENET)


def build(conf, splits):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression()


def frozen_backbone(conf, model):
    """The estimator fits on the frozen ImageNet ResNet18's cached features."""
    net, digest = resnet18.backbone(conf)
    net.requires_grad_(False)  # frozen: precision=auto computes its features in fp32, not the ResNet's bf16
    return net, digest, model
