"""MLP: [encoding] -> depth x (Linear [BatchNorm] act [+ residual]) -> Linear."""
import torch
from torch import nn

from expkit.errors import require
from expkit.schemas import MlpConf as Conf  # noqa: F401 (declared once, there)

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU}
ALPHAS = [round(0.1 * i, 1) for i in range(1, 11)]


class Sines(nn.Module):
    """sin(a * x) for a in 0.1..1.0, on each input coordinate: 2 inputs -> 20 features."""

    def __init__(self):
        super().__init__()
        self.register_buffer("alphas", torch.tensor(ALPHAS))

    def forward(self, x):
        return torch.sin(x.unsqueeze(-1) * self.alphas).flatten(1)


class Standardize(nn.Module):
    """(x - mean) / std with the training set's statistics, fixed (model.standardize=true; off by
    default: the course's studies feed raw coordinates)."""

    member_tiled_buffers = ("mean", "std")  # per input feature: a fused stack tiles them (expkit/stack.py)

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def forward(self, x):
        return (x - self.mean) / self.std


class Block(nn.Module):
    def __init__(self, n_in, n_out, batchnorm, act, residual):
        super().__init__()
        # no bias before BatchNorm: its mean subtraction cancels it (true gradient 0), and Adam would
        # scale that zero gradient's rounding noise into full-size steps that differ run to run
        self.linear = nn.Linear(n_in, n_out, bias=not batchnorm)
        self.norm = nn.BatchNorm1d(n_out) if batchnorm else nn.Identity()
        self.act = ACTIVATIONS[act]()
        self.residual = residual and n_in == n_out

    def forward(self, x):
        h = self.act(self.norm(self.linear(x)))
        return x + h if self.residual else h


class MLP(nn.Module):
    def __init__(self, n_in, n_out, hidden, batchnorm=False, activation="relu", residual=False, encoding="raw",
                 stats=None):
        super().__init__()
        if encoding == "sines":  # sin(a*x) of the raw values: a is in 1/units of the data
            self.encode = Sines()
        else:
            self.encode = nn.Sequential(nn.Flatten(), Standardize(*stats) if stats else nn.Identity())
        n = n_in * len(ALPHAS) if encoding == "sines" else n_in
        blocks = []
        for h in hidden:
            blocks.append(Block(n, h, batchnorm, activation, residual))
            n = h
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(n, n_out)
        # Linear layers in order (hidden..., output): trainer.grad_layers indexes this list
        self.linears = [b.linear for b in blocks] + [self.head]

    def forward(self, x):
        return self.head(self.blocks(self.encode(x)))


def build(conf, splits):
    require(conf.activation in ACTIVATIONS, f"model.activation must be one of {sorted(ACTIVATIONS)}, got {conf.activation!r}")
    require(conf.encoding in ("raw", "sines"), f"model.encoding must be raw or sines, got {conf.encoding!r}")
    hidden = list(conf.hidden) if conf.hidden is not None else [conf.width] * conf.depth
    require(all(h >= 1 for h in hidden), f"hidden layer sizes must be >= 1, got {hidden}")
    n_in = 1
    for d in splits.input_shape:
        n_in *= d
    require(conf.encoding == "raw" or len(splits.input_shape) == 1,
            "model.encoding=sines needs flat numeric features (e.g. data=countries)")
    stats = None
    if conf.standardize and conf.encoding == "raw" and splits.prepare is None:  # image data normalise in prepare
        x = torch.as_tensor(splits.train.x).reshape(len(splits.train), -1).float()
        stats = (x.mean(0), x.std(0))
    return MLP(n_in, splits.n_classes, hidden, conf.batchnorm, conf.activation, conf.residual, conf.encoding, stats)
