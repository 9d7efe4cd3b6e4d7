"""Deepfake detection: images -> real (0) / fake (1).

Real data: ROOT/{train,val,test}/{0_real,1_fake}/* (ImageFolder semantics), e.g. 1024x1024 JPEGs;
each folder is its split (val/ validates, test/ is never used for validation).
Default: an embedded stand-in in the same layout, built once offline from the photographs that
ship with scikit-learn and matplotlib: "real" = natural crops, "fake" = the same kind of crops
down-sampled and up-sampled the way GAN generators do (periodic up-sampling artifacts); it has
its own train/ (1,400), val/ (200) and test/ (400) folders of separately drawn random crops.

The input transform belongs to the model (`input_transform(conf)` in its module, passed by run.py: ResNet
pretrained = resize 256 + crop 224 + ImageNet normalisation, scratch = resize 224, xgboost =
resize 224 + crop 64); data.resize / data.crop override its sizes (tests use tiny images).
Images stay uint8 (decoded once, cached); `Splits.prepare` makes floats per batch on the device.
"""
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from expkit.cache import cache_dir
from expkit.data import Split, Splits
from expkit.data.images import Transform, list_folder, load_cached, make_prepare
from expkit.errors import require
from expkit.schemas import DeepfakeConf as Conf  # noqa: F401 (declared once, there)

log = logging.getLogger(__name__)
TAKES_TRANSFORM = True  # the model's input transform (run.py passes it)
SPLITS = ("train", "val", "test")
CLASSES = ("0_real", "1_fake")
STANDIN = {"train": 1400, "val": 200, "test": 400}
STANDIN_VERSION = "deepfake_standin_v1"
STANDIN_SIZE = 256


def transform_for(conf, transform=None) -> Transform:
    t = transform or Transform(resize=224)  # a model without its own input transform: resize 224, [0, 1]
    if conf.resize is not None:
        t = replace(t, resize=conf.resize)
    if conf.crop is not None:
        t = replace(t, crop=conf.crop)
    require(t.resize >= 1 and (t.crop is None or 1 <= t.crop <= t.resize),
            f"data.crop must be between 1 and the resize size, got resize {t.resize}, crop {t.crop}; make data.crop <= data.resize")
    return t


def load(conf, transform=None) -> Splits:
    import torch

    t = transform_for(conf, transform)
    if conf.root:
        root = Path(conf.root).expanduser()
        require(root.is_dir(), f"data.root {root} is not a directory; it must hold {'/, '.join(SPLITS)}/ with 0_real/ and 1_fake/")
        desc = f"deepfake images from {root}"
    else:
        root = standin_root()
        desc = (f"deepfake: EMBEDDED STAND-IN ({STANDIN_SIZE}px crops of the sample photos shipped with scikit-learn "
                "and matplotlib; fake = GAN-like down/up-sampled), not real faces; set data.root for the real data")
    listed = {part: list_folder(root, part, CLASSES) for part in SPLITS}  # all checked before any decoding
    parts, keys, info = [], {}, {}
    for part in SPLITS:
        files, y = listed[part]
        x, keys[part] = load_cached(files, t, threads=torch.get_num_threads())
        parts.append(Split(x, y, np.array([str(f.resolve()) for f in files])))
        info[part] = (f"{'ROOT' if conf.root else 'stand-in'} {part}/ folder ({len(y):,} images: "
                      f"{int((y == 0).sum()):,} real, {int((y == 1).sum()):,} fake)")
    desc += f"; transform resize {t.resize}, crop {t.crop}, {'ImageNet-normalised' if t.normalize else '[0, 1]'}"
    return Splits(*parts, n_classes=2, description=desc, prepare=make_prepare(t),
                  extras={"content_keys": keys, "transform": t}, split_info=info)


def standin_root() -> Path:
    root = cache_dir("data") / STANDIN_VERSION
    if (root / "done").exists():
        return root
    log.info("building the embedded deepfake stand-in (once; cached at %s)", root)
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _build_standin(tmp)
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def _sources():
    """Natural photographs that ship inside installed packages (no download)."""
    import matplotlib
    import sklearn
    from PIL import Image

    paths = sorted((Path(sklearn.__file__).parent / "datasets" / "images").glob("*.jpg"))
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [Image.open(p).convert("RGB") for p in paths if p.exists()]


def _build_standin(out: Path):
    from PIL import Image, ImageEnhance, ImageFilter

    photos = _sources()
    require(photos, "cannot build the deepfake stand-in: no sample photos found in scikit-learn/matplotlib; set data.root")
    rng = np.random.default_rng(0)
    s = STANDIN_SIZE
    for part, n in STANDIN.items():
        for label, cls in enumerate(CLASSES):
            d = out / part / cls
            d.mkdir(parents=True)
            for i in range(n // 2):
                photo = photos[rng.integers(len(photos))]
                w, h = photo.size
                c = int(rng.integers(s, min(w, h) + 1))  # crops >= s px: real images are down-sampled only
                x0, y0 = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
                img = photo.crop((x0, y0, x0 + c, y0 + c)).resize((s, s), Image.LANCZOS)
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.8, 1.2)))
                if label:  # generator-like: half resolution, nearest x2 up-sampling, a 3x3 smoothing conv
                    img = img.resize((s // 2, s // 2), Image.BOX).resize((s, s), Image.NEAREST)
                    img = img.filter(ImageFilter.SMOOTH)
                img.save(d / f"{part}_{cls}_{i:04d}.jpg", quality=95)
