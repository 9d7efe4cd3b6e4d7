"""ResNet18 with a one-logit head (BCE-with-logits): mode scratch | linear_probe | finetune.

Pretrained modes load torchvision's ResNet18_Weights.IMAGENET1K_V1 file from the local torch
hub cache (or model.weights_path) with weights_only=True; without it the job is skipped with
the place to put the file, never silently trained from random weights.
The linear probe keeps the backbone frozen and in eval mode (BatchNorm statistics fixed); by
default it trains the head on cached frozen features (expkit/features.py), which is the same
computation without the backbone forward on every step.
"""
import hashlib
import logging
from pathlib import Path

from expkit.data.images import IMAGENET, Transform
from expkit.errors import Skipped, UserError, require
from expkit.schemas import ResNet18Conf as Conf  # noqa: F401 (declared once, there)

log = logging.getLogger(__name__)
MODES = ("scratch", "linear_probe", "finetune")
WEIGHTS_FILE = "resnet18-f37072fd.pth"  # torchvision ResNet18_Weights.IMAGENET1K_V1
EVAL_CHUNK = 64  # eval forward in chunks: memory stays bounded whatever trainer.eval_batch_size is


def _check_mode(conf):
    require(conf.mode in MODES, f"model.mode must be one of {', '.join(MODES)}, got {conf.mode!r}")


def weights_file(conf) -> Path:
    """The pretrained weights file, or Skipped saying where to put it."""
    import torch

    if conf.weights_path:
        path = Path(conf.weights_path).expanduser()
        if not path.is_file():
            raise Skipped(f"model.weights_path={path} does not exist; point it at a ResNet18 state_dict file "
                          f"(torchvision's {WEIGHTS_FILE})")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if not path.is_file():
        raise Skipped(f"pretrained ResNet18 weights not found (offline, no download): put torchvision's "
                      f"{WEIGHTS_FILE} (ResNet18_Weights.IMAGENET1K_V1) at {path} or set model.weights_path=FILE")
    return path


def input_transform(conf) -> Transform:
    """The catalog's transforms; checks the weights first so a job without them stops before decoding."""
    _check_mode(conf)
    if conf.mode == "scratch":
        return Transform(resize=224)
    weights_file(conf)
    return Transform(resize=256, crop=224, normalize=IMAGENET)  # the pretrained weights' own transform


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def backbone(conf, pretrained=True):
    """torchvision resnet18 without its fc (512-d output) and the weights' hash (None when random)."""
    import torch
    import torchvision
    from torch import nn

    net = torchvision.models.resnet18(weights=None)
    digest = None
    if pretrained:
        path = weights_file(conf)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
            net.load_state_dict(state)
        except Exception as ex:
            raise UserError(f"cannot load ResNet18 weights from {path}: {type(ex).__name__}: "
                            f"{str(ex).splitlines()[0][:160]} (expected torchvision's {WEIGHTS_FILE} state_dict)") from None
        digest = file_hash(path)
        log.info("loaded pretrained ResNet18 weights %s (sha256 %s)", path, digest)
    net.fc = nn.Identity()
    return net, digest


def _classifier_class():
    import torch
    from torch import nn

    class ResNet18Classifier(nn.Module):
        """backbone (512-d) -> head Linear(512, 1). A 2-D input is taken as backbone features."""

        def __init__(self, net, frozen):
            super().__init__()
            self.backbone, self.head, self.frozen = net, nn.Linear(512, 1), frozen
            if frozen:
                self.backbone.requires_grad_(False)

        def train(self, mode=True):
            super().train(mode)
            if self.frozen:
                self.backbone.eval()  # a frozen backbone keeps its BatchNorm statistics
            return self

        def forward(self, x):
            if x.dim() == 2:
                return self.head(x)
            if torch.is_grad_enabled() or len(x) <= EVAL_CHUNK:
                return self.head(self.backbone(x))
            return torch.cat([self.head(self.backbone(c)) for c in x.split(EVAL_CHUNK)])

    return ResNet18Classifier


def build(conf, splits):
    _check_mode(conf)
    shape = splits.input_shape
    require(len(shape) == 3 and shape[0] == 3,
            f"model=resnet18 needs RGB images (3 x H x W), got inputs of shape {shape}; use it with data=deepfake")
    net, digest = backbone(conf, pretrained=conf.mode != "scratch")
    model = _classifier_class()(net, frozen=conf.mode == "linear_probe")
    model.weights_digest = digest
    return model


def frozen_backbone(conf, model):
    """A linear probe with the feature cache trains only its head, on cached frozen features."""
    if conf.mode == "linear_probe" and conf.feature_cache:
        return model.backbone, model.weights_digest, model.head
    return None
