"""Frozen-backbone features, computed once and cached (keyed by weights, data and transform).

The linear probe's lr sweep and model=sklearn_probe read the same cache: after the first job
the backbone never runs again for the same images and weights.
"""
import logging

import numpy as np

from expkit.cache import atomic_write, cache_dir, key

log = logging.getLogger(__name__)
BATCH = 64


def _content_key(splits, part, split):
    keys = splits.extras.get("content_keys") or {}
    if part in keys:
        return keys[part]  # the decode cache's key: files + sizes + mtimes + transform
    import hashlib

    x = split.x.numpy() if hasattr(split.x, "numpy") else np.asarray(split.x)
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]


def extract(net, x, prepare, device, precision="fp32"):
    """Backbone outputs for a uint8 image tensor, in eval mode, batch by batch, on the run's device
    and in its precision (so cached and uncached probes see the same numbers)."""
    import torch

    from expkit.device import autocast

    net.eval().to(device)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            xb = x[i:i + BATCH].to(device, non_blocking=True)
            with autocast(device, precision)():
                out.append(net(prepare(xb) if prepare else xb).float().cpu())
    return torch.cat(out).numpy()


def features(net, weights_key, splits, device, precision="fp32"):
    """{part: float32 (N, d)} for each split, from the cache when the same weights saw the same data
    on the same kind of device in the same precision."""
    import torch

    out = {}
    for part, split in splits.items():
        k = key("features", weights_key, _content_key(splits, part, split), str(splits.extras.get("transform")),
                device.type, precision)
        path = cache_dir("features") / f"{k}.npy"
        if path.exists():
            out[part] = np.load(path)
            log.info("feature cache hit: %s %s from %s", part, out[part].shape, path)
            continue
        log.info("computing frozen features for %s (%d images) -> %s", part, len(split), path)
        f = extract(net, torch.as_tensor(split.x), splits.prepare, device, precision).astype(np.float32)
        atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), f))
        out[part] = f
    net.to("cpu")
    return out


def with_features(net, weights_key, splits, device=None, precision="fp32"):
    """The same splits with frozen backbone features as inputs (ids, labels and split info stay)."""
    from dataclasses import replace

    import torch

    device = device or torch.device("cpu")
    f = features(net, weights_key, splits, device, precision)
    parts = {part: replace(split, x=torch.from_numpy(f[part])) for part, split in splits.items()}
    # where and in what precision the inputs were made (summary.json "features"): an estimator that
    # fits on the CPU in fp64 still records that its features came from, e.g., cuda in bf16
    extras = dict(splits.extras, features={"backbone": type(net).__name__, "weights": weights_key,
                                           "device": str(device), "precision": precision})
    return replace(splits, **parts, prepare=None, augment=None, extras=extras,
                   description=splits.description + "; inputs: frozen ResNet18 features (cached)")
