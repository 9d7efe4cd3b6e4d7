"""The torch training loop for K >= 1 members of one architecture (K = 1: a plain run).

Data lives on the device as tensors; each member draws its own shuffled index batches. With
K > 1 the members train side by side as one stacked module (stacked.py): one forward and
one backward per step for all of them, each with its own init, shuffling, augmentation draws,
lr / weight decay / momentum, early stop and divergence; a member that stops leaves the stack
at the end of that epoch. Read top to bottom: setup, (resume), epochs of [train steps, eval,
record, checkpoint], then each member's final evaluation. Asked to stop (expkit/preempt.py: a
scheduler's SIGTERM / SIGUSR2), the loop checkpoints at the next step boundary and stops; the
resumed run goes on from that step exactly (checkpoint.py).
"""
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from expkit import preempt
from expkit.errors import require
from expkit.trainers import History, checkpoint
from expkit.trainers.checkpoint import CHECKPOINT
from expkit.trainers.compiled import Fallback
from expkit.trainers.progress import Progress
from expkit.trainers.stacked import Scaler, Stack, has_batchnorm

log = logging.getLogger(__name__)
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
    partial: dict = None    # resumed mid-epoch: the epoch's order, the step reached and its running sums
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
    require(not (precision == "fp16-mixed" and len(members) > 1), "fp16-mixed runs alone (it is never fused)")
    loop = Loop(members[0].cfg, splits, device, batchnorm, precision)
    for m in members:
        m.hist = History(iterations_per_epoch=loop.steps_per_epoch)
        m.shuffle = torch.Generator().manual_seed(m.cfg.seed)
        m.draws = torch.Generator(device=device).manual_seed(m.cfg.seed)
        m.fingerprint = checkpoint.fingerprint(m.cfg, device, precision)
        if t_cfg.checkpoint and (m.run_dir / CHECKPOINT).exists():
            checkpoint.resume(m, loop.scaler)
    loop.mark = started
    loop.charge(members)  # the set-up (data, models, resume): shared by the group

    def resumed_at(m):
        return m.start, m.partial["step"] if m.partial else 0

    for at in sorted({resumed_at(m) for m in members}):  # members resumed at different points train apart
        loop.train([m for m in members if resumed_at(m) == at], at[0])
    for m in members:  # each member's own model, alone, on the test set: its predictions
        if m.steps:
            m.hist.steps = np.concatenate(m.steps)
        *_, probs = loop.evaluate(loop.stack([m]), "test", want_probs=True)
        m.hist.test_probs = probs[:, 0]
        m.model.to("cpu")
        loop.charge([m])  # its own final evaluation
        if t_cfg.compile:
            m.hist.extras["compile"] = loop.compile_summary()
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
        self.compile = {}  # trainer.compile: graphs, compile_s, fallback, eager (why not compiled)
        self.mark = time.perf_counter()  # time up to here is charged (charge)

    def compile_summary(self):
        """What trainer.compile=true did: graphs compiled, seconds compiling (outside time_per_epoch_s),
        a fallback to eager (why), or why the step stayed eager; how the compiled step is called (compiled.py)."""
        from torch._dynamo.utils import counters

        c = self.compile
        graphs = counters["stats"]["unique_graphs"] - c["graphs_before"] if "graphs_before" in c else 0
        return {"graphs": graphs, "compile_s": round(c.get("compile_s", 0.0), 3), "fallback": c.get("fallback"),
                "eager": c.get("eager"), "auto": c.get("auto"), "call": c.get("call"),
                "cuda_graphs": c.get("cuda_graphs"),
                "last_batch": "eager (another shape)" if self.n_used % self.t.batch_size else None}

    def charge(self, members):
        """The time since the last charge, divided among `members` (each member's wall_s is its share)."""
        now = time.perf_counter()
        for m in members:
            m.hist.wall_s += (now - self.mark) / len(members)
        self.mark = now

    def stack(self, members):
        return Stack(members, self.device, self.channels_last)

    def compiled_step(self, run, eager_step_s=None, steps_left=0):
        """The stack's compiled step (trainer.compile=true, or auto once it decided to), or None: eager, the
        reason logged once. auto decides when given the first epoch's eager step time."""
        from expkit.trainers import compiled

        if self.t.compile is False or "fallback" in self.compile:
            return None
        why = compiled.eager_reason(self.t, self.scaler)
        if why:
            if "eager" not in self.compile:
                log.info("trainer.compile=%s, but the step stays eager: %s", str(self.t.compile).lower(), why)
            self.compile["eager"] = why
            return None
        self.compile["marker"] = compiled.warm_marker(run, self.t.batch_size)
        if self.t.compile == "auto":
            if "auto" not in self.compile:
                if eager_step_s is None:
                    return None  # the first epoch trains eagerly: its steps are timed
                ok, why = compiled.auto_decision(eager_step_s, steps_left, self.compile["marker"].exists(),
                                                 compiled.compiler_present(self.device))
                self.compile["auto"] = {"compile": ok, "why": why}
                log.info("trainer.compile=auto: %s: %s", "compiling the step" if ok else "staying eager", why)
            if not self.compile["auto"]["compile"]:
                return None
        return compiled.CompiledStep(run, loss_and_hits, self.compile)

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
        if (self.home != self.device
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
        record_steps = t.record_steps  # read once: a DictConfig attribute costs ~50 us, a step ~300 us
        for epoch in range(start, t.epochs):
            active = [m for m in members if not m.done]
            if not active:
                break
            if run is None or run.members != active:  # a member left: re-stack the others
                if run is not None:
                    run.write_back()
                run = self.stack(active)
                step = self.compiled_step(run)
            t0 = time.perf_counter()
            compile_s = self.compile.get("compile_s", 0.0)
            k = run.k
            run.net.train()
            part = [m.partial for m in active] if active[0].partial else None  # resumed mid-epoch
            if part:
                order = torch.stack([p["order"] for p in part])
            else:
                order = torch.stack([torch.randperm(self.n, generator=m.shuffle)[:self.n_used] for m in active])
            order = order.to(self.home)
            batches = self.batches(order, x_train, y_train)
            loss_sum = torch.zeros(k, device=device)
            hits = torch.zeros(k, device=device)
            step_losses = torch.zeros(k, self.steps_per_epoch, device=device)
            grad_sq = torch.zeros(len(grad_layers), 2, k, device=device)
            first, earlier = 0, [0.0] * k  # the first step to train; each member's epoch seconds before it
            if part:
                first, earlier = part[0]["step"], [p["time_s"] for p in part]
                for name, sums in (("loss_sum", loss_sum), ("hits", hits), ("step_losses", step_losses)):
                    sums.copy_(torch.stack([p[name] for p in part]))
                grad_sq.copy_(torch.stack([p["grad_sq"] for p in part], dim=-1))
                for m in active:
                    m.partial = None
            bar = Progress(epoch, t.epochs, self.steps_per_epoch, started, lambda: self.compile.get("compile_s", 0.0))
            for i in range(first, self.steps_per_epoch):
                if preempt.requested():  # a scheduler asked this job to stop: save where it is, then stop
                    if not t.checkpoint:
                        preempt.stop("trainer.checkpoint=false: nothing saved, it starts afresh")
                    run.write_back()
                    self.charge(active)
                    dt = time.perf_counter() - t0
                    for j, m in enumerate(active):
                        checkpoint.save(m, epoch, self.scaler, partial={
                            "step": i, "order": order[j].cpu(), "loss_sum": loss_sum[j].cpu(),
                            "hits": hits[j].cpu(), "step_losses": step_losses[j].cpu(),
                            "grad_sq": grad_sq[:, :, j].cpu(), "time_s": earlier[j] + dt / k})
                    preempt.stop(f"checkpoint in epoch {epoch + 1} at step {i}/{self.steps_per_epoch}")
                xb, yb = batches(i)
                if self.prepare:
                    xb = self.prepare(xb.flatten(0, 1)).unflatten(0, yb.shape)
                if self.augment:
                    xb = torch.stack([self.augment(xb[j], m.draws) for j, m in enumerate(active)])
                if step is not None and yb.shape[1] == bs:  # compiled: full batches (one shape, one graph)
                    try:
                        with self.autocast():
                            loss, h = step(xb, yb)
                    except Fallback:
                        step = None
                if step is None or yb.shape[1] != bs:
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
                if record_steps:
                    step_losses[:, i] = loss
                bar.update(i)
            steps_s = time.perf_counter() - t0
            ev = {p: self.evaluate(run, p) for p in ("val", "test")}
            dt = time.perf_counter() - t0 - (self.compile.get("compile_s", 0.0) - compile_s)  # epochs only
            sums, counts = loss_sum.tolist(), hits.tolist()
            for j, m in enumerate(active):
                row = {"epoch": epoch + 1, "train_loss": sums[j] / self.n_used, "train_acc": counts[j] / self.n_used}
                for p in ("val", "test"):
                    row[f"{p}_loss"], row[f"{p}_acc"] = ev[p][0][j], ev[p][1][j]
                for g, layer in enumerate(t.grad_layers):  # means over the epoch's steps
                    row[f"grad_sq_layer{layer}"] = grad_sq[g, 0, j].item() / self.steps_per_epoch
                    row[f"grad_sq_bias_layer{layer}"] = grad_sq[g, 1, j].item() / self.steps_per_epoch
                row["time_s"] = earlier[j] + dt / k  # its share of the epoch (fused: k members trained in dt)
                m.hist.rows.append(row)
                stop = [reason for reason in (callback(row) for callback in m.callbacks) if reason]
                if record_steps:
                    m.steps.append(step_losses[j].cpu().numpy())
                _stop_or_go(m, row, epoch, t, k)
                if stop:
                    _stop(m, stop[0], j, k, epoch)
            # every member has reported this epoch: a verdict that waited for later members of this group (a
            # synchronous halving rung) is known now, so its member stops here, not one epoch later
            for j, m in enumerate(active):
                late = [r for r in (cb.settle(epoch + 1) for cb in m.callbacks if hasattr(cb, "settle")) if r]
                if late:
                    _stop(m, late[0], j, k, epoch)
            bar.done(active, epoch, dt)
            if t.compile == "auto" and step is None and "auto" not in self.compile and self.steps_per_epoch > first:
                step = self.compiled_step(run, steps_s / (self.steps_per_epoch - first),
                                          (t.epochs - epoch - 1) * self.steps_per_epoch)
            self.charge(active)  # the epoch, and what came before it since the last charge
            # checkpoint by elapsed time: its cost is paid every checkpoint_every_s, not every epoch
            if t.checkpoint and epoch + 1 < t.epochs and time.monotonic() - last_save >= t.checkpoint_every_s:
                run.write_back()
                self.charge(active)  # the saved wall time includes writing
                for m in active:
                    if not m.done:
                        checkpoint.save(m, epoch + 1, self.scaler)
                last_save = time.monotonic()
        if run is not None:
            run.write_back()


def _stop(m, reason, j, k, epoch):
    """A callback's reason (e.g. "pruned") stops member j after this epoch, unless it stopped already."""
    if not m.done:
        m.hist.stopped_by, m.done = reason, True
        log.info("%sstopped after epoch %d: %s", f"member {j} " if k > 1 else "", epoch + 1, reason)


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


