"""P3: a 5-lr linear-probe sweep with the frozen-feature cache vs without, in one process.

    python scripts/bench_probe.py [--root DIR] [--limit N] [--weights FILE | --random-weights]

Prints the wall time of one linear-probe run without the cache, and of the 5-lr sweep with and
without it, each as a ratio against that one run. Decoding is done once before timing (the
decode cache is the same for both arms); the feature cache starts empty in a temporary dir.
--random-weights times with a randomly initialised ResNet18 (same cost; accuracies mean nothing).
"""
import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LRS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


def subset(splits, n, seed=0):
    """n samples per split (random, fixed seed); the content key is then the data's own hash."""
    import numpy as np

    from expkit.data import Split

    rng = np.random.default_rng(seed)
    out = copy.copy(splits)
    for part, s in splits.items():
        idx = np.sort(rng.permutation(len(s))[:n]) if n else np.arange(len(s))
        setattr(out, part, Split(s.x[idx], s.y[idx], None if s.ids is None else s.ids[idx]))
    out.extras = {k: v for k, v in splits.extras.items() if k != "content_keys"}
    return out


def one_run(cfg, splits, lr, run_dir):
    """Build + train one linear probe at lr, as expkit.runner.run_group does; returns seconds."""
    import torch
    from omegaconf import OmegaConf

    from expkit.features import with_features
    from expkit.models import build, frozen_backbone
    from expkit.trainers import torch as trainer

    cfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(cfg, False)
    cfg.optim.lr = lr
    t0 = time.perf_counter()
    _, model = build(cfg.model, splits)
    probe = frozen_backbone(cfg.model, model)  # feature_cache=true: train the head on cached features
    s, net = (with_features(probe[0], probe[1], splits), probe[2]) if probe else (splits, model)
    trainer.fit([trainer.Member(cfg, net, run_dir)], s, torch.device("cpu"))
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="deepfake ImageFolder root (default: the embedded stand-in)")
    ap.add_argument("--limit", type=int, default=0, help="samples per split (0 = all)")
    ap.add_argument("--weights", help="ResNet18 state_dict file (default: torch hub cache)")
    ap.add_argument("--random-weights", action="store_true", help="time with a random-init weights file")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from expkit.api import compose
    from expkit.config import validate
    from expkit.data import load
    from expkit.models import input_transform

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_probe_"))
    weights = args.weights
    if args.random_weights:
        import torchvision

        weights = str(tmp / "resnet18_random.pth")
        torch.save(torchvision.models.resnet18().state_dict(), weights)
    overrides = ["data=deepfake", "model=resnet18", "model.mode=linear_probe", "trainer.epochs=1",
                 "trainer.batch_size=32", "trainer.eval_batch_size=64", f"trainer.threads={args.threads}",
                 "trainer.checkpoint=false"]
    overrides += [f"data.root={args.root}"] if args.root else []
    overrides += [f"model.weights_path={weights}"] if weights else []
    cfg = validate(compose(overrides))  # the configs and schemas as every entrypoint registers them
    splits = subset(load(cfg.data, input_transform(cfg.model)), args.limit)  # decode (or decode cache) before timing
    print(f"data: {splits.description}\nsizes: train {len(splits.train)}, val {len(splits.val)}, "
          f"test {len(splits.test)}; threads {args.threads}")

    os.environ["EXPKIT_CACHE"] = str(tmp / "cache")  # the feature cache starts empty
    no_cache = copy.deepcopy(cfg)
    from omegaconf import OmegaConf

    OmegaConf.set_readonly(no_cache, False)
    no_cache.model.feature_cache = False
    t_without = [one_run(no_cache, splits, lr, tmp) for lr in LRS]
    t_with = [one_run(cfg, splits, lr, tmp) for lr in LRS]
    one = t_without[0]
    print(f"one run, no feature cache:      {one:8.2f} s  (1.00)")
    print(f"5-lr sweep, no feature cache:   {sum(t_without):8.2f} s  ({sum(t_without) / one:.2f} x one run)")
    print(f"5-lr sweep, with feature cache: {sum(t_with):8.2f} s  ({sum(t_with) / one:.2f} x one run; "
          f"first run {t_with[0]:.2f} s computes the features, then {sum(t_with[1:]) / 4:.3f} s per run)")
    print(f"P3 speed-up of the sweep: {sum(t_without) / sum(t_with):.1f}x")


if __name__ == "__main__":
    main()
