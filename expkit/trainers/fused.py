"""Several MLP sweep members trained as one grouped model (batched matmuls), each its own run.

A countries MLP step is microseconds of arithmetic and milliseconds of per-op overhead, so M
members that differ only in optim.lr / weight_decay / momentum / seed cost about one member
when their weights are stacked along a leading member dim and every op runs on all of them.

Semantics match trainers/torch.py member by member: the same init (each MLP built under its
own seed), its own shuffling generator, its own optimizer hyper-parameters (Adam/SGD written
on stacked tensors with per-member lr), the same per-epoch metrics, divergence and early
stopping. A member that stops (NaN loss or early stop) leaves the group at the end of that
epoch; nothing in the group mixes members (every op is per member), so its NaNs cannot
reach the others. The arithmetic differs from separate runs only in float summation order
(bmm vs addmm, stacked vs torch's fused Adam/SGD kernels): ~1e-8 after one step. Training then
amplifies rounding as it amplifies any difference: on the real countries CSVs (raw coordinates,
2 epochs) members differ from separate runs by up to ~6e-3 in losses and accuracies, no more than
a separate run differs from itself with each batch's rows reversed (tests/test_fused.py).
"""
import logging
import math
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from expkit.errors import require
from expkit.trainers import History
from expkit.trainers.torch import evaluate, has_batchnorm

log = logging.getLogger(__name__)
# keys whose values do not change tensor shapes: members may differ in these
FUSIBLE = ("seed", "optim.lr", "optim.weight_decay", "optim.momentum")
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam defaults, as trainers/torch.py uses


def not_fusible(cfg):
    """Why this (validated) config cannot join a fused group, or None if it can."""
    if cfg.model.name != "mlp":
        return f"model={cfg.model.name} (only model=mlp is fused)"
    if cfg.trainer.compile:
        return "trainer.compile=true (compiled runs are not fused)"
    return None


def group_key(cfg):
    """Configs with equal keys differ only in FUSIBLE values and can train as one group."""
    import json

    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg)
    c.pop("seed")
    for k in FUSIBLE[1:]:
        c["optim"].pop(k.split(".")[1])
    c["trainer"].pop("checkpoint")  # fused groups never checkpoint; not a difference in the result
    return json.dumps(c, sort_keys=True)


class Group:
    """Stacked state_dicts of the active members: S[name] has shape [M, *shape]."""

    def __init__(self, models):
        m0 = models[0]
        self.trainable = [(n, p.shape) for n, p in m0.named_parameters()]
        self.S = {k: torch.stack([m.state_dict()[k] for m in models]).detach() for k in m0.state_dict()}
        self._bind(torch.cat([self.S[k].reshape(len(models), -1) for k, _ in self.trainable], 1))
        self.encode = m0.encode  # fixed (data statistics or constants): the same for every member
        self.blocks = [(isinstance(b.norm, torch.nn.BatchNorm1d), b.act, b.residual) for b in m0.blocks]

    def _bind(self, flat):
        """All trainable weights live in one [M, P] tensor (the optimizer updates it with a few
        ops instead of a few per parameter); each parameter is a leaf view into it."""
        self.flat, off = flat, 0
        for k, shape in self.trainable:
            n = shape.numel()
            self.S[k] = flat[:, off:off + n].view(len(flat), *shape).detach().requires_grad_(True)
            off += n

    def params(self):
        return [self.S[k] for k, _ in self.trainable]

    def flat_grad(self):
        return torch.cat([p.grad.reshape(len(self.flat), -1) for p in self.params()], 1)

    def keep(self, idx):
        """Drop members not in idx (a LongTensor of positions)."""
        names = {k for k, _ in self.trainable}
        for k, v in self.S.items():
            if k not in names:
                self.S[k] = v[idx]
        self._bind(self.flat[idx])

    def forward(self, h, train):
        """h: [M, B, F] per-member batches, or [B, F] shared by all members -> logits [M, B, C]."""
        S, M = self.S, len(self.S["head.weight"])
        if h.dim() == 2:
            h = h.expand(M, *h.shape)
        for j, (bn, act, residual) in enumerate(self.blocks):
            p = f"blocks.{j}."
            z = torch.bmm(h, S[p + "linear.weight"].transpose(1, 2))
            if p + "linear.bias" in S:  # a Linear feeding BatchNorm has none (BatchNorm's own shift replaces it)
                z = z + S[p + "linear.bias"].unsqueeze(1)
            if bn:
                z = self._batchnorm(z, p + "norm.", train)
            a = act(z)
            h = h + a if residual else a
        return torch.baddbmm(S["head.bias"].unsqueeze(1), h, S["head.weight"].transpose(1, 2))

    def _batchnorm(self, z, p, train):
        # [M, B, C] -> [B, M*C]: torch's own batch_norm, one channel per (member, feature);
        # the running stats are views of the stacked buffers, updated in place as in BatchNorm1d
        M, B, C = z.shape
        S = self.S
        out = F.batch_norm(z.transpose(0, 1).reshape(B, M * C), S[p + "running_mean"].view(-1),
                           S[p + "running_var"].view(-1), S[p + "weight"].reshape(-1), S[p + "bias"].reshape(-1),
                           training=train, momentum=0.1, eps=1e-5)
        if train:
            S[p + "num_batches_tracked"] += 1
        return out.view(B, M, C).transpose(0, 1)

    def state_dict(self, i):
        return {k: v[i].detach().clone() for k, v in self.S.items()}


class Optimizer:
    """torch's Adam (L2 weight decay) / SGD (momentum, no dampening) on the group's [M, P] flat
    weights, with per-member lr, weight_decay and momentum ([M, 1] columns)."""

    def __init__(self, name, flat, lr, wd, momentum):
        self.name, self.t = name, 0
        self.hyper = torch.tensor([lr, wd, momentum], dtype=torch.float32, device=flat.device).T.unsqueeze(-1)
        self.state = [torch.zeros_like(flat) for _ in range(2 if name == "adam" else 1)]
        self.any_wd, self.any_mom = bool(self.hyper[:, 1].any()), bool(self.hyper[:, 2].any())

    def keep(self, idx):
        self.hyper, self.state = self.hyper[idx], [s[idx] for s in self.state]

    @torch.no_grad()
    def step(self, flat, grad):
        self.t += 1
        lr, wd, mom = self.hyper.unbind(1)  # each [M, 1]
        if self.any_wd:
            grad = grad + flat * wd
        if self.name == "sgd":
            if self.any_mom:  # buf starts at 0, so step 1 gives torch's buf = grad
                grad = self.state[0].mul_(mom).add_(grad)
            flat.sub_(grad * lr)
            return
        (b1, b2), (m, v) = BETAS, self.state
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(EPS)
        flat.addcdiv_(m * lr, denom, value=-1 / (1 - b1 ** self.t))


def _loss_hits(out, y):
    """Per-member mean loss [M] and #correct [M] for logits [M, B, C] and labels [M, B] or [B]."""
    M, B, C = out.shape
    y = y.expand(M, B)
    if C == 1:
        logits = out.squeeze(-1).float()
        loss = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1)
        return loss, ((logits > 0).long() == y).sum(1)
    loss = F.cross_entropy(out.reshape(M * B, C).float(), y.reshape(-1), reduction="none").view(M, B).mean(1)
    return loss, (out.argmax(-1) == y).sum(1)


@torch.no_grad()
def _evaluate(group, x, y, batch_size, autocast):
    M = len(group.S["head.weight"])
    loss_sum, hits = torch.zeros(M, device=y.device), torch.zeros(M, device=y.device)
    for i in range(0, len(y), batch_size):
        with autocast():
            out = group.forward(x[i:i + batch_size], train=False)
        loss, h = _loss_hits(out, y[i:i + batch_size])
        loss_sum += loss * len(out[0])
        hits += h
    n = len(y)  # divided in Python, as trainers/torch.py does
    return [v / n for v in loss_sum.tolist()], [v / n for v in hits.tolist()]


def fit(models, splits, cfgs, device):
    """Train len(models) MLPs (built like separate runs) as one group; returns one History each.
    cfgs: each member's validated config; they differ only in FUSIBLE keys."""
    t_cfg, o_name = cfgs[0].trainer, cfgs[0].optim.name
    require(splits.prepare is None and splits.augment is None, "fused training needs flat numeric data")
    bs, n = t_cfg.batch_size, len(splits.train)
    batchnorm = has_batchnorm(models[0])
    require(not (batchnorm and min(bs, n) == 1),
            "BatchNorm cannot train on a batch of one sample: use trainer.batch_size >= 2 or model.batchnorm=false")
    n_used = n - 1 if batchnorm and n % bs == 1 else n  # as trainers/torch.py: never a last batch of one
    steps_per_epoch = math.ceil(n_used / bs)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext

    for m in models:
        m.to(device)
    group = Group(models)
    with torch.no_grad():  # the fixed input transform, applied once instead of every step
        data = {p: (group.encode(torch.as_tensor(s.x).to(device)), torch.as_tensor(s.y).to(device))
                for p, s in splits.items()}
    x_train, y_train = data["train"]
    opt = Optimizer(o_name, group.flat, [c.optim.lr for c in cfgs], [c.optim.weight_decay for c in cfgs],
                    [c.optim.momentum for c in cfgs])
    shuffles = [torch.Generator().manual_seed(c.seed) for c in cfgs]
    layers = list(t_cfg.grad_layers)
    names = [f"blocks.{j}.linear." for j in range(len(group.blocks))] + ["head."]  # = MLP.linears
    lin = [names[j] for j in layers]
    hists = [History(iterations_per_epoch=steps_per_epoch) for _ in models]
    steps = [[] for _ in models]
    best_val, bad_epochs = [math.inf] * len(models), [0] * len(models)
    active = list(range(len(models)))  # member ids, in the group's order

    def finish(i):
        """Member i leaves the group: its weights go back into its own MLP for saving."""
        models[i].load_state_dict(group.state_dict(active.index(i)))
        *_, hists[i].test_probs = evaluate(models[i], torch.as_tensor(splits.test.x).to(device), data["test"][1],
                                          t_cfg.eval_batch_size, None, autocast, want_probs=True)
        if steps[i]:
            hists[i].steps = np.concatenate(steps[i])

    for epoch in range(t_cfg.epochs):
        t0 = time.perf_counter()
        M = len(active)
        order = torch.stack([torch.randperm(n, generator=shuffles[i])[:n_used] for i in active]).to(device)
        loss_sum, hits = torch.zeros(M, device=device), torch.zeros(M, device=device)
        step_losses = torch.zeros(M, steps_per_epoch, device=device)
        grad_sq = torch.zeros(len(lin), M, device=device)
        grad_sq_bias = torch.zeros(len(lin), M, device=device)
        params = group.params()
        for s in range(steps_per_epoch):
            idx = order[:, s * bs:(s + 1) * bs]
            with autocast():
                out = group.forward(x_train[idx], train=True)
            loss, h = _loss_hits(out, y_train[idx])
            for p in params:
                p.grad = None
            loss.sum().backward()  # members' graphs are disjoint: each gets its own gradient
            if lin:
                S = group.S
                grad_sq += torch.stack([S[p + "weight"].grad.pow(2).sum((1, 2)) for p in lin])  # weight matrix
                grad_sq_bias += torch.stack([S[p + "bias"].grad.pow(2).sum(1) if p + "bias" in S
                                             else torch.zeros(M, device=device) for p in lin])
            opt.step(group.flat, group.flat_grad())
            loss = loss.detach()
            loss_sum.add_(loss, alpha=idx.shape[1])
            hits += h
            if t_cfg.record_steps:
                step_losses[:, s] = loss
        train_loss, train_acc = [v / n_used for v in loss_sum.tolist()], [v / n_used for v in hits.tolist()]
        ev = {p: _evaluate(group, *data[p], t_cfg.eval_batch_size, autocast) for p in ("val", "test")}
        dt = time.perf_counter() - t0
        leaving = []
        for k, i in enumerate(active):
            row = {"epoch": epoch + 1, "train_loss": train_loss[k], "train_acc": train_acc[k]}
            for p in ("val", "test"):
                row[f"{p}_loss"], row[f"{p}_acc"] = ev[p][0][k], ev[p][1][k]
            for j, layer in enumerate(layers):
                row[f"grad_sq_layer{layer}"] = grad_sq[j, k].item() / steps_per_epoch
                row[f"grad_sq_bias_layer{layer}"] = grad_sq_bias[j, k].item() / steps_per_epoch
            row["time_s"] = dt  # the group's epoch: all members trained in this time
            hists[i].rows.append(row)
            if t_cfg.record_steps:
                steps[i].append(step_losses[k].cpu().numpy())
            if not math.isfinite(row["train_loss"]):
                hists[i].diverged = True
                log.warning("member %d diverged at epoch %d (loss %s); it leaves the group (try a lower optim.lr)",
                            i, epoch + 1, row["train_loss"])
                leaving.append(i)
                continue
            es = t_cfg.early_stop  # as trainers/torch.py
            bad_epochs[i] = bad_epochs[i] + 1 if row["val_loss"] > best_val[i] - es.min_delta else 0
            best_val[i] = min(best_val[i], row["val_loss"])
            if es.patience and bad_epochs[i] >= es.patience:
                hists[i].stopped_early = True
                log.info("member %d: early stop after epoch %d", i, epoch + 1)
                leaving.append(i)
        log.info("epoch %d/%d  %d member(s)  val acc %s  (%.2fs)", epoch + 1, t_cfg.epochs, M,
                 " ".join(f"{a:.4f}" for a in ev["val"][1]), dt)
        for i in leaving:
            finish(i)
        if leaving:
            stay = [k for k, i in enumerate(active) if i not in leaving]
            idx = torch.tensor(stay, dtype=torch.long)
            group.keep(idx.to(device))
            opt.keep(idx.to(device))
            active = [active[k] for k in stay]
        if not active:
            break
    for i in list(active):
        finish(i)
    return hists
