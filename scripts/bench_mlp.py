"""P1: seconds per epoch of the expkit trainer vs a course-style loop, in one process.

    python scripts/bench_mlp.py ../shared/data/countries [--epochs 5] [--threads 1]

Both train the same 6x16 + BatchNorm MLP (same init, Adam 1e-3, batch 256, raw coordinates) on
the real CSVs and evaluate val + test every epoch (eval batch 1024). The course-style loop is the
usual DataLoader over a TensorDataset; expkit keeps tensors on the device and feeds index batches.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from omegaconf import OmegaConf  # noqa: E402

from expkit.data import load  # noqa: E402
from expkit.models import build  # noqa: E402
from expkit.trainers import torch as expkit_trainer  # noqa: E402


def course_eval(model, loader, loss_fn):
    model.eval()
    loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            loss += loss_fn(out, y).item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    return loss / n, correct / n


def course_epoch(model, opt, train_loader, eval_loaders, loss_fn=nn.CrossEntropyLoss()):
    """One epoch the way course notebooks write it: DataLoader batches, .item() every step."""
    model.train()
    for x, y in train_loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        _ = loss.item()  # the usual running-loss bookkeeping: a host sync per step
    return [course_eval(model, dl, loss_fn) for dl in eval_loaders]


def course_run(model, splits, epochs, batch=256, eval_batch=1024, lr=1e-3):
    t = lambda s: TensorDataset(torch.as_tensor(s.x), torch.as_tensor(s.y))  # noqa: E731
    train = DataLoader(t(splits.train), batch_size=batch, shuffle=True)
    evals = [DataLoader(t(s), batch_size=eval_batch) for s in (splits.val, splits.test)]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for _ in range(epochs):
        (val_loss, val_acc), (test_loss, test_acc) = course_epoch(model, opt, train, evals)
    return (time.perf_counter() - t0) / epochs, val_acc, test_acc


def expkit_run(model, splits, epochs, tmp):
    from expkit.config import OptimConf, TrainerConf

    cfg = OmegaConf.create({"seed": 42, "optim": OmegaConf.structured(OptimConf(lr=1e-3)),
                            "trainer": OmegaConf.structured(TrainerConf(epochs=epochs, checkpoint=False))})
    t0 = time.perf_counter()
    hist, = expkit_trainer.fit([expkit_trainer.Member(cfg, model, Path(tmp))], splits, torch.device("cpu"))
    return (time.perf_counter() - t0) / epochs, hist.rows[-1]["val_acc"], hist.rows[-1]["test_acc"]


def compare(root, epochs, only=None):
    """Both loops on the same model and init; returns {name: (s/epoch, val acc, test acc)}, ratio, gap.
    only="course": the course loop alone; returns its {name: ...}."""
    import tempfile

    splits = load(OmegaConf.create({"name": "countries", "root": str(root)}))
    mconf = OmegaConf.create({"name": "mlp", "depth": 6, "width": 16, "hidden": None, "batchnorm": True,
                              "activation": "relu", "residual": False, "encoding": "raw", "standardize": False})
    results = {}
    for name in (only,) if only else ("course", "expkit"):
        torch.manual_seed(42)
        model = build(mconf, splits)[1]
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = course_run(model, splits, epochs) if name == "course" else \
                expkit_run(model, splits, epochs, tmp)
        print(f"{name:>7}: {results[name][0]:.3f} s/epoch  val acc {results[name][1]:.4f}  "
              f"test acc {results[name][2]:.4f}")
    if only:
        return results
    ratio = results["course"][0] / results["expkit"][0]
    return results, ratio, abs(results["course"][2] - results["expkit"][2]) * 100


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="dir with the countries train/validation/test CSVs")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not (args.root / "train.csv").exists():
        sys.exit(f"error: no train.csv under {args.root}; pass the countries data dir")
    torch.set_num_threads(args.threads)
    _, ratio, gap = compare(args.root, args.epochs)
    print(f"P1 speed-up: {ratio:.1f}x per epoch (target >= 5x); test accuracy gap {gap:.2f} points "
          f"(target <= 1) | {args.epochs} epochs, {args.threads} thread(s), 6x16+BN, batch 256")


if __name__ == "__main__":
    main()
