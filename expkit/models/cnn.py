"""A small CNN by config: conv layers (filters, kernel, stride, padding, activation, max-pool),
then optional hidden Linear layers, then a Linear output. Also `describe`: the output shape
and parameter count of every layer of any torch model (saved in summary.json)."""
import torch
from torch import nn

from expkit.errors import require
from expkit.schemas import CnnConf as Conf, ConvConf  # noqa: F401 (declared once, there)

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU}


class CNN(nn.Module):
    def __init__(self, input_shape, n_out, convs, hidden, activation):
        super().__init__()
        layers, c = [], input_shape[0]
        for cv in convs:
            layers += [nn.Conv2d(c, cv.filters, cv.kernel, cv.stride, cv.padding), ACTIVATIONS[cv.activation]()]
            if cv.pool:
                layers.append(nn.MaxPool2d(cv.pool))
            c = cv.filters
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n = self.features(torch.zeros(1, *input_shape)).numel()
        head = [nn.Flatten()]
        for h in hidden:
            head += [nn.Linear(n, h), ACTIVATIONS[activation]()]
            n = h
        self.head = nn.Sequential(*head, nn.Linear(n, n_out))

    def forward(self, x):
        return self.head(self.features(x))


def build(conf, splits):
    shape = tuple(splits.input_shape)
    require(len(shape) == 3, f"model=cnn needs image data (channels x height x width), got inputs of shape {shape}")
    require(len(conf.convs) >= 1, "model.convs must list at least one conv layer")
    for i, cv in enumerate(conf.convs):
        require(cv.activation in ACTIVATIONS, f"model.convs[{i}].activation must be one of {sorted(ACTIVATIONS)}")
        require(cv.filters >= 1 and cv.kernel >= 1 and cv.stride >= 1 and cv.padding >= 0 and cv.pool >= 0,
                f"model.convs[{i}]: filters, kernel, stride must be >= 1 and padding, pool >= 0 (got {dict(cv)})")
    require(conf.activation in ACTIVATIONS, f"model.activation must be one of {sorted(ACTIVATIONS)}")
    require(all(h >= 1 for h in conf.hidden), f"model.hidden sizes must be >= 1, got {list(conf.hidden)}")
    # the spatial size left after each conv/pool: too many layers for the image is a config error
    h, w = shape[1:]
    for i, cv in enumerate(conf.convs):
        h, w = [(d + 2 * cv.padding - cv.kernel) // cv.stride + 1 for d in (h, w)]
        require(min(h, w) >= 1, f"model.convs[{i}]: the kernel {cv.kernel} is larger than its {shape[1:]} input "
                "after the layers before it; use fewer or smaller layers, or padding")
        if cv.pool:
            h, w = h // cv.pool, w // cv.pool
            require(min(h, w) >= 1, f"model.convs[{i}]: pooling by {cv.pool} leaves nothing; use pool=0 or fewer layers")
    return CNN(shape, splits.n_classes, conf.convs, conf.hidden, conf.activation)


@torch.no_grad()
def describe(model, x):
    """[{layer, type, out_shape, params}] for each leaf module with parameters or a shape change
    (conv, pool, flatten, linear, ...), from one forward pass of x (a batch of one model input)."""
    rows, hooks = [], []
    for name, m in model.named_modules():
        if len(list(m.children())) == 0:
            def hook(mod, inp, out, name=name):
                if isinstance(out, torch.Tensor):
                    rows.append({"layer": name, "type": mod.__class__.__name__, "out_shape": list(out.shape[1:]),
                                 "params": sum(p.numel() for p in mod.parameters(recurse=False))})
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    kept, prev = [], list(x.shape[1:])
    for r in rows:  # activations keep the shape and have no parameters: leave them out
        if r["params"] or r["out_shape"] != prev:
            kept.append(r)
        prev = r["out_shape"]
    return kept
