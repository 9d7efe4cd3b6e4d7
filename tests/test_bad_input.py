"""Bad input a user can cause: one `error:` line, exit 2, no traceback, no result files left behind."""
import pytest

from conftest import run_cli, write_countries


def _edit(part, fn):
    """A case that rewrites one CSV of the good data set with fn(text)."""
    def make(root):
        path = root / f"{part}.csv"
        path.write_text(fn(path.read_text()))
        return [f"data.root={root}"]
    return make


def _rows(part, *rows):
    return _edit(part, lambda text: "\n".join(text.splitlines()[:3] + list(rows) + text.splitlines()[3:]) + "\n")


def _not_writable(root):
    (root.parent / "a_file").write_text("")  # a run dir below a plain file cannot be created, even by root
    return [f"data.root={root}", f"hydra.run.dir={root.parent / 'a_file' / 'run'}"]


def _images(root, corrupt=False):
    """A tiny ImageFolder tree (data=deepfake), optionally with one file that is not an image."""
    import numpy as np
    from PIL import Image

    img = root.parent / "img"
    for part in ("train", "val", "test"):
        for cls in ("0_real", "1_fake"):
            (img / part / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((16, 16, 3), 40 + 100 * i, np.uint8)).save(img / part / cls / f"{i}.png")
    if corrupt:
        (img / "train" / "1_fake" / "1.png").write_bytes(b"not a png")
    return ["data=deepfake", f"data.root={img}", "data.resize=16", "data.crop=16"]


CASES = {  # name: (make(root) -> extra args, words the error line must contain)
    "missing column": (_edit("train", lambda t: t.replace("lat", "latitude", 1)), "lacks column"),
    "renamed columns": (_edit("validation", lambda t: t.replace(",long,lat,country", ",x,y,label", 1)), "lacks column"),
    "nan feature": (_rows("train", "7,nan,50.0,1"), "NaN/inf"),
    "inf feature": (_rows("test", "7,3.0,inf,1"), "NaN/inf"),
    "string feature": (_rows("validation", "7,east,50.0,1"), "must be numbers"),
    "string labels": (_edit("train", lambda t: t + "8,3.0,50.0,FR\n"), "integer class ids"),
    "empty split": (_edit("test", lambda t: t.splitlines()[0] + "\n"), "no rows"),
    "missing file": (lambda root: (root / "validation.csv").unlink() or [f"data.root={root}"], "missing data file"),
    "missing directory": (lambda root: [f"data.root={root / 'nope'}"], "missing data file"),
    "unknown group option": (lambda root: ["model=mpl"], "closest: mlp"),
    "unknown preset": (lambda root: ["experiment=ex4/lrr"], "closest: ex4/lr"),
    "grad layer out of range": (lambda root: [f"data.root={root}", "trainer.grad_layers=[50]"], "0..6"),
    "grad layers on a cnn": (lambda root: ["data=mnist", "model=cnn", "trainer.grad_layers=[0]"], "model=mlp"),
    "unknown key": (lambda root: ["trainer.epoch=3"], "unknown config key"),
    "wrong type": (lambda root: [f"data.root={root}", "trainer.epochs=three"], "trainer.epochs"),
    "wrong type seed": (lambda root: [f"data.root={root}", "seed=abc"], "seed"),
    "negative lr": (lambda root: [f"data.root={root}", "optim.lr=-0.1"], "optim.lr must be > 0"),
    "batch 1 with batchnorm": (lambda root: [f"data.root={root}", "trainer.batch_size=1", "model.batchnorm=true"],
                               "BatchNorm"),
    "image model on tabular data": (lambda root: [f"data.root={root}", "model=resnet18"], "needs RGB images"),
    "cuda without gpu": (lambda root: [f"data.root={root}", "trainer.device=cuda"], "no CUDA device"),
    "output dir not writable": (_not_writable, "writable directory"),
    "unreadable image": (lambda root: _images(root, corrupt=True) + ["model=xgboost"], "cannot read image"),
    "pretrained weights missing offline": (lambda root: _images(root) + ["model=resnet18", "model.mode=linear_probe"],
                                           "pretrained ResNet18 weights not found"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clear_line(tmp_path, monkeypatch, case):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached pretrained weights
    make, words = CASES[case]
    if case == "cuda without gpu":
        pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has a GPU")
    root = write_countries(tmp_path / "data", n=40)
    run_dir = tmp_path / "run"
    r = run_cli("trainer.epochs=1", f"hydra.run.dir={run_dir}", *make(root))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > 20, r.stderr[-1500:]
    assert words in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    left = [p.name for p in tmp_path.rglob("*") if p.name in ("summary.json", "metrics.csv", "checkpoint.pt",
                                                               "model.pt", "predictions.csv")]
    assert not left and not run_dir.exists(), left


def test_an_added_misspelt_key_names_the_closest_and_the_groups_keys():
    """`+model.widht=32` (the hint an unknown key once gave) pointed at conf/model/, which lists no keys."""
    from conftest import compose_cfg
    from expkit.config import validate
    from expkit.errors import UserError

    with pytest.raises(UserError) as ex:
        validate(compose_cfg(["+model.widht=32"]))
    assert "did you mean model.width?" in str(ex.value) and "model has name, depth, width" in str(ex.value)
    assert "conf/model/" not in str(ex.value)
