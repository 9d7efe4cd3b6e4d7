"""K members of one architecture as one module: the generic mechanism behind fused sweeps.

`stack(models)` walks the module tree of the first model and replaces every layer that holds
parameters with its stacked form (Linear -> one batched matmul, Conv2d -> a grouped conv with K
times the groups, BatchNorm -> one BatchNorm over K times the channels, running statistics per
member). Every other module (activations, pooling, Flatten, containers with their own forward:
Sequential, residual blocks, torchvision's ResNet) is kept as is. Two layouts keep the members
apart through such modules:

- BATCH (models without Conv2d, e.g. the MLPs): member-major, [K*B, ...], member k owns rows
  k*B..(k+1)*B-1, so any layer that acts per sample acts per member. A stacked Linear is one
  torch.bmm on a contiguous [K, B, in] view with no layout copy forward or backward (the channel
  layout costs ~7 copies per Linear a step: K = 16 seeds of the 6x16 MLP went from 5.5x to ~4.3x
  one member); BatchNorm converts to the channel layout and back (one copy each way); fixed
  buffers the members agree on (input statistics) are shared.
- CHANNELS (models with a Conv2d): [B, K*C, ...], member k owns channels k*C..(k+1)*C-1, so
  layers that act per channel or per element act per member; per-feature fixed buffers
  (`member_tiled_buffers`) are tiled K times. Grouped convolutions and max-pooling then run in
  channels_last, where oneDNN vectorises over the K*C channels: measured on this CPU for the
  hw6 synth CNN (8 members, batch 50, forward + backward) 3.6x one member against 9.6x in NCHW;
  max_pool2d alone 0.27 ms against 2.3 ms.

Why not torch.func.vmap over functional_call: measured on this CPU (6x16 MLP + BatchNorm,
batch 256, 1 thread), a vmap step of 4 members took 2.8 ms against 0.66 ms for one plain
member.

`unstack(stacked, k)` returns member k's state_dict in the original model's names and shapes.
A module type with parameters that has no stacked form here is refused (NotStackable) rather
than trained wrongly.
"""
import copy

import torch
from torch import nn


BATCH, CHANNELS = "batch", "channels"  # the two stacked layouts (see the module's doc)


class NotStackable(Exception):
    pass


class StackedLinear(nn.Module):
    """K Linear layers as one batched matmul. Member-major layout: [K*B, ..., in] -> [K*B, ..., out] on
    contiguous views, no layout copy forward or backward; channel layout: [B, K*in] -> [B, K*out]."""

    def __init__(self, layers, layout=BATCH):
        super().__init__()
        self.k, self.n_in, self.n_out = len(layers), layers[0].in_features, layers[0].out_features
        self.layout = layout
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in layers]))  # [K, in, out]
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers])) if layers[0].bias is not None \
            else None

    def forward(self, x):
        if self.layout == CHANNELS:  # [B, K*in] -> [K, B, in] (a strided view) -> [B, K*out] (a copy)
            b = x.shape[0]
            xk = x.reshape(b, self.k, self.n_in).transpose(0, 1)
        else:
            xk = x.reshape(self.k, -1, self.n_in)  # [K, rows, in]: a view of the member-major batch
        h = torch.bmm(xk, self.weight) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xk, self.weight)
        if self.layout == CHANNELS:
            return h.transpose(0, 1).reshape(b, self.k * self.n_out)
        return h.view(*x.shape[:-1], self.n_out)

    def member(self, k):
        out = {"weight": self.weight[k].t()}
        if self.bias is not None:
            out["bias"] = self.bias[k]
        return out


def to_channels(x, k):
    """[K*B, C, ...] member-major batch -> [B, K*C, ...], members side by side in the channels."""
    b = x.shape[0] // k
    return x.view(k, b, *x.shape[1:]).transpose(0, 1).reshape(b, k * x.shape[1], *x.shape[2:])


def from_channels(x, k):
    """[B, K*C, ...] -> [K*B, C, ...] (the inverse of to_channels)."""
    b, c = x.shape[0], x.shape[1] // k
    return x.view(b, k, c, *x.shape[2:]).transpose(0, 1).reshape(k * b, c, *x.shape[2:])


class StackedConv2d(nn.Conv2d):
    """K Conv2d layers as one conv with K times the groups: [B, K*Cin, H, W] -> [B, K*Cout, H', W']."""

    def __init__(self, layers, layout=CHANNELS):
        m = layers[0]
        k = len(layers)
        if m.padding_mode != "zeros":
            raise NotStackable(f"Conv2d with padding_mode={m.padding_mode}")
        super().__init__(k * m.in_channels, k * m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                         k * m.groups, m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
        self.k, self.layout = k, layout
        with torch.no_grad():
            self.weight.copy_(torch.cat([c.weight for c in layers]))
            if m.bias is not None:
                self.bias.copy_(torch.cat([c.bias for c in layers]))

    def forward(self, x):  # member-major [K*B, Cin, H, W]: converted to [B, K*Cin, H, W] and back
        if self.layout == CHANNELS:
            return super().forward(x)
        return from_channels(super().forward(to_channels(x, self.k)), self.k)

    def member(self, k):
        n = self.out_channels // self.k
        out = {"weight": self.weight[k * n:(k + 1) * n]}
        if self.bias is not None:
            out["bias"] = self.bias[k * n:(k + 1) * n]
        return out


class _StackedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """K BatchNorm layers as one BatchNorm over K times the channels (running statistics per
    member): [B, K*C, ...]; member-major input [K*B, C, ...] is converted to that and back."""

    def _check_input_dim(self, x):
        pass

    def forward(self, x):
        if self.layout == CHANNELS:
            return super().forward(x)
        return from_channels(super().forward(to_channels(x, self.k)), self.k)

    def member(self, j):
        n = self.num_features // self.k
        names = ("running_mean", "running_var") + (("weight", "bias") if self.affine else ())
        out = {name: getattr(self, name)[j * n:(j + 1) * n] for name in names}
        out["num_batches_tracked"] = self.num_batches_tracked
        return out


def _stacked_batchnorm(layers, layout):
    m = layers[0]
    cls = type(m)
    if cls not in (nn.BatchNorm1d, nn.BatchNorm2d) or not m.track_running_stats:
        raise NotStackable(f"{cls.__name__}(track_running_stats={m.track_running_stats})")
    k = len(layers)
    s = _StackedBatchNorm(k * m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                          device=m.running_mean.device, dtype=m.running_mean.dtype)
    with torch.no_grad():
        for name in ("running_mean", "running_var") + (("weight", "bias") if m.affine else ()):
            getattr(s, name).copy_(torch.cat([getattr(c, name) for c in layers]))
        s.num_batches_tracked.copy_(m.num_batches_tracked)
    s.k, s.layout = k, layout
    s.train(m.training)
    return s


STACKERS = {nn.Linear: StackedLinear, nn.Conv2d: StackedConv2d, nn.BatchNorm1d: _stacked_batchnorm,
            nn.BatchNorm2d: _stacked_batchnorm}


def _stack_module(mods, path, layout):
    m = mods[0]
    for cls, make in STACKERS.items():
        if type(m) is cls:
            return make(mods, layout)
    own_params = list(m.parameters(recurse=False))
    if own_params:
        raise NotStackable(f"{path or 'model'}: {type(m).__name__} has parameters but no stacked form "
                           f"(known: {', '.join(c.__name__ for c in STACKERS)})")
    out = copy.copy(m)  # same class and forward; children and buffers replaced below
    out._modules = dict(m._modules)
    out._buffers = dict(m._buffers)
    out._parameters = dict(m._parameters)
    for name, buf in m._buffers.items():
        if buf is None:
            continue
        # a fixed buffer (input statistics, constants) the members agree on: shared as is in the member-major
        # layout; per-feature ones (member_tiled_buffers) tiled K times in the channel layout
        if any(not torch.equal(x._buffers[name], buf) for x in mods):
            raise NotStackable(f"{path}.{name}: members differ in a buffer that has no stacked form")
        if layout == CHANNELS and name in getattr(m, "member_tiled_buffers", ()):
            out._buffers[name] = buf.repeat(len(mods))
    for name, child in m._modules.items():
        if child is not None:
            out._modules[name] = _stack_module([x._modules[name] for x in mods], f"{path}.{name}".lstrip("."), layout)
    return out


def stack(models, layout=None):
    """One module computing K same-shaped models side by side; its `layout`: BATCH (member-major,
    [K*B, ...] in, [K*B, out] out) or CHANNELS ([B, K*C, ...] in, [B, K*out] out). Default: CHANNELS
    for a model with a Conv2d (grouped convs and pooling in channels_last: see the module's doc),
    BATCH otherwise."""
    shapes = [[(n, p.shape) for n, p in m.state_dict().items()] for m in models]
    if any(s != shapes[0] for s in shapes):
        raise NotStackable("members differ in parameter names or shapes")
    if layout is None:
        layout = CHANNELS if any(isinstance(m, nn.Conv2d) for m in models[0].modules()) else BATCH
    stacked = _stack_module(list(models), "", layout)
    stacked.stack_layout = layout
    stacked.train(models[0].training)
    frozen = {n for n, p in models[0].named_parameters() if not p.requires_grad}
    for n, p in stacked.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return stacked


def unstack(stacked, k, like):
    """Member k's state_dict, named and shaped as `like` (a member model)."""
    out = {}
    for name, mod in stacked.named_modules():
        prefix = f"{name}." if name else ""
        if hasattr(mod, "member"):
            for key, value in mod.member(k).items():
                out[prefix + key] = value
        else:
            for key, buf in mod._buffers.items():
                if buf is not None:
                    out[prefix + key] = buf
    ref = like.state_dict()
    state = {}
    for key, value in ref.items():
        v = out[key]
        if v.numel() != value.numel():  # a tiled buffer (channel layout): member k's copy equals the others
            v = v[:value.numel()]
        state[key] = v.detach().clone().view_as(value)
    return state


def interleave(x, layout=BATCH):
    """[K, B, ...] per-member batches -> the stacked layout: [K*B, ...] (BATCH, a view when x is
    contiguous) or [B, K*C, ...] (CHANNELS)."""
    if layout == CHANNELS:
        k, b = x.shape[:2]
        return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def split_members(out, k, layout=BATCH):
    """Stacked outputs ([K*B, n] for BATCH, [B, K*n] for CHANNELS) -> [K, B, n]."""
    if layout == CHANNELS:
        return out.reshape(out.shape[0], k, -1).transpose(0, 1)
    return out.reshape(k, out.shape[0] // k, -1)
