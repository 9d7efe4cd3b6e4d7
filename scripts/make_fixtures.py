"""Write tiny data sets in the real formats of the hw6/pset10 studies, to try their presets:

    python scripts/make_fixtures.py DIR
    -> DIR/mnist/MNIST/raw/*-ubyte   (idx files, torchvision's layout)
       DIR/dogset/dogs.csv + images/*.jpg
       DIR/synth_data.pkl            (a pickled dict: trainX, trainY)
       DIR/cifar10/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta
       DIR/points2d/X_classification.npy, y_classification.npy

The images carry a simple class signal (a bright patch or a colour), so a model can learn them;
they only exercise the real loaders, they are not the real data. The tests use these writers.
"""
import argparse
import pickle
import struct
from pathlib import Path

import numpy as np


def _idx(path, arr):
    """The MNIST idx format: big-endian magic (0, 0, type 0x08 = uint8, ndim), the sizes, the bytes."""
    arr = np.ascontiguousarray(arr, np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.tobytes())


def _patches(y, size, rng, channels=1):
    """uint8 images (N, size, size[, C]) with a bright square whose place depends on the class."""
    n = len(y)
    x = rng.integers(0, 60, (n, size, size, channels)).astype(np.int32)
    s = size // 4
    for i, c in enumerate(y):
        r, q = divmod(int(c) % 9, 3)
        r0, c0 = r * (size // 3) + rng.integers(0, 3), q * (size // 3) + rng.integers(0, 3)
        x[i, r0:r0 + s, c0:c0 + s] = 200 + (int(c) // 9) * 50
    return x.clip(0, 255).astype(np.uint8)


def write_mnist(root, train_per_class=250, test_per_class=100, seed=0):
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, k in (("train", train_per_class), ("t10k", test_per_class)):
        y = rng.permutation(np.repeat(np.arange(10), k))
        _idx(raw / f"{prefix}-images-idx3-ubyte", _patches(y, 28, rng)[..., 0])
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    return Path(root)


COLOURS = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [60, 200, 200],
                    [200, 60, 200], [120, 120, 120], [240, 160, 80], [80, 160, 240], [160, 80, 240]])


def write_dogset(root, classes=4, per_partition=(12, 4, 4), size=64, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["filename,partition,numeric_label,semantic_label"]
    for part, k in zip(("train", "valid", "test"), per_partition):
        for c in range(classes):
            for j in range(k):
                img = (COLOURS[c] + rng.normal(0, 30, (size, size, 3))).clip(0, 255).astype(np.uint8)
                name = f"{part}_{c}_{j}.jpg"
                Image.fromarray(img).save(root / "images" / name, quality=90)
                lines.append(f"{name},{part},{c},breed_{c}")
    (root / "dogs.csv").write_text("\n".join(lines) + "\n")
    return root


def write_synth(path, n=400, seed=0):
    from expkit.data.synth_edges import generate

    x, y = generate(n, seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"trainX": x, "trainY": y}, f)
    return path


def write_cifar(root, per_batch=100, n_test=200, seed=0):
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, [per_batch] * 5 + [n_test]):
        y = rng.integers(0, 10, n)
        img = (COLOURS[y][:, None, None, :] * 0.6 + _patches(y, 32, rng, 3) * 0.4).astype(np.uint8)
        data = img.transpose(0, 3, 1, 2).reshape(n, 3072)  # rows of R (1024), G, B planes, as CIFAR stores them
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": [int(v) for v in y], "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(n)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}, f)
    return Path(root)


def write_points2d(root, n=400, seed=0):
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    x = rng.uniform(-1, 1, (n, 2))
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int64)  # XOR quadrants: no line separates them
    np.save(root / "X_classification.npy", x)
    np.save(root / "y_classification.npy", y)
    return root


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    d = ap.parse_args(argv).dir
    write_mnist(d / "mnist")
    write_dogset(d / "dogset")
    write_synth(d / "synth_data.pkl")
    write_cifar(d / "cifar10")
    write_points2d(d / "points2d")
    print(f"fixtures in {d}; try e.g.\n"
          f"  python train.py -m experiment=hw6/mnist_sizes data.root={d / 'mnist'}\n"
          f"  python train.py experiment=hw6/dogs_mlp data.root={d / 'dogset'}\n"
          f"  python train.py experiment=hw6/dogs_cnn data.root={d / 'dogset'}\n"
          f"  python train.py -m experiment=hw6/synth_kernels data.root={d / 'synth_data.pkl'}\n"
          f"  python train.py experiment=pset10/cifar_dense data.root={d / 'cifar10'}\n"
          f"  python train.py experiment=pset10/cifar_cnn data.root={d / 'cifar10'}\n"
          f"  python train.py experiment=pset10/cifar_svc data.root={d / 'cifar10'}\n"
          f"  python train.py -m experiment=pset10/deep2d data.root={d / 'points2d'}")


if __name__ == "__main__":
    main()
