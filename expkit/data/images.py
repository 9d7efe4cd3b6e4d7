"""Image helpers any image data set can use: list an ImageFolder split, decode + resize + crop
once into a uint8 tensor cached on disk, and the per-batch float conversion done on the device.

Decoding full-size JPEGs is the slow part of an image study; the cache is keyed by the file
list (paths, sizes, mtimes) and the transform, so later epochs, jobs and runs skip it.
"""
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from expkit.cache import atomic_write, cache_dir, key
from expkit.errors import UserError, require

log = logging.getLogger(__name__)
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
VERSION = 1  # bump when the decode result changes


@dataclass(frozen=True)
class Transform:
    resize: int                      # shorter side -> this many pixels (bilinear, antialiased)
    crop: Optional[int] = None       # then a centre crop of crop x crop
    normalize: Optional[Tuple] = None  # (mean, std) per channel, applied on the device

    @property
    def out_size(self):
        return self.crop or self.resize


def list_folder(root: Path, split: str, classes):
    """(files, labels) of ROOT/split/<class>/*: label = index in `classes` (ImageFolder order)."""
    d = Path(root) / split
    require(d.is_dir(), f"missing split folder {d}; data.root must hold {split}/ with {', '.join(classes)}/ inside")
    files, labels = [], []
    for label, c in enumerate(classes):
        cd = d / c
        require(cd.is_dir(), f"missing class folder {cd}; each split needs the folders {', '.join(classes)}")
        found = sorted(p for p in cd.rglob("*") if p.suffix.lower() in EXTENSIONS and not p.name.startswith("."))  # as ImageFolder: nested too
        require(found, f"class folder {cd} holds no images ({', '.join(sorted(EXTENSIONS))})")
        files += found
        labels += [label] * len(found)
    return files, np.array(labels, np.int64)


def decode_one(path, t: Transform) -> np.ndarray:
    """One file -> uint8 CHW, as torchvision's Resize(resize) + CenterCrop(crop) on the PIL image."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            # JPEG: let the decoder downscale by a power of two (DCT scaling), keeping at least
            # twice the target size so the antialiased resize below sees the same detail
            img.draft("RGB", (2 * t.resize, 2 * t.resize))
            img = img.convert("RGB")
            w, h = img.size
            s = t.resize / min(w, h)
            img = img.resize((max(t.resize, round(w * s)), max(t.resize, round(h * s))), Image.BILINEAR)
            if t.crop:
                w, h = img.size
                left, top = int(round((w - t.crop) / 2)), int(round((h - t.crop) / 2))
                img = img.crop((left, top, left + t.crop, top + t.crop))
            return np.asarray(img, np.uint8).transpose(2, 0, 1).copy()
    except (OSError, ValueError, SyntaxError) as ex:
        raise UserError(f"cannot read image {path} ({type(ex).__name__}: {ex}); remove or replace the file") from None


def decode(files, t: Transform, threads=1):
    """Decode and transform files -> uint8 tensor (N, 3, S, S); threads share the work (PIL
    releases the GIL while decoding and resizing)."""
    import torch

    with ThreadPoolExecutor(max(1, threads)) as pool:
        arrays = list(pool.map(lambda f: decode_one(f, t), files))
    shapes = {a.shape for a in arrays}
    require(len(shapes) == 1, f"decoded images differ in shape {sorted(shapes)}; set a crop size (data.crop=N)")
    return torch.from_numpy(np.stack(arrays))


def content_key(files, t: Transform):
    """Key of a file list and a transform: names, sizes and mtimes (a changed file changes it)."""
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in map(Path, files)]
    return key("images", VERSION, stats, t.resize, t.crop)  # normalisation happens later, per batch


def load_cached(files, t: Transform, threads=1):
    """(uint8 tensor, cache key): decoded once, then read from $EXPKIT_CACHE/images/."""
    import torch

    k = content_key(files, t)
    path = cache_dir("images") / f"{k}.pt"
    if path.exists():
        try:
            x = torch.load(path, weights_only=True)
            if len(x) == len(files):
                log.info("decode cache hit: %d images from %s", len(files), path)
                return x, k
        except Exception as ex:  # a damaged cache file is rebuilt, never trusted
            log.warning("ignoring unreadable decode cache %s (%s)", path, ex)
    log.info("decoding %d images (resize %d, crop %s) -> %s", len(files), t.resize, t.crop, path)
    x = decode(files, t, threads)
    atomic_write(path, lambda tmp: torch.save(x, tmp))
    return x, k


def make_prepare(t: Transform):
    """uint8 batch (on any device) -> float in [0, 1], normalised when the transform says so."""
    import torch

    stats = {}

    def prepare(xb):
        x = xb.float().div_(255)
        if t.normalize is None:
            return x
        if xb.device not in stats:
            mean, std = (torch.tensor(v, device=xb.device).view(1, -1, 1, 1) for v in t.normalize)
            stats[xb.device] = (mean, std)
        mean, std = stats[xb.device]
        return x.sub_(mean).div_(std)

    return prepare
