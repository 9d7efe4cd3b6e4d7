"""The active members of a group as one trainable module, and its optimizer.

`Stack` holds K >= 1 members: K = 1 is the member's own model, K > 1 one stacked module
(expkit/stack.py). Their trainable parameters are views of one flat tensor, so Adam / SGD update
every member with a few elementwise ops (Adam: torch's fused kernel), each element with its own
member's lr / weight decay / momentum. The optimizer state travels per member in the member's own
parameter names and shapes (member_opt_state), so a member leaving the group, or a checkpoint
written at one K and resumed at another, reads it exactly. `Scaler` is fp16-mixed's loss scaling.
"""

import numpy as np
import torch
from torch import nn

from expkit.errors import require
from expkit.stack import CHANNELS, interleave, stack, unstack

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
OPT_SLOTS = {"adam": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}  # torch.optim's state names
PAD = 64  # flat tensors are padded to a multiple of this many elements (see Stack._flatten)


def has_batchnorm(model):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Stack:
    """The active members as one trainable module: their trainable parameters are views of one
    flat tensor laid out member-major per parameter ([K, n] chunks), so the optimizer updates all
    members with a few elementwise ops (Adam: one fused kernel call per distinct lr / weight decay),
    each element with its own member's lr/wd/momentum."""

    def __init__(self, members, device, channels_last=False):
        self.members, self.device = members, device
        self.k = len(members)
        for m in members:
            m.model.to(device)
        self.net = members[0].model if self.k == 1 else stack([m.model for m in members])
        self.layout = getattr(self.net, "stack_layout", None)
        # A stacked CNN (CHANNELS layout) runs its grouped convs and pooling in channels_last on the CPU too
        # (oneDNN vectorises over the K*C channels: hw6 synth CNN, 8 members, 3.4x one member's time instead
        # of 7.8x); one member keeps its format (channels_last does not speed it up). Not with BatchNorm: CPU
        # batch_norm in channels_last rounds ~10x further from the NCHW result, which fine-tuning amplified
        # past the members-equal-separate-runs tolerance (tests/test_one_path.py).
        self.channels_last = channels_last or (self.layout == CHANNELS and device.type == "cpu"
                                               and not has_batchnorm(self.net))
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        sizes = [p.numel() for p in self.params]
        # 4-D conv weights in channels_last (cuDNN's fast layout on CUDA) are stored [O, H, W, I] in the flat
        self.nhwc = [self.channels_last and p.dim() == 4 for p in self.params]
        self.n = sum(sizes)  # the flat tensors hold these, then zeros up to a multiple of PAD (see _flatten)
        self.flat = self._flatten([p.detach() for p in self.params])
        self.grad = torch.zeros_like(self.flat)
        for p, c, value, grad in zip(self.params, self.nhwc, self.split(self.flat), self.split(self.grad)):
            p.data, p.grad = _view(value, p.shape, c), _view(grad, p.shape, c)  # backward accumulates into the flat
        self.chunks = [(off, n // self.k) for off, n in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes)]

        def per_element(values):  # a member's value on each of its elements of the flat tensor
            v = torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device)
            return torch.cat([v.repeat_interleave(n) for _, n in self.chunks] + [v.new_zeros(len(self.flat) - self.n)])

        o = [m.cfg.optim for m in members]
        self.opt_name = o[0].name
        self.lr, self.wd, self.mom = (per_element([getattr(c, a) for c in o]) for a in ("lr", "weight_decay",
                                                                                       "momentum"))
        self.any_wd, self.any_mom = any(c.weight_decay for c in o), any(c.momentum for c in o)
        # The optimizer state (Adam's moments, SGD's momentum buffer) travels between stacks and checkpoints
        # per member, in the member's own parameter names and shapes (as its weights do): the flat layout
        # depends on K (a stacked Linear holds [in, out], a plain one [out, in]; CNN stacks run channels_last).
        slots = OPT_SLOTS[self.opt_name]
        steps = {m.opt_state["t"] if m.opt_state else 0 for m in members}
        require(len(steps) == 1, "internal: members of one stack must have taken the same number of steps")
        self.t = steps.pop()
        if any(m.opt_state for m in members):
            self.state = [self._flatten(self._stacked([m.opt_state[s] if m.opt_state else None for m in members]))
                          for s in slots]
        else:
            self.state = [torch.zeros_like(self.flat) for _ in slots]
        # Adam on the CPU or CUDA: torch's fused Adam kernel (the one behind Adam(fused=True): one pass over the flat
        # tensors, where the elementwise ops below make ~10), one call per distinct (lr, weight decay) on that
        # group's slices (merged where its members are adjacent: a seed sweep is one call on the whole flat).
        # torch._fused_adam_ is a private op (torch >= 2.4 on the CPU): without it, the elementwise ops below
        self.fused = [] if (self.opt_name == "adam" and self.flat.device.type in ("cpu", "cuda")
                            and hasattr(torch, "_fused_adam_")) else None
        if self.fused is not None:
            self.t_now = torch.zeros((), device=self.flat.device)
            groups = {}
            for j, c in enumerate(o):
                groups.setdefault((float(c.lr), float(c.weight_decay)), []).append(j)
            for (lr, wd), js in groups.items():
                spans = []
                for off, n in self.chunks:
                    for j in js:
                        if spans and spans[-1][1] == off + j * n:
                            spans[-1][1] += n
                        elif n:
                            spans.append([off + j * n, off + (j + 1) * n])
                if spans:
                    if spans[-1][1] == self.n:  # the padding too: the kernel's vector loop then has no tail
                        spans[-1][1] = len(self.flat)
                    views = ([t[a:b] for a, b in spans] for t in (self.flat, self.grad, *self.state))
                    self.fused.append((lr, wd, *views))

    def _flatten(self, tensors):
        """Parameter-shaped tensors of this stack (self.params' shapes) -> one flat tensor in its layout, padded
        with zeros to a multiple of PAD elements. Why: the CPU's vectorised elementwise kernels (torch's fused
        Adam among them) compute a call's last len % 8 elements in a scalar tail that rounds differently now and
        then; unpadded, a member's last elements fell in the tail alone but not in its group (the ex4 10x16 MLP:
        1 ulp at step 183, then 0.09 val acc apart after 5 epochs). Padded, every element takes the vector path,
        so a member of a group with one lr trains bit for bit as its separate run (tests/test_fused_members.py)."""
        if not tensors:
            return torch.zeros(0, device=self.device)
        flat = [(t.permute(0, 2, 3, 1) if c else t).reshape(-1) for t, c in zip(tensors, self.nhwc)]
        n = sum(f.numel() for f in flat)
        return torch.cat(flat + [flat[0].new_zeros(-n % PAD)])

    def split(self, flat):
        """A flat tensor of this stack -> its per-parameter slices (flat, in self.params' order)."""
        return flat[:self.n].split([p.numel() for p in self.params])

    def _stacked(self, per_member):
        """Per member {name: tensor} in its own parameter shapes (None: zeros) -> the stack's parameter-shaped
        tensors: stack() applied to the members' models with these tensors in place of their parameters."""
        named = [[(n, p) for n, p in m.model.named_parameters() if p.requires_grad] for m in self.members]
        values = [[(state[n].to(p.device) if state is not None else torch.zeros_like(p)) for n, p in params]
                  for params, state in zip(named, per_member)]
        if self.k == 1:
            return [v.detach() for v in values[0]]
        saved = [[p.data for _, p in params] for params in named]
        try:
            for params, vals in zip(named, values):
                for (_, p), v in zip(params, vals):
                    p.data = v
            return [p.detach() for p in stack([m.model for m in self.members]).parameters() if p.requires_grad]
        finally:
            for params, datas in zip(named, saved):
                for (_, p), d in zip(params, datas):
                    p.data = d

    def _member(self, flat, j):
        """Member j's part of a flat tensor in its own parameter names and shapes (the inverse of _stacked)."""
        m = self.members[j]
        names = [n for n, p in m.model.named_parameters() if p.requires_grad]
        views = [_view(v, p.shape, c) for p, c, v in zip(self.params, self.nhwc, self.split(flat))]
        if self.k == 1:
            return {n: v.detach().clone() for n, v in zip(names, views)}
        saved = [p.data for p in self.params]
        try:
            for p, v in zip(self.params, views):
                p.data = v
            state = unstack(self.net, j, m.model)
        finally:
            for p, d in zip(self.params, saved):
                p.data = d
        return {n: state[n] for n in names}

    def member_opt_state(self, j):
        """Member j's optimizer state: its step count and each state slot as {parameter name: tensor} (CPU)."""
        out = {"t": self.t}
        for slot, flat in zip(OPT_SLOTS[self.opt_name], self.state):
            out[slot] = {n: v.cpu() for n, v in self._member(flat, j).items()}
        return out

    def zero_grad(self):
        self.grad.zero_()

    @torch.no_grad()
    def step(self):
        """torch's Adam (L2 weight decay) / SGD (momentum, no dampening), per-element hyper-parameters."""
        self.t += 1
        if self.fused is not None:
            self.t_now.fill_(self.t)
            for lr, wd, params, grads, m, v in self.fused:
                torch._fused_adam_(params, grads, m, v, [], [self.t_now] * len(params), lr=lr, beta1=BETAS[0],
                                   beta2=BETAS[1], weight_decay=wd, eps=EPS, amsgrad=False, maximize=False)
            return
        update(self, self.flat, self.grad, self.state, self.t)

    def __call__(self, xb, per_member, forward=None):
        """xb: [K, B, ...] per-member inputs (per_member) or [B, ...] shared by all -> logits [B, K, C]
        (member k's logits at [:, k]; with K > 1 a transposed view of the stack's member-major [K, B, C]).
        forward: the net's forward (default self.net; the compiled step passes a functional call)."""
        if self.k == 1:
            x = xb[0] if per_member else xb
        elif self.layout == CHANNELS:  # [B, K*C, ...]
            x = interleave(xb, CHANNELS) if per_member else xb.repeat(1, self.k, *[1] * (xb.dim() - 2))
        else:  # member-major [K*B, ...]
            x = interleave(xb) if per_member else xb.repeat(self.k, *[1] * (xb.dim() - 1))
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = (forward or self.net)(x)
        if self.k == 1 or self.layout == CHANNELS:
            return out.view(out.shape[0], self.k, -1)
        return out.view(self.k, out.shape[0] // self.k, -1).transpose(0, 1)

    def write_back(self):
        """Each member's trained state back into its own model (for saving, or a re-stack)."""
        for j, m in enumerate(self.members):
            if self.k > 1:
                m.model.load_state_dict(unstack(self.net, j, m.model))
            m.opt_state = self.member_opt_state(j)


def update(run, flat, grad, state, t):
    """One optimizer step on flat tensors, in place: torch's Adam (L2 weight decay) / SGD (momentum, no
    dampening) with `run`'s per-element lr / weight decay / momentum; t (an int, or a tensor in the
    compiled step) is the step's number. The eager step's formula and the compiled step's are this one."""
    g = grad + flat * run.wd if run.any_wd else grad
    if run.opt_name == "sgd":
        if run.any_mom:  # the buffer starts at 0, so step 1 gives torch's buf = grad
            g = state[0].mul_(run.mom).add_(g)
        flat.sub_(g * run.lr)
        return
    (b1, b2), (m, v) = BETAS, state
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v.sqrt() / (1 - b2 ** t) ** 0.5).add_(EPS)
    flat.sub_((m * run.lr).div_(denom).div_(1 - b1 ** t))


def _view(flat, shape, nhwc):
    """A parameter-shaped view of its slice of the flat tensor (channels_last strides when nhwc)."""
    if not nhwc:
        return flat.view(shape)
    o, i, h, w = shape
    return flat.view(o, h, w, i).permute(0, 3, 1, 2)


class Scaler:
    """Loss scaling for fp16-mixed (torch.amp.GradScaler's rule on the run's flat gradient):
    scale the loss, unscale the gradient, skip a step whose gradient overflowed and halve the
    scale; double it after 2000 clean steps."""

    def __init__(self, scale=2.0 ** 16):
        self.value, self.good = scale, 0

    def scale(self, loss):
        return loss * self.value

    def unscale(self, grad):
        grad.div_(self.value)
        if not torch.isfinite(grad).all():
            self.value, self.good = self.value / 2, 0
            return False
        self.good += 1
        if self.good == 2000:
            self.value, self.good = self.value * 2, 0
        return True
