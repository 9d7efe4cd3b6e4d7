"""hw6 and pset10: the data sets in their real formats (tiny fixtures), the CNN and sklearn models,
early stopping, layer shapes, and the study plots."""
import importlib.util
import json

import numpy as np
import pytest
import pandas as pd
import torch

from conftest import ROOT, compose_cfg, run_cli, write_countries
from expkit.config import validate
from expkit.data import Split, Splits, load
from expkit.errors import UserError
from expkit.models import build
from expkit.runner import run

_spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make_fixtures.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def cfg(*overrides):
    return validate(compose_cfg(["trainer.threads=1", *overrides]))  # 1 thread: fast on a shared machine


def data(*overrides):
    return load(cfg(*overrides).data)


def fake_splits(shape, n_classes=10):
    s = Split(np.zeros((4, *shape), np.float32), np.arange(4) % n_classes)
    return Splits(s, s, s, n_classes=n_classes, description="fake")


# ---- data ----

def test_mnist_idx_files_give_balanced_disjoint_subsets(tmp_path):
    root = fx.write_mnist(tmp_path / "m", train_per_class=30, test_per_class=12)
    s = data("data=mnist", f"data.root={root}", "data.train_size=53", "data.val_size=40", "data.test_size=50")
    assert s.input_shape == (1, 28, 28) and s.train.x.dtype == np.uint8 and s.n_classes == 10
    counts = np.bincount(s.train.y, minlength=10)
    assert counts.sum() == 53 and counts.max() - counts.min() <= 1  # class-balanced
    assert np.bincount(s.test.y, minlength=10).tolist() == [5] * 10
    assert not set(s.train.ids) & set(s.val.ids)  # validation images are never trained on
    xb = s.prepare(torch.as_tensor(s.train.x[:8]))
    assert xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1
    # the same files as torchvision reads them
    from torchvision.datasets import MNIST

    tv = MNIST(str(root), train=True, download=False)
    i = int(s.train.ids[0])
    assert np.array_equal(tv.data[i].numpy(), s.train.x[0, 0]) and int(tv.targets[i]) == s.train.y[0]


def test_mnist_default_is_sklearn_digits_and_caps_sizes_it_cannot_hold(caplog):
    s = data("data=mnist", "data.train_size=500")
    assert s.input_shape == (1, 8, 8) and "EMBEDDED DEFAULT" in s.description
    assert np.bincount(s.train.y).tolist() == [50] * 10 and len(s.test) == 297
    big = data("data=mnist", "data.train_size=2000")  # 1,500 training digits minus the 150 carved for val
    assert len(big.train) == 1350 and "1350 training images" in big.description and len(big.val) == 150
    assert "more than the data holds" in caplog.text


def test_mnist_errors(tmp_path):
    with pytest.raises(UserError, match="no MNIST files"):
        data("data=mnist", f"data.root={tmp_path}")
    with pytest.raises(UserError, match="needs data.root"):
        data("data=mnist", "data.download=true")


def test_dogset_csv_and_images_normalised_by_training_stats(tmp_path):
    root = fx.write_dogset(tmp_path / "d", classes=3, per_partition=(6, 2, 3), size=16)
    s = data("data=dogset", f"data.root={root}", "data.image_size=16")
    assert (len(s.train), len(s.val), len(s.test), s.n_classes) == (18, 6, 9, 3)
    assert s.input_shape == (3, 16, 16) and "breed_0" in s.description
    x = s.prepare(torch.as_tensor(s.train.x))
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    with pytest.raises(UserError, match="needs data.root"):
        data("data=dogset")
    (root / "dogs.csv").write_text("filename,numeric_label\na.jpg,0\n")
    with pytest.raises(UserError, match="lacks column"):
        data("data=dogset", f"data.root={root}")


def test_synth_edges_generator_and_course_pickle(tmp_path):
    from expkit.data.synth_edges import generate

    x, y = generate(200, noise=0.0)
    # a horizontal edge changes down the rows, a vertical one across the columns
    rows_vary = np.abs(np.diff(x, axis=1)).sum((1, 2)) > np.abs(np.diff(x, axis=2)).sum((1, 2))
    assert (rows_vary == (y == 0)).all() and np.bincount(y).tolist() == [100, 100]
    path = fx.write_synth(tmp_path / "synth_data.pkl", n=100)
    s = data("data=synth_edges", f"data.root={tmp_path}")  # a folder holding synth_data.pkl
    assert (len(s.train), len(s.val), len(s.test)) == (80, 10, 10) and s.input_shape == (1, 28, 28)
    import pickle

    path.write_bytes(pickle.dumps({"X": 1}))
    with pytest.raises(UserError, match="trainX"):
        data("data=synth_edges", f"data.root={path}")


def test_cifar_batches_read_like_torchvision(tmp_path, monkeypatch):
    root = fx.write_cifar(tmp_path / "c", per_batch=20, n_test=30)
    s = data("data=cifar10", f"data.root={root}", "data.train_size=70", "data.val_size=10")
    assert (len(s.train), len(s.val), len(s.test)) == (70, 10, 30) and s.input_shape == (3, 32, 32)
    assert list(s.train.ids) == [i for i in range(100) if i not in set(s.val.ids)][:70]  # first 70 not held out
    import torchvision.datasets.cifar as tvc

    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)  # the fixture has no real md5 sums
    tv = tvc.CIFAR10(str(root), train=True, download=False)
    assert np.array_equal(tv.data[s.train.ids].transpose(0, 3, 1, 2), s.train.x)
    assert [tv.targets[i] for i in s.train.ids] == list(s.train.y)
    with pytest.raises(UserError, match="needs data.root"):
        data("data=cifar10")
    with pytest.raises(UserError, match="downloading CIFAR-10 into .* failed"):  # offline
        data("data=cifar10", f"data.root={tmp_path / 'dl'}", "data.download=true")


def test_flip_crop_is_a_flipped_shifted_window_of_the_padded_image():
    from expkit.data.imageops import FlipCrop, Normalize

    norm = Normalize([0.5], [0.25])
    x = norm(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8))
    torch.manual_seed(0)
    out = FlipCrop(norm, pad=2)(x)
    assert out.shape == x.shape
    black = -0.5 / 0.25
    for b in range(len(x)):
        padded = torch.full((12, 12), black)
        padded[2:10, 2:10] = x[b, 0]
        options = [im[dy:dy + 8, dx:dx + 8] for im in (padded, padded.flip(-1)) for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[b, 0], o) for o in options)
    assert not torch.equal(out, x)


def test_points2d_npy_split_50_50_random_state_42(tmp_path):
    from sklearn.model_selection import train_test_split

    root = fx.write_points2d(tmp_path / "p", n=100)
    s = data("data=points2d", f"data.root={root}")
    X, y = np.load(root / "X_classification.npy"), np.load(root / "y_classification.npy")
    xtr, xte, _, _, itr, _ = train_test_split(X, y, np.arange(len(y)), test_size=0.5, random_state=42)
    # training + validation = the pset's train half (val carved from it), test = its test half
    assert sorted(np.concatenate([s.train.ids, s.val.ids]).tolist()) == sorted(itr.tolist())
    np.testing.assert_allclose(X[s.train.ids], s.train.x, rtol=1e-6)
    np.testing.assert_allclose(s.test.x, xte, rtol=1e-6)
    np.save(root / "X_classification.npy", X[:, :1])
    with pytest.raises(UserError, match="N x 2"):
        data("data=points2d", f"data.root={root}")


# ---- models ----

def test_pset10_parameter_counts_and_conv_shapes():
    from expkit.models.cnn import describe

    _, cnn = build(cfg("experiment=pset10/cifar_cnn").model, fake_splits((3, 32, 32)))
    _, dense = build(cfg("experiment=pset10/cifar_dense").model, fake_splits((3, 32, 32)))
    # by hand from the pset's layer list: conv 3*32*25+32, conv 32*64*9+64, 64*7*7*64+64, 64*10+10
    assert sum(p.numel() for p in cnn.parameters()) == 2432 + 18496 + 200768 + 650
    assert sum(p.numel() for p in dense.parameters()) == 3072 * 256 + 256 + 256 * 64 + 64 + 650
    shapes = [(r["type"], r["out_shape"]) for r in describe(cnn, torch.zeros(1, 3, 32, 32))][:4]
    assert shapes == [("Conv2d", [32, 30, 30]), ("MaxPool2d", [32, 15, 15]), ("Conv2d", [64, 15, 15]),
                      ("MaxPool2d", [64, 7, 7])]


def test_cnn_config_errors():
    with pytest.raises(UserError, match="larger than"):
        build(cfg("model=cnn", "model.convs=[{filters:2,kernel:9}]").model, fake_splits((1, 8, 8)))
    with pytest.raises(UserError, match="needs image data"):
        build(cfg("model=cnn").model, fake_splits((2,)))


def test_sklearn_model_by_target():
    _, m = build(cfg("model=sklearn", "model._target_=sklearn.svm.SVC", "+model.params.C=2.0").model, fake_splits((2,)))
    assert type(m).__name__ == "SVC" and m.C == 2.0
    for target, msg in (("os.system", "estimator class path"), ("sklearn.svm.Nope", "not found")):
        with pytest.raises(UserError, match=msg):
            build(cfg("model=sklearn", f"model._target_={target}").model, fake_splits((2,)))
    with pytest.raises(UserError, match="model.params"):
        build(cfg("model=svc", "model.params.kernel=nope").model, fake_splits((2,)))


# ---- training ----

def test_early_stop_when_val_loss_improves_less_than_min_delta(tmp_path):
    base = ["data=points2d", "data.n=200", "optim=sgd", "optim.lr=1e-9", "trainer.epochs=4", "trainer.checkpoint=false"]
    stopped = run(cfg(*base, "trainer.early_stop.patience=1"), tmp_path / "a")
    assert stopped["stopped_early"] and stopped["epochs_run"] == 2  # epoch 2 improved by ~0 < 1e-4
    full = run(cfg(*base), tmp_path / "b")  # patience 0: off
    assert not full["stopped_early"] and full["epochs_run"] == 4
    # a learning run: it must stop at the first epoch whose val loss beats the best so far by < min_delta
    root = write_countries(tmp_path / "blobs", n=200)
    learning = run(cfg(f"data.root={root}", "optim.lr=0.01", "trainer.batch_size=32", "trainer.epochs=15",
                       "trainer.checkpoint=false", "trainer.early_stop.patience=1",
                       "trainer.early_stop.min_delta=0.01"), tmp_path / "c")
    val = pd.read_csv(tmp_path / "c" / "metrics.csv").val_loss.tolist()
    improved = [val[i] < min(val[:i], default=np.inf) - 0.01 for i in range(len(val))]
    assert learning["stopped_early"] and 2 < len(val) < 15
    assert all(improved[:-1]) and not improved[-1]


def test_summary_has_layer_shapes_and_kernels_plot(tmp_path):
    from expkit.report.aggregate import build_report

    over = ["experiment=hw6/synth_kernels", "data.n=100", "trainer.epochs=1", "trainer.checkpoint=false"]
    for seed in (0, 1):
        run(cfg(*over, f"seed={seed}"), tmp_path / "sweep" / str(seed))
    s = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    convs = [r["out_shape"] for r in s["layers"] if r["type"] == "Conv2d"]
    assert convs == [[2, 24, 24], [4, 10, 10], [8, 3, 3]] and s["n_params"] == 52 + 76 + 296 + 18
    build_report(tmp_path / "sweep", plots=[{"kind": "kernels"}])
    assert (tmp_path / "sweep" / "first_layer_kernels.png").stat().st_size > 0


def test_mnist_sizes_table_uses_real_training_size(tmp_path):
    from expkit.report.aggregate import build_report

    for i, size in enumerate((100, 2000)):  # 2000 > the digits' 1350 (1500 minus 150 for val): capped
        run(cfg("experiment=hw6/mnist_sizes", f"data.train_size={size}", "trainer.epochs=1",
                "trainer.batch_size=100", "trainer.checkpoint=false"), tmp_path / "s" / str(i))
    build_report(tmp_path / "s", plots=[{"kind": "vs_n_train", "metrics": ["test_acc", "wall_time_s"]}])
    table = (tmp_path / "s" / "vs_n_train.md").read_text()
    assert "| 100 |" in table and "| 1350 |" in table
    assert (tmp_path / "s" / "wall_time_s_vs_n_train.png").exists()


def test_deep2d_sweep_reports_smallest_width(tmp_path):
    r = run_cli("-m", "experiment=pset10/deep2d", "data.n=200", "trainer.epochs=30", "trainer.threads=1",
                "optim.lr=0.05", "trainer.batch_size=20",
                "model=deep2d/logreg,deep2d/w2,deep2d/w32", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "smallest_width.md").read_text()
    assert "LogisticRegression" in md and "width 32" in md and "**" in md
    assert len(list(tmp_path.glob("boundary_*.png"))) == 3
    accs = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in md.splitlines()[2:5]}
    assert accs["1 hidden layer, width 32"] > accs["LogisticRegression"]  # two rings: no line separates them


def test_cifar_without_data_is_one_error_line(tmp_path):
    r = run_cli("experiment=pset10/cifar_cnn", "trainer.threads=1", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "data.root" in r.stderr
    assert not (tmp_path / "r").exists()
