"""A finished run's files: metrics.csv, steps.csv, predictions.csv, boundary.npz, model, curves.png."""
import platform
import sys

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from expkit.version import __version__
from expkit.cache import atomic_write


def summarize(cfg, hist, model, splits, device, overrides):
    import torch

    rows = hist.rows
    final = dict(rows[-1])
    best = max(rows, key=lambda r: (r["val_acc"] if r["val_acc"] == r["val_acc"] else -1))
    n_params = sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else None
    return {
        "status": "diverged" if hist.diverged else (hist.stopped_by or "completed"),
        "final": final,
        "best": {"epoch": best["epoch"], "val_acc": best["val_acc"], "val_loss": best["val_loss"],
                 "test_acc": best["test_acc"], "train_acc": best["train_acc"]},
        "epochs_run": len(rows),
        "iterations_per_epoch": hist.iterations_per_epoch,
        # every process that trained this run, summed; a fused member's are its share of its group's
        "wall_time_s": hist.wall_s,  # set-up to files written (finish adds the writing)
        "time_per_epoch_s": hist.train_s / max(1, len(rows)),  # epochs only: no set-up, final eval, files
        "diverged": hist.diverged,
        "stopped_early": hist.stopped_early,
        "n_params": n_params,
        "layers": _layers(model, splits),  # per layer: output shape (conv shapes) and parameter count
        "device": str(device),
        "data": splits.description,
        "splits": dict(splits.split_info),  # how train/val/test were made (val never from test)
        "n_train": len(splits.train),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "seed": cfg.seed,
        "overrides": list(overrides),
        "versions": {"expkit": __version__, "torch": torch.__version__, "python": sys.version.split()[0],
                     "machine": platform.machine()},
        **hist.extras,
        "scheduler": __import__("expkit.scheduler").scheduler.info(),  # SLURM job, node, restarts, log; None outside one
        "config": OmegaConf.to_container(cfg),
    }


def _layers(model, splits):
    import torch

    if not isinstance(model, torch.nn.Module):
        return None
    from expkit.models.cnn import describe

    try:  # one sample through the data's own prepare (it may cast or resize), then the model
        x = torch.zeros(1, *splits.input_shape, dtype=torch.as_tensor(splits.train.x[:1]).dtype)
        x = x.to(next(model.parameters()).device)
        return describe(model, splits.prepare(x) if splits.prepare else x)
    except Exception as ex:  # informative only: never lose a finished run over it
        import logging

        logging.getLogger(__name__).warning("layer shapes not recorded: %s: %s", type(ex).__name__, ex)
        return None


def save(run_dir, cfg, hist, model, splits, summary):
    run_dir.mkdir(parents=True, exist_ok=True)
    _csv(run_dir / "metrics.csv", pd.DataFrame(hist.rows))
    if hist.steps is not None:
        steps = pd.DataFrame({"step": np.arange(1, len(hist.steps) + 1), "train_loss": hist.steps})
        steps["epoch"] = (steps.step - 1) // max(1, hist.iterations_per_epoch) + 1
        _csv(run_dir / "steps.csv", steps)
    atomic_write(run_dir / "config.yaml", lambda tmp: OmegaConf.save(cfg, tmp, resolve=True))
    if hist.test_probs is not None:
        p = hist.test_probs
        ids = splits.test.ids if splits.test.ids is not None else np.arange(len(p))
        _csv(run_dir / "predictions.csv", pd.DataFrame({
            "id": ids, "label": splits.test.y, "pred": p.argmax(1), "prob": p.max(1),
            "prob_1": p[:, 1] if p.shape[1] == 2 else p.max(1)}))
    if cfg.trainer.save_model:
        _save_model(run_dir, model)
    if splits.input_shape == (2,) and splits.prepare is None:
        _save_boundary(run_dir / "boundary.npz", model, splits)
    from expkit.report.plots import curves

    curves(run_dir, f"{cfg.name}: {' '.join(summary['overrides']) or 'defaults'}  ({run_dir.name})")


def _csv(path, df):
    atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def _save_model(run_dir, model):
    import torch

    if isinstance(model, torch.nn.Module):
        atomic_write(run_dir / "model.pt", lambda tmp: torch.save(model.state_dict(), tmp))
    else:
        import pickle

        atomic_write(run_dir / "model.pkl", lambda tmp: tmp.write_bytes(pickle.dumps(model)))


def predict_classes(model, x):
    """Class predictions of a torch model or a fitted estimator on a float array."""
    import torch

    if isinstance(model, torch.nn.Module):
        model.eval()
        dev = next(model.parameters()).device
        with torch.no_grad():
            out = torch.cat([model(torch.as_tensor(x[i:i + 65536], device=dev)) for i in range(0, len(x), 65536)])
        return (out.squeeze(-1) > 0).long().cpu().numpy() if out.shape[-1] == 1 else out.argmax(-1).cpu().numpy()
    return np.asarray(model.predict(x))


def _save_boundary(path, model, splits, n=300):
    """Predicted class on a grid over the test points, for decision-boundary plots."""
    x, y = np.asarray(splits.test.x, np.float32), splits.test.y
    pad = 0.05 * (x.max(0) - x.min(0))
    gx = np.linspace(x[:, 0].min() - pad[0], x[:, 0].max() + pad[0], n, dtype=np.float32)
    gy = np.linspace(x[:, 1].min() - pad[1], x[:, 1].max() + pad[1], n, dtype=np.float32)
    grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
    pred = predict_classes(model, grid).reshape(n, n).astype(np.int16)
    atomic_write(path, lambda tmp: np.savez_compressed(open(tmp, "wb"), gx=gx, gy=gy, pred=pred, x=x, y=y,
                                                       test_pred=predict_classes(model, x)))
