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
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expkit.cache import atomic_write
from expkit.errors import ForeignDir, UserError, require
from expkit.stack import interleave, split_members, stack, unstack
from expkit.trainers import History

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


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
    opt_state: dict = None  # this member's optimizer rows and step count, between stacks
    shuffle: object = None  # torch.Generator: the batch order (saved and restored on resume)
    draws: object = None    # torch.Generator on the device: augmentation draws
    fingerprint: str = ""   # the config that may resume from this member's checkpoint


def loss_and_hits(logits, y):
    """Per-member mean loss [K] and #correct [K]: logits [K, B, C] (BCE-with-logits for C = 1)."""
    k, b, c = logits.shape
    y = y.expand(k, b)
    if c == 1:
        z = logits.squeeze(-1).float()
        return F.binary_cross_entropy_with_logits(z, y.float(), reduction="none").mean(1), ((z > 0).long() == y).sum(1)
    loss = F.cross_entropy(logits.reshape(k * b, c).float(), y.reshape(-1), reduction="none").view(k, b).mean(1)
    return loss, (logits.argmax(-1) == y).sum(1)


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
    members with a few elementwise ops, each element with its own member's lr/wd/momentum."""

    def __init__(self, members, device):
        self.members = members
        self.k = len(members)
        for m in members:
            m.model.to(device)
        self.net = members[0].model if self.k == 1 else stack([m.model for m in members])
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        sizes = [p.numel() for p in self.params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params]) if self.params else torch.zeros(0)
        self.grad = torch.zeros_like(self.flat)
        for p, value, grad in zip(self.params, self.flat.split(sizes), self.grad.split(sizes)):
            p.data, p.grad = value.view_as(p), grad.view_as(p)  # backward accumulates into the flat grad
        self.chunks = [(off, n // self.k) for off, n in zip(np.cumsum([0] + sizes[:-1]).tolist(), sizes)]

        def per_element(values):  # a member's value on each of its elements of the flat tensor
            v = torch.tensor(values, dtype=self.flat.dtype, device=self.flat.device)
            return torch.cat([v.repeat_interleave(n) for _, n in self.chunks]) if self.chunks else v[:0]

        o = [m.cfg.optim for m in members]
        self.opt_name = o[0].name
        self.lr, self.wd, self.mom = (per_element([getattr(c, a) for c in o]) for a in ("lr", "weight_decay",
                                                                                       "momentum"))
        self.any_wd, self.any_mom = any(c.weight_decay for c in o), any(c.momentum for c in o)
        n_state = 2 if self.opt_name == "adam" else 1
        self.state = [torch.zeros_like(self.flat) for _ in range(n_state)]
        self.t = members[0].opt_state["t"] if members[0].opt_state else 0
        for j, m in enumerate(members):  # restore each member's rows (after a resume or a re-stack)
            if m.opt_state:
                for st, rows in zip(self.state, m.opt_state["rows"]):
                    self._set_rows(st, j, rows.to(st.device))

    def _rows(self, flat, j):
        return torch.cat([flat[off + j * n: off + (j + 1) * n] for off, n in self.chunks]) if self.chunks else flat

    def _set_rows(self, flat, j, rows):
        at = 0
        for off, n in self.chunks:
            flat[off + j * n: off + (j + 1) * n] = rows[at:at + n]
            at += n

    def member_opt_state(self, j):
        return {"t": self.t, "rows": [self._rows(st, j).cpu() for st in self.state]}

    def zero_grad(self):
        self.grad.zero_()

    @torch.no_grad()
    def step(self):
        """torch's Adam (L2 weight decay) / SGD (momentum, no dampening), per-element hyper-parameters."""
        self.t += 1
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
        """xb: [K, B, ...] per-member inputs (per_member) or [B, ...] shared by all -> logits [K, B, C]."""
        if self.k == 1:
            return self.net(xb[0] if per_member else xb).unsqueeze(0)
        x = interleave(xb) if per_member else xb.repeat(1, self.k, *[1] * (xb.dim() - 2))
        return split_members(self.net(x), self.k)

    def write_back(self):
        """Each member's trained state back into its own model (for saving, or a re-stack)."""
        for j, m in enumerate(self.members):
            if self.k > 1:
                m.model.load_state_dict(unstack(self.net, j, m.model))
            m.opt_state = self.member_opt_state(j)


@torch.no_grad()
def evaluate(run, x, y, batch_size, prepare=None, autocast=nullcontext, want_probs=False):
    """Per-member mean loss and accuracy over (x, y) shared by all members; optionally probabilities."""
    run.net.eval()
    loss_sum = torch.zeros(run.k, device=y.device)
    hits = torch.zeros(run.k, device=y.device)
    probs = []
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with autocast():
            out = run(prepare(xb) if prepare else xb, per_member=False)
        loss, h = loss_and_hits(out, yb)
        loss_sum += loss * len(yb)
        hits += h
        if want_probs:
            probs.append(probabilities(out))
    n = len(y)
    result = ([v / n for v in loss_sum.tolist()], [v / n for v in hits.tolist()])
    return result + (torch.cat(probs, 1).cpu().numpy(),) if want_probs else result


def to_device(split, device):
    x = torch.as_tensor(split.x)
    x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x
    return x, torch.as_tensor(split.y).to(device, non_blocking=True)


def fit(members, splits, device):
    """Train the members (same architecture and trainer settings; they may differ in seed, lr,
    weight decay and momentum); returns their Histories, each with test probabilities."""
    t_cfg = members[0].cfg.trainer
    n = len(splits.train)
    require(not (has_batchnorm(members[0].model) and min(t_cfg.batch_size, n) == 1),
            "BatchNorm cannot train on a batch of one sample: use trainer.batch_size >= 2 or model.batchnorm=false")
    require(not (t_cfg.compile and len(members) > 1), "trainer.compile=true runs alone (it is never fused)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    loop = Loop(members[0].cfg, splits, device, has_batchnorm(members[0].model))
    for m in members:
        m.hist = History(iterations_per_epoch=loop.steps_per_epoch)
        m.shuffle = torch.Generator().manual_seed(m.cfg.seed)
        m.draws = torch.Generator(device=device).manual_seed(m.cfg.seed)
        m.fingerprint = _fingerprint(m.cfg)
        if t_cfg.checkpoint and (m.run_dir / CHECKPOINT).exists():
            _resume(m)
    for start in sorted({m.start for m in members}):  # members resumed at different epochs train apart
        loop.train([m for m in members if m.start == start], start)
    for m in members:  # each member's own model, alone, on the test set: its predictions
        if m.steps:
            m.hist.steps = np.concatenate(m.steps)
        *_, probs = loop.evaluate(loop.stack([m]), "test", want_probs=True)
        m.hist.test_probs = probs[0]
        m.model.to("cpu")
    return [m.hist for m in members]


class Loop:
    """The epochs of one group: data on the device, then [train steps, eval, record, checkpoint]."""

    def __init__(self, cfg, splits, device, batchnorm):
        self.t, self.device = cfg.trainer, device
        bs, n = self.t.batch_size, len(splits.train)
        # A last batch of one would crash BatchNorm: drop that single sample (reshuffled next epoch).
        self.n, self.n_used = n, (n - 1 if batchnorm and n % bs == 1 else n)
        self.steps_per_epoch = math.ceil(self.n_used / bs)
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
            else nullcontext
        self.data = {part: to_device(s, device) for part, s in splits.items()}
        self.prepare, self.augment = splits.prepare, splits.augment
        self.compiled = None

    def stack(self, members):
        run = Stack(members, self.device)
        if self.t.compile:  # dynamic batch dim: the short last batch and the eval batches reuse one graph
            if self.compiled is None:
                self.compiled = torch.compile(run.net, dynamic=True)
            run.net = self.compiled
        return run

    def evaluate(self, run, part, want_probs=False):
        x, y = self.data[part]
        return evaluate(run, x, y, self.t.eval_batch_size, self.prepare, self.autocast, want_probs)

    def train(self, members, start):
        t, bs, device = self.t, self.t.batch_size, self.device
        linears = getattr(members[0].model, "linears", [])
        names = {id(mod): name for name, mod in members[0].model.named_modules()}
        grad_layers = [names[id(linears[i])] for i in t.grad_layers]
        x_train, y_train = self.data["train"]
        last_save, run = time.monotonic(), None
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
            order = order.to(device)
            loss_sum = torch.zeros(k, device=device)
            hits = torch.zeros(k, device=device)
            step_losses = torch.zeros(k, self.steps_per_epoch, device=device)
            grad_sq = torch.zeros(len(grad_layers), 2, k, device=device)
            bar = Progress(epoch, t.epochs, self.steps_per_epoch)
            for i in range(self.steps_per_epoch):
                idx = order[:, i * bs:(i + 1) * bs]
                xb, yb = x_train[idx], y_train[idx]
                if self.prepare:
                    xb = self.prepare(xb.flatten(0, 1)).unflatten(0, idx.shape)
                if self.augment:
                    xb = torch.stack([self.augment(xb[j], m.draws) for j, m in enumerate(active)])
                with self.autocast():
                    out = run(xb, per_member=True)
                loss, h = loss_and_hits(out, yb)
                run.zero_grad()
                loss.sum().backward()  # members' graphs are disjoint: each gets its own gradient
                if grad_layers:  # ||grad||^2 of each recorded layer's weight matrix, and of its bias apart
                    grad_sq += _grad_sq(run.net, grad_layers, k)
                run.step()
                loss = loss.detach()
                loss_sum += loss * idx.shape[1]
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
                row["time_s"] = dt  # fused: the group's epoch, all members trained in this time
                m.hist.rows.append(row)
                if t.record_steps:
                    m.steps.append(step_losses[j].cpu().numpy())
                _stop_or_go(m, row, epoch, t, k)
            bar.done(active, epoch, dt)
            # checkpoint by elapsed time: its cost is paid every checkpoint_every_s, not every epoch
            if t.checkpoint and epoch + 1 < t.epochs and time.monotonic() - last_save >= t.checkpoint_every_s:
                run.write_back()
                for m in active:
                    if not m.done:
                        _save_checkpoint(m, epoch + 1)
                last_save = time.monotonic()
        if run is not None:
            run.write_back()


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


def _fingerprint(cfg):
    import json

    from omegaconf import OmegaConf

    return json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)


def _save_checkpoint(m, epoch):
    state = {
        "epoch": epoch, "config": m.fingerprint, "model": m.model.state_dict(), "optim": m.opt_state,
        "rng_shuffle": m.shuffle.get_state(), "rng_draws": m.draws.get_state().cpu(),
        "rows": m.hist.rows, "steps": [torch.from_numpy(s) for s in m.steps],
        "best_val": m.best_val, "bad_epochs": m.bad_epochs,
    }
    atomic_write(m.run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def _resume(m):
    import pickle
    import warnings

    path = m.run_dir / CHECKPOINT
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
        if state.get("config") != m.fingerprint:  # never overwrite another config's progress
            raise ForeignDir(f"{path} was written by a different config; run in a new dir "
                             "(hydra.run.dir=...) or delete that file to start afresh")
        m.model.load_state_dict(state["model"])
        m.opt_state = state["optim"]
        m.shuffle.set_state(state["rng_shuffle"])
        m.draws.set_state(state["rng_draws"].to(m.draws.get_state().device))
    except ForeignDir:
        raise
    except Exception as ex:
        # torch's own message suggests weights_only=False, which would run whatever the file holds
        why = ("damaged, or holds objects other than tensors (never loaded)" if isinstance(ex, pickle.UnpicklingError)
               else f"{type(ex).__name__}: {str(ex).splitlines()[0][:200] if str(ex) else ''}")
        raise UserError(f"cannot resume from {path}: {why} (delete the file to start this run afresh)") from None
    m.hist.rows.extend(state["rows"])
    m.steps.extend(s.numpy() for s in state["steps"])
    m.best_val, m.bad_epochs, m.start = state["best_val"], state["bad_epochs"], state["epoch"]
    log.info("resumed from %s after epoch %d", path, state["epoch"])


class Progress:
    """A progress bar on a terminal; one log line per epoch otherwise."""

    def __init__(self, epoch, epochs, steps):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.tty = sys.stderr.isatty()
        self.every = max(1, steps // 50)

    def update(self, i):
        if self.tty and i % self.every == 0:
            k = 30 * (i + 1) // self.steps
            sys.stderr.write(f"\repoch {self.epoch + 1}/{self.epochs} [{'#' * k}{'.' * (30 - k)}] {i + 1}/{self.steps}")
            sys.stderr.flush()

    def done(self, active, epoch, dt):
        if self.tty:
            sys.stderr.write("\r\033[K")
        rows = [m.hist.rows[-1] for m in active]
        if len(rows) == 1:
            r = rows[0]
            log.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | test acc %.4f  (%.2fs)",
                     r["epoch"], self.epochs, r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"],
                     r["test_acc"], r["time_s"])
        else:
            log.info("epoch %d/%d  %d members  val acc %s  (%.2fs)", epoch + 1, self.epochs, len(rows),
                     " ".join(f"{r['val_acc']:.4f}" for r in rows), dt)
