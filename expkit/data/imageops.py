"""Helpers the image data sets share: class-balanced subsets, per-batch normalisation on the
device (`Splits.prepare`) and flip + crop augmentation on the device (`Splits.augment`)."""
import logging

import numpy as np

log = logging.getLogger(__name__)


def balanced_indices(y, n, rng, what="data.train_size"):
    """n indices with every class equally represented (the first n % K classes get one more).
    A size larger than the data can balance is capped at the largest balanced size, with a
    warning: the real size is saved as n_train in summary.json."""
    classes = np.unique(y)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    most = min(len(p) for p in per_class) * len(classes)
    if n > most:
        log.warning("%s=%d is more than the data holds class-balanced; using %d (%d per class)",
                    what, n, most, most // len(classes))
        n = most
    k, extra = divmod(n, len(classes))
    idx = np.concatenate([p[:k + (i < extra)] for i, p in enumerate(per_class)])
    return rng.permutation(idx)


class Normalize:
    """uint8/float NCHW batch -> float (x / scale - mean) / std per channel, on the batch's device."""

    def __init__(self, mean, std, scale=255.0):
        self.mean, self.std, self.scale = list(map(float, mean)), list(map(float, std)), float(scale)
        self._dev = {}

    def stats(self, device):
        if device not in self._dev:
            import torch

            m = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            s = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            self._dev[device] = (m, s)
        return self._dev[device]

    def __call__(self, x):
        m, s = self.stats(x.device)
        return (x.float() / self.scale - m) / s


class FlipCrop:
    """Random horizontal flip and random crop after zero padding (black, as torchvision pads
    the raw image), for a whole normalised NCHW batch at once; draws from `generator` (each run's
    own, seeded by its seed; torch's global RNG if None)."""

    def __init__(self, normalize: Normalize, pad=4):
        self.normalize, self.pad = normalize, pad

    def __call__(self, x, generator=None):
        import torch

        b, c, h, w = x.shape
        p = self.pad
        flip = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        m, s = self.normalize.stats(x.device)
        padded = (-m / s).expand(b, c, h + 2 * p, w + 2 * p).clone()  # black after normalisation
        padded[:, :, p:p + h, p:p + w] = x
        oy = torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=generator) + torch.arange(h, device=x.device)
        ox = torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=generator) + torch.arange(w, device=x.device)
        rows = torch.arange(b, device=x.device).view(b, 1, 1)
        out = padded.permute(0, 2, 3, 1)[rows, oy.view(b, h, 1), ox.view(b, 1, w)]  # b, h, w, c
        return out.permute(0, 3, 1, 2).contiguous()


def channel_stats(x):
    """Per-channel mean and std of a uint8 NCHW array, in [0, 1] units (training statistics)."""
    x = np.asarray(x)
    flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1).astype(np.float64) / 255.0
    return flat.mean(1), flat.std(1).clip(1e-6)
