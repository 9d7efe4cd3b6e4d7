"""A member's checkpoint: everything its run needs to go on exactly where it stopped.

Written after an epoch (by elapsed time: trainer.checkpoint_every_s) or mid-epoch at a step
boundary when the job is asked to stop (expkit/preempt.py: SLURM's SIGTERM / SIGUSR2): the
model, the optimizer state in the member's own shapes (independent of its group's size), the
random generators, the rows so far, the loss scale, the member's time so far and, mid-epoch,
the epoch's batch order and running sums. Only tensors and plain values (loaded weights_only).
"""
import json
import logging
import pickle
import warnings

import torch
from omegaconf import OmegaConf

from expkit.cache import atomic_write
from expkit.errors import ForeignDir, UserError

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def fingerprint(cfg, device, precision):
    """What a checkpoint may resume: the config, and the device type and precision it ran in."""
    return json.dumps({"config": OmegaConf.to_container(cfg, resolve=True), "device": device.type,
                       "precision": precision}, sort_keys=True, default=str)


def save(m, epoch, scaler=None, partial=None):
    state = {
        "wall_s": m.hist.wall_s, "scaler": [scaler.value, scaler.good] if scaler else None,
        "epoch": epoch, "config": m.fingerprint, "optim": m.opt_state,
        "model": {k: v.detach().cpu() for k, v in m.model.state_dict().items()},  # loads on any machine
        "rng_shuffle": m.shuffle.get_state(), "rng_draws": m.draws.get_state().cpu(),
        "rows": m.hist.rows, "steps": [torch.from_numpy(s) for s in m.steps],
        "best_val": m.best_val, "bad_epochs": m.bad_epochs,
        "partial": partial,  # mid-epoch: {step, order, loss_sum, hits, step_losses, grad_sq, time_s}
    }
    atomic_write(m.run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def resume(m, scaler=None):
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
    if scaler and state.get("scaler"):  # fp16-mixed: the loss scale and its clean-step count go on
        scaler.value, scaler.good = state["scaler"]
    m.partial = state.get("partial")
    if m.partial:
        log.info("resumed from %s in epoch %d after step %d", path, state["epoch"] + 1, m.partial["step"])
    else:
        log.info("resumed from %s after epoch %d", path, state["epoch"])
