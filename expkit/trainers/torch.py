"""The torch training loop for K >= 1 members of one architecture (K = 1: a plain run).

Data lives on the device as tensors; each member draws its own shuffled index batches. With
K > 1 the members train side by side as one stacked module (expkit/stack.py): one forward and
one backward per step for all of them, each with its own init, shuffling, augmentation draws,
lr / weight decay / momentum, early stop and divergence; a member that stops leaves the stack
at the end of that epoch. Read top to bottom: setup, (resume), epochs of [train steps, eval,
record, checkpoint], then each member's final evaluation.
"""
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expkit.cache import atomic_write
from expkit.errors import ForeignDir, UserError, require
from expkit.stack import CHANNELS, interleave, stack, unstack
from expkit.trainers import History

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults
OPT_SLOTS = {"adam": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}  # torch.optim's state names
PREGATHER_BYTES = 64 * 2 ** 20  # an epoch's batches gathered at once up to this size (Loop.batches)


@dataclass
class Member:
    """One run of a (possibly fused) group: its validated config, its model and its run dir."""
    cfg: object
    model: nn.Module
    run_dir: Path
    hist: History = field(default_factory=History)
    steps: list = field(default_factory=list)
    best_val: float = math.inf
    bad_epochs: int = 0
    start: int = 0          # first epoch to train (after a resume)
    done: bool = False
    opt_state: dict = None  # this member's optimizer state and step count, in its own shapes, between stacks
    shuffle: object = None  # torch.Generator: the batch order (saved and restored on resume)
    draws: object = None    # torch.Generator on the device: augmentation draws
    fingerprint: str = ""   # the config that may resume from this member's checkpoint
    # called with each epoch's row as it ends (live loggers, an Optuna pruner); a callback that returns
    # a reason (e.g. "pruned") stops this member after this epoch
    callbacks: list = field(default_factory=list)


def loss_and_hits(logits, y):
    """Per-member mean loss [K] and #correct [K]: logits [B, K, C] (Stack's output: a transposed view of the
    stacked model's member-major [K, B, C]), labels [K, B] per member or [B] shared (BCE-with-logits for C = 1).
    Worked in [K, B, C], where the stacked logits are contiguous: no layout copy."""
    b, k, c = logits.shape
    z = logits.transpose(0, 1)
    y = y if y.dim() == 2 else y.expand(k, b)
    if c == 1:
        z = z.squeeze(-1).float()
        return F.binary_cross_entropy_with_logits(z, y.float(), reduction="none").mean(1), ((z > 0).long() == y).sum(1)
    loss = F.cross_entropy(z.reshape(k * b, c).float(), y.reshape(-1), reduction="none").view(k, b).mean(1)
    # max(-1).indices is argmax (first maximum, NaN counts as maximal) at half argmax's cost on the CPU
    return loss, (z.max(-1).indices == y).sum(1)


def probabilities(logits):
    if logits.shape[-1] == 1:
        p = torch.sigmoid(logits.float())
        return torch.cat([1 - p, p], dim=-1)
    return torch.softmax(logits.float(), dim=-1)


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
        self.flat = self._flatten([p.detach() for p in self.params])
        self.grad = torch.zeros_like(self.flat)
        for p, c, value, grad in zip(self.params, self.nhwc, self.flat.split(sizes), self.grad.split(sizes)):
            p.data, p.grad = _view(value, p.shape, c), _view(grad, p.shape, c)  # backward accumulates into the flat
        self.chunks = [(off, n // self.k) for off, n in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes)]

        def per_element(values):  # a member's value on each of its elements of the flat tensor
            v = torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device)
            return torch.cat([v.repeat_interleave(n) for _, n in self.chunks]) if self.chunks else v[:0]

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
                    views = ([t[a:b] for a, b in spans] for t in (self.flat, self.grad, *self.state))
                    self.fused.append((lr, wd, *views))

    def _flatten(self, tensors):
        """Parameter-shaped tensors of this stack (self.params' shapes) -> one flat tensor in its layout."""
        if not tensors:
            return torch.zeros(0, device=self.device)
        return torch.cat([(t.permute(0, 2, 3, 1) if c else t).reshape(-1) for t, c in zip(tensors, self.nhwc)])

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
        sizes = [p.numel() for p in self.params]
        views = [_view(v, p.shape, c) for p, c, v in zip(self.params, self.nhwc, flat.split(sizes))]
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
        g = self.grad + self.flat * self.wd if self.any_wd else self.grad
        if self.opt_name == "sgd":
            if self.any_mom:  # the buffer starts at 0, so step 1 gives torch's buf = grad
                g = self.state[0].mul_(self.mom).add_(g)
            self.flat.sub_(g * self.lr)
            return
        (b1, b2), (m, v) = BETAS, self.state
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(EPS)
        self.flat.addcdiv_(m * self.lr, denom, value=-1 / (1 - b1 ** self.t))

    def __call__(self, xb, per_member):
        """xb: [K, B, ...] per-member inputs (per_member) or [B, ...] shared by all -> logits [B, K, C]
        (member k's logits at [:, k]; with K > 1 a transposed view of the stack's member-major [K, B, C])."""
        if self.k == 1:
            x = xb[0] if per_member else xb
        elif self.layout == CHANNELS:  # [B, K*C, ...]
            x = interleave(xb, CHANNELS) if per_member else xb.repeat(1, self.k, *[1] * (xb.dim() - 2))
        else:  # member-major [K*B, ...]
            x = interleave(xb) if per_member else xb.repeat(self.k, *[1] * (xb.dim() - 1))
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.net(x)
        if self.k == 1 or self.layout == CHANNELS:
            return out.view(out.shape[0], self.k, -1)
        return out.view(self.k, out.shape[0] // self.k, -1).transpose(0, 1)

    def write_back(self):
        """Each member's trained state back into its own model (for saving, or a re-stack)."""
        for j, m in enumerate(self.members):
            if self.k > 1:
                m.model.load_state_dict(unstack(self.net, j, m.model))
            m.opt_state = self.member_opt_state(j)


def _view(flat, shape, nhwc):
    """A parameter-shaped view of its slice of the flat tensor (channels_last strides when nhwc)."""
    if not nhwc:
        return flat.view(shape)
    o, i, h, w = shape
    return flat.view(o, h, w, i).permute(0, 3, 1, 2)


@torch.no_grad()
def evaluate(run, x, y, batch_size, prepare=None, want_probs=False, device=None):
    """Per-member mean loss and accuracy over (x, y) shared by all members; optionally probabilities.
    In fp32 whatever the training precision: metrics keep their digits. x may stay on the host
    (a data set too large for the device): each batch is then copied over."""
    run.net.eval()
    device = device or y.device
    loss_sum = torch.zeros(run.k, device=device)
    hits = torch.zeros(run.k, device=device)
    probs = []
    for i in range(0, len(y), batch_size):
        xb, yb = _to(x[i:i + batch_size], device), _to(y[i:i + batch_size], device)
        with torch.autocast(device.type, enabled=False):
            out = run(prepare(xb) if prepare else xb, per_member=False)
        loss, h = loss_and_hits(out, yb)
        loss_sum += loss * len(yb)
        hits += h
        if want_probs:
            probs.append(probabilities(out))
    n = len(y)
    result = ([v / n for v in loss_sum.tolist()], [v / n for v in hits.tolist()])
    return result + (torch.cat(probs).cpu().numpy(),) if want_probs else result  # probs [N, K, C]


def _to(t, device):
    """A batch on the device; a host batch bound for CUDA goes through pinned memory (per batch)."""
    if t.device == device:
        return t
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def keep_on_device(splits, device, share):
    """Whether the splits fit in `share` of the device's free memory (else they stay on the host
    and stream batch by batch). On the CPU the host is the device: share=0 still forces streaming."""
    need = sum(torch.as_tensor(s.x).nbytes + torch.as_tensor(s.y).nbytes for _, s in splits.items())
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")
    return share > 0 and need <= share * free


def fit(members, splits, device, precision="fp32", started=None):
    """Train the members (same architecture and trainer settings; they may differ in seed, lr,
    weight decay and momentum) on `device` in `precision` (expkit/device.py); returns their
    Histories, each with test probabilities and the member's time: `train_s` (its epochs) and
    `wall_s` (everything since `started`, a time.perf_counter() value, and before this process if
    it resumed). A fused member's time is its share: each second of the group's is divided among
    the members active in it."""
    started = time.perf_counter() if started is None else started
    t_cfg = members[0].cfg.trainer
    n = len(splits.train)
    batchnorm = has_batchnorm(members[0].model)
    require(not (batchnorm and min(t_cfg.batch_size, n) == 1),
            "BatchNorm cannot train on a batch of one sample: use trainer.batch_size >= 2 or model.batchnorm=false")
    require(not (t_cfg.compile and len(members) > 1), "trainer.compile=true runs alone (it is never fused)")
    require(not (precision == "fp16-mixed" and len(members) > 1), "fp16-mixed runs alone (it is never fused)")
    loop = Loop(members[0].cfg, splits, device, batchnorm, precision)
    for m in members:
        m.hist = History(iterations_per_epoch=loop.steps_per_epoch)
        m.shuffle = torch.Generator().manual_seed(m.cfg.seed)
        m.draws = torch.Generator(device=device).manual_seed(m.cfg.seed)
        m.fingerprint = _fingerprint(m.cfg, device, precision)
        if t_cfg.checkpoint and (m.run_dir / CHECKPOINT).exists():
            _resume(m, loop)
    loop.mark = started
    loop.charge(members)  # the set-up (data, models, resume): shared by the group
    for start in sorted({m.start for m in members}):  # members resumed at different epochs train apart
        loop.train([m for m in members if m.start == start], start)
    for m in members:  # each member's own model, alone, on the test set: its predictions
        if m.steps:
            m.hist.steps = np.concatenate(m.steps)
        *_, probs = loop.evaluate(loop.stack([m]), "test", want_probs=True)
        m.hist.test_probs = probs[:, 0]
        m.model.to("cpu")
        loop.charge([m])  # its own final evaluation
        m.hist.train_s = sum(r["time_s"] for r in m.hist.rows)  # epochs only, earlier processes' included
    return [m.hist for m in members]


class Loop:
    """The epochs of one group: data on the device, then [train steps, eval, record, checkpoint]."""

    def __init__(self, cfg, splits, device, batchnorm, precision):
        from expkit.device import autocast

        self.t, self.device = cfg.trainer, device
        bs, n = self.t.batch_size, len(splits.train)
        # A last batch of one would crash BatchNorm: drop that single sample (reshuffled next epoch).
        self.n, self.n_used = n, (n - 1 if batchnorm and n % bs == 1 else n)
        self.steps_per_epoch = math.ceil(self.n_used / bs)
        self.autocast = autocast(device, precision)
        self.scaler = Scaler() if precision == "fp16-mixed" else None
        on_device = keep_on_device(splits, device, self.t.data_on_device_share)
        if not on_device:
            log.info("data stays on the host and streams to %s batch by batch (it needs more than "
                     "trainer.data_on_device_share=%g of the free device memory)", device, self.t.data_on_device_share)
        home = device if on_device else torch.device("cpu")
        self.data = {part: (torch.as_tensor(s.x).to(home), torch.as_tensor(s.y).to(home)) for part, s in splits.items()}
        self.home = home
        self.prepare, self.augment = splits.prepare, splits.augment
        self.channels_last = device.type == "cuda" and torch.as_tensor(splits.train.x).dim() == 4
        self.compiled = None
        self.mark = time.perf_counter()  # time up to here is charged (charge)

    def charge(self, members):
        """The time since the last charge, divided among `members` (each member's wall_s is its share)."""
        now = time.perf_counter()
        for m in members:
            m.hist.wall_s += (now - self.mark) / len(members)
        self.mark = now

    def stack(self, members):
        run = Stack(members, self.device, self.channels_last)
        if self.t.compile:  # dynamic batch dim: the short last batch and the eval batches reuse one graph
            if self.compiled is None:
                self.compiled = torch.compile(run.net, dynamic=True)
            run.net = self.compiled
        return run

    def evaluate(self, run, part, want_probs=False):
        x, y = self.data[part]
        return evaluate(run, x, y, self.t.eval_batch_size, self.prepare, want_probs, self.device)

    def batches(self, order, x, y):
        """step i -> (xb [K, B, ...], yb [K, B]) on the device for the epoch's order [K, n_used]. With the data on
        the device and K copies of it within PREGATHER_BYTES, the whole epoch is gathered at once into
        [steps, K, B, ...] (each step's batch a contiguous view): one gather of random rows per step cost the
        countries MLP ~0.27 ms a step at K = 16 (cache misses), ~20x its share of the one gather per epoch; one
        member's epoch 8% faster. Large rows (images) gain nothing from it (the copy is bandwidth-bound: hw6 synth
        CNN, 8 members, 200 MB an epoch, same time), hence the budget."""
        bs, k = self.t.batch_size, order.shape[0]
        # not compiled: views into one epoch tensor made torch.compile build a third graph (tests/test_compile.py)
        if (self.t.compile or self.home != self.device
                or k * self.n_used * (x[:1].nbytes + y[:1].nbytes) > PREGATHER_BYTES):
            return lambda i: (_to(x[order[:, i * bs:(i + 1) * bs]], self.device),
                              _to(y[order[:, i * bs:(i + 1) * bs]], self.device))
        full = self.n_used // bs
        rows = order[:, :full * bs].reshape(k, full, bs).transpose(0, 1).reshape(-1)
        xs, ys = x.index_select(0, rows).view(full, k, bs, *x.shape[1:]), y.index_select(0, rows).view(full, k, bs)
        tail = order[:, full * bs:]
        last = (x[tail], y[tail]) if tail.shape[1] else None
        return lambda i: (xs[i], ys[i]) if i < full else last

    def train(self, members, start):
        t, bs, device = self.t, self.t.batch_size, self.device
        linears = getattr(members[0].model, "linears", [])
        names = {id(mod): name for name, mod in members[0].model.named_modules()}
        grad_layers = [names[id(linears[i])] for i in t.grad_layers]
        x_train, y_train = self.data["train"]
        last_save, run = time.monotonic(), None
        started = (start, time.perf_counter())
        for epoch in range(start, t.epochs):
            active = [m for m in members if not m.done]
            if not active:
                break
            if run is None or run.members != active:  # a member left: re-stack the others
                if run is not None:
                    run.write_back()
                run = self.stack(active)
            t0 = time.perf_counter()
            k = run.k
            run.net.train()
            order = torch.stack([torch.randperm(self.n, generator=m.shuffle)[:self.n_used] for m in active])
            order = order.to(self.home)
            batches = self.batches(order, x_train, y_train)
            loss_sum = torch.zeros(k, device=device)
            hits = torch.zeros(k, device=device)
            step_losses = torch.zeros(k, self.steps_per_epoch, device=device)
            grad_sq = torch.zeros(len(grad_layers), 2, k, device=device)
            bar = Progress(epoch, t.epochs, self.steps_per_epoch, started)
            for i in range(self.steps_per_epoch):
                xb, yb = batches(i)
                if self.prepare:
                    xb = self.prepare(xb.flatten(0, 1)).unflatten(0, yb.shape)
                if self.augment:
                    xb = torch.stack([self.augment(xb[j], m.draws) for j, m in enumerate(active)])
                with self.autocast():
                    out = run(xb, per_member=True)
                loss, h = loss_and_hits(out, yb)
                run.zero_grad()
                total = loss.sum()  # members' graphs are disjoint: each gets its own gradient
                (self.scaler.scale(total) if self.scaler else total).backward()
                # fp16 overflow: the update is skipped and the loss scale halved (the loss still counts)
                if not self.scaler or self.scaler.unscale(run.grad):
                    if grad_layers:  # ||grad||^2 of each recorded layer's weight matrix, and of its bias apart
                        grad_sq += _grad_sq(run.net, grad_layers, k)
                    run.step()
                loss = loss.detach()
                loss_sum += loss * yb.shape[1]
                hits += h
                if t.record_steps:
                    step_losses[:, i] = loss
                bar.update(i)
            ev = {p: self.evaluate(run, p) for p in ("val", "test")}
            dt = time.perf_counter() - t0
            sums, counts = loss_sum.tolist(), hits.tolist()
            for j, m in enumerate(active):
                row = {"epoch": epoch + 1, "train_loss": sums[j] / self.n_used, "train_acc": counts[j] / self.n_used}
                for p in ("val", "test"):
                    row[f"{p}_loss"], row[f"{p}_acc"] = ev[p][0][j], ev[p][1][j]
                for g, layer in enumerate(t.grad_layers):  # means over the epoch's steps
                    row[f"grad_sq_layer{layer}"] = grad_sq[g, 0, j].item() / self.steps_per_epoch
                    row[f"grad_sq_bias_layer{layer}"] = grad_sq[g, 1, j].item() / self.steps_per_epoch
                row["time_s"] = dt / k  # this member's share of the epoch (fused: k members trained in dt)
                m.hist.rows.append(row)
                stop = [reason for reason in (callback(row) for callback in m.callbacks) if reason]
                if t.record_steps:
                    m.steps.append(step_losses[j].cpu().numpy())
                _stop_or_go(m, row, epoch, t, k)
                if stop and not m.done:
                    m.hist.stopped_by, m.done = stop[0], True
                    log.info("%sstopped after epoch %d: %s", f"member {j} " if k > 1 else "", epoch + 1, stop[0])
            bar.done(active, epoch, dt)
            self.charge(active)  # the epoch, and what came before it since the last charge
            # checkpoint by elapsed time: its cost is paid every checkpoint_every_s, not every epoch
            if t.checkpoint and epoch + 1 < t.epochs and time.monotonic() - last_save >= t.checkpoint_every_s:
                run.write_back()
                self.charge(active)  # the saved wall time includes writing
                for m in active:
                    if not m.done:
                        _save_checkpoint(m, epoch + 1, self.scaler)
                last_save = time.monotonic()
        if run is not None:
            run.write_back()


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


def _grad_sq(net, names, k):
    """[layers, 2 (weight, bias), K] squared gradient norms of the recorded Linear layers."""
    out = []
    for name in names:
        mod = net.get_submodule(name)
        w = mod.weight.grad.reshape(k, -1).pow(2).sum(1)
        b = mod.bias.grad.reshape(k, -1).pow(2).sum(1) if mod.bias is not None else torch.zeros_like(w)
        out.append(torch.stack([w, b]))
    return torch.stack(out)


def _stop_or_go(m, row, epoch, t_cfg, k):
    """Divergence and early stopping, per member: a member that stops leaves after this epoch."""
    who = f"member {m.cfg.seed}/{m.cfg.optim.lr} " if k > 1 else ""
    if not math.isfinite(row["train_loss"]):
        m.hist.diverged = m.done = True
        log.warning("%straining diverged at epoch %d (loss %s); stopping this run (try a lower optim.lr)",
                    who, epoch + 1, row["train_loss"])
        return
    # early stopping: count epochs whose val loss improved by less than min_delta
    es = t_cfg.early_stop
    m.bad_epochs = m.bad_epochs + 1 if row["val_loss"] > m.best_val - es.min_delta else 0
    m.best_val = min(m.best_val, row["val_loss"])
    if es.patience and m.bad_epochs >= es.patience:
        m.hist.stopped_early = m.done = True
        log.info("%searly stop after epoch %d: val loss improved < %g for %d epoch(s)", who, epoch + 1,
                 es.min_delta, m.bad_epochs)


def _fingerprint(cfg, device, precision):
    """What a checkpoint may resume: the config, and the device type and precision it ran in."""
    import json

    from omegaconf import OmegaConf

    return json.dumps({"config": OmegaConf.to_container(cfg, resolve=True), "device": device.type,
                       "precision": precision}, sort_keys=True, default=str)


def _save_checkpoint(m, epoch, scaler=None):
    state = {
        "wall_s": m.hist.wall_s, "scaler": [scaler.value, scaler.good] if scaler else None,
        "epoch": epoch, "config": m.fingerprint, "optim": m.opt_state,
        "model": {k: v.detach().cpu() for k, v in m.model.state_dict().items()},  # loads on any machine
        "rng_shuffle": m.shuffle.get_state(), "rng_draws": m.draws.get_state().cpu(),
        "rows": m.hist.rows, "steps": [torch.from_numpy(s) for s in m.steps],
        "best_val": m.best_val, "bad_epochs": m.bad_epochs,
    }
    atomic_write(m.run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def _resume(m, loop):
    import json
    import pickle
    import warnings

    path = m.run_dir / CHECKPOINT
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
        saved, now = json.loads(state.get("config") or "{}"), json.loads(m.fingerprint)
        if saved.get("config") != now["config"]:  # never overwrite another config's progress
            raise ForeignDir(f"{path} was written by a different config; run in a new dir "
                             "(hydra.run.dir=...) or delete that file to start afresh")
        from expkit.device import check_resume

        check_resume({k: saved.get(k) for k in ("device", "precision")},
                     {k: now[k] for k in ("device", "precision")}, path)
        m.model.load_state_dict(state["model"])
        if state["optim"] and "rows" in state["optim"]:
            raise UserError(f"{path} was written by an older expkit (optimizer state in another layout); delete "
                            "it to start this run afresh")
        m.opt_state = state["optim"]
        m.shuffle.set_state(state["rng_shuffle"])
        m.draws.set_state(state["rng_draws"].to(m.draws.get_state().device))
    except UserError:
        raise
    except Exception as ex:
        # torch's own message suggests weights_only=False, which would run whatever the file holds
        why = ("damaged, or holds objects other than tensors (never loaded)" if isinstance(ex, pickle.UnpicklingError)
               else f"{type(ex).__name__}: {str(ex).splitlines()[0][:200] if str(ex) else ''}")
        raise UserError(f"cannot resume from {path}: {why} (delete the file to start this run afresh)") from None
    m.hist.rows.extend(state["rows"])
    m.steps.extend(s.numpy() for s in state["steps"])
    m.best_val, m.bad_epochs, m.start = state["best_val"], state["bad_epochs"], state["epoch"]
    m.hist.wall_s += state.get("wall_s", 0.0)  # the earlier processes' share
    if loop.scaler and state.get("scaler"):  # fp16-mixed: the loss scale and its clean-step count go on
        loop.scaler.value, loop.scaler.good = state["scaler"]
    log.info("resumed from %s after epoch %d", path, state["epoch"])


def _clock(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A progress bar with the epoch, the ETA and, in a sweep, the job (k/N, set by the sweeper as
    EXPKIT_JOB) on a terminal; one plain log line per epoch, ETA included, otherwise."""
    def __init__(self, epoch, epochs, steps, started):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.first = started  # (first epoch trained by this process, its start time): the pace so far
        self.tty = sys.stderr.isatty()
        self.every = max(1, steps // 50)
        job = os.environ.get("EXPKIT_JOB")
        self.job = f"job {job} " if job else ""

    def eta(self, done_steps):
        """Seconds left in the run, from this run's pace so far."""
        first_epoch, t_start = self.first
        done = (self.epoch - first_epoch) * self.steps + done_steps
        if done <= 0:
            return None
        left = (self.epochs - self.epoch) * self.steps - done_steps
        return (time.perf_counter() - t_start) / done * left

    def update(self, i):
        if self.tty and i % self.every == 0:
            k = 30 * (i + 1) // self.steps
            eta = self.eta(i + 1)
            sys.stderr.write(f"\r{self.job}epoch {self.epoch + 1}/{self.epochs} [{'#' * k}{'.' * (30 - k)}] "
                             f"{i + 1}/{self.steps}" + (f"  ETA {_clock(eta)}" if eta is not None else ""))
            sys.stderr.flush()

    def done(self, active, epoch, dt):
        if self.tty:
            sys.stderr.write("\r\033[K")
        eta = self.eta(self.steps)
        tail = f"  ETA {_clock(eta)}" if eta else ""
        rows = [m.hist.rows[-1] for m in active]
        if len(rows) == 1:
            r = rows[0]
            log.info("%sepoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | test acc %.4f  (%.2fs)%s",
                     self.job, r["epoch"], self.epochs, r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"],
                     r["test_acc"], r["time_s"], tail)
        else:
            log.info("%sepoch %d/%d  %d members  val acc %s  (%.2fs)%s", self.job, epoch + 1, self.epochs, len(rows),
                     " ".join(f"{r['val_acc']:.4f}" for r in rows), dt, tail)
