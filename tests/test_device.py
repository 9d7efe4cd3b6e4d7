"""The GPU box, tested on a CPU: device and precision choices with torch.cuda mocked, determinism,
checkpoints across devices, estimators' devices, streaming from the host, channels_last, the
frozen-feature cache key. Nothing here runs CUDA kernels (no GPU on this project's machines)."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, run_cli
from expkit.device import pick_device, pick_precision, set_determinism
from expkit.errors import UserError
from expkit.models.mlp import MLP


@pytest.fixture
def gpus(monkeypatch):
    """A simulated box: n CUDA devices visible, bf16 supported (no CUDA call is made)."""
    def make(n, bf16=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    return make


def resnet():
    import torchvision

    return torchvision.models.resnet18(num_classes=1)


def test_auto_device_by_model_size(gpus):
    gpus(2)
    small = MLP(2, 33, [16] * 6)
    device, why = pick_device("auto", small)
    assert device.type == "cpu" and "1,969 parameters" in why
    assert pick_device("auto", resnet())[0] == torch.device("cuda:0")
    assert pick_device("cuda:1", small)[0] == torch.device("cuda:1")  # asked is asked
    gpus(0)
    assert pick_device("auto", resnet()) == (torch.device("cpu"), "auto: no CUDA device")


def test_missing_cuda_device_is_one_clear_line(gpus, tmp_path):
    gpus(2)
    with pytest.raises(UserError, match=r"cuda:7 but this machine has 2 CUDA device\(s\), cuda:0..cuda:1"):
        pick_device("cuda:7")
    r = run_cli("trainer.device=cuda:7", "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'r'}")  # this machine
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: trainer.device=cuda:7"), r.stderr
    assert not (tmp_path / "r").exists()


def test_precision_choice(gpus):
    gpus(1)
    cuda, cpu = torch.device("cuda:0"), torch.device("cpu")
    assert pick_precision("auto", cuda, resnet())[0] == "bf16"
    assert pick_precision("auto", cuda, MLP(2, 33, [16] * 6))[0] == "fp32"
    assert pick_precision("auto", cpu, resnet())[0] == "fp32"
    assert pick_precision("fp16-mixed", cuda, resnet()) == ("fp16-mixed", "asked")
    with pytest.raises(UserError, match="fp16-mixed needs a CUDA device"):
        pick_precision("fp16-mixed", cpu, resnet())
    gpus(1, bf16=False)
    assert pick_precision("auto", cuda, resnet())[0] == "fp32"
    with pytest.raises(UserError, match="no bfloat16 support"):
        pick_precision("bf16", cuda, resnet())


def test_cfg_job_shows_precision_and_determinism():
    r = run_cli("--cfg", "job")
    assert "precision: auto" in r.stdout and "deterministic: false" in r.stdout


def test_determinism_switch():
    try:
        set_determinism(True, torch.device("cuda"))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        set_determinism(False, torch.device("cuda"))
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        set_determinism(False, torch.device("cpu"))
    assert not torch.backends.cudnn.benchmark


def test_checkpoint_from_another_device_or_precision_is_one_line(countries_root, tmp_path, monkeypatch):
    from expkit.runner import run
    from expkit.trainers import torch as trainer

    cfg = compose_cfg([f"data.root={countries_root}", "trainer.epochs=3", "trainer.checkpoint_every_s=0"])
    real = trainer._stop_or_go

    def crash(m, row, epoch, t, k):
        if epoch == 1:
            raise KeyboardInterrupt
        real(m, row, epoch, t, k)

    monkeypatch.setattr(trainer, "_stop_or_go", crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "r")
    path = tmp_path / "r" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert all(v.device.type == "cpu" for v in state["model"].values())  # loads on any machine
    written = json.loads(state["config"])
    assert (written["device"], written["precision"]) == ("cpu", "fp32")
    written.update(device="cuda", precision="bf16")  # as a GPU run would have written it
    state["config"] = json.dumps(written, sort_keys=True)
    torch.save(state, path)
    monkeypatch.setattr(trainer, "_stop_or_go", real)
    with pytest.raises(UserError, match="written on cuda in bf16; this run resolves to cpu in fp32: set "
                                        "trainer.device=cuda trainer.precision=bf16"):
        run(cfg, tmp_path / "r")


def test_estimators_report_the_device_they_fit_on():
    from sklearn.linear_model import LogisticRegression
    from xgboost import XGBClassifier

    from expkit.trainers.estimator import device_for

    xgb = XGBClassifier()
    assert device_for(xgb, torch.device("cuda:0")) == torch.device("cuda:0") and xgb.get_params()["device"] == "cuda"
    assert device_for(XGBClassifier(), torch.device("cpu")).type == "cpu"
    assert device_for(LogisticRegression(), torch.device("cuda:0")).type == "cpu"  # sklearn is CPU-only


def test_streaming_from_the_host_gives_the_same_run(countries_root, tmp_path):
    base = [f"data.root={countries_root}", "trainer.epochs=2", "trainer.batch_size=64"]
    r = run_cli(*base, "trainer.data_on_device_share=0", f"hydra.run.dir={tmp_path / 's'}")
    assert r.returncode == 0 and "streams to cpu batch by batch" in r.stdout + r.stderr, r.stderr[-2000:]
    assert run_cli(*base, f"hydra.run.dir={tmp_path / 'd'}").returncode == 0
    cols = lambda d: pd.read_csv(tmp_path / d / "metrics.csv").drop(columns="time_s")  # noqa: E731
    pd.testing.assert_frame_equal(cols("s"), cols("d"))


def test_keep_on_device_uses_the_free_memory_share(monkeypatch):
    from expkit.data import Split, Splits
    from expkit.trainers.torch import keep_on_device

    x = torch.zeros(1000, 250)  # 1 MB of features + 8 kB of labels
    s = Splits(*[Split(x, torch.zeros(1000, dtype=torch.long).numpy()) for _ in range(3)], n_classes=2,
               description="t", split_info={"train": "t", "val": "v", "test": "t"})
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (10_000_000, 80_000_000))
    assert keep_on_device(s, torch.device("cuda:0"), 0.5)       # 3 MB <= half of 10 MB free
    assert not keep_on_device(s, torch.device("cuda:0"), 0.25)  # 3 MB > 2.5 MB
    assert not keep_on_device(s, torch.device("cpu"), 0)        # share 0: always stream


def test_evaluation_runs_in_fp32_whatever_the_training_precision(countries_root, tmp_path):
    """bf16 autocast trains (here on the CPU); the recorded val loss is the fp32 loss of the model."""
    from expkit.data import load
    from expkit.models import build
    from expkit.runner import run

    cfg = compose_cfg([f"data.root={countries_root}", "trainer.epochs=1", "trainer.precision=bf16"])
    s = run(cfg, tmp_path / "r")
    assert s["precision"] == "bf16"
    splits = load(cfg.data)
    model = build(cfg.model, splits)[1]
    model.load_state_dict(torch.load(tmp_path / "r" / "model.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(splits.val.x)), torch.as_tensor(splits.val.y))
    assert s["final"]["val_loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_channels_last_stack_trains_like_the_default_layout():
    from expkit.models.cnn import CNN, ConvConf
    from expkit.trainers.torch import Stack

    class M:  # the fields of a Member that a Stack reads
        def __init__(self, model):
            self.model, self.opt_state = model, None
            self.cfg = compose_cfg(["optim=sgd", "optim.lr=0.1"])

    x = torch.randn(1, 8, 1, 12, 12)
    y = torch.randint(0, 2, (8,))
    outs = []
    for cl in (False, True):
        torch.manual_seed(0)
        run = Stack([M(CNN((1, 12, 12), 2, [ConvConf(3, 3), ConvConf(4, 3)], [], "relu"))], torch.device("cpu"), cl)
        for _ in range(3):
            run.zero_grad()
            torch.nn.functional.cross_entropy(run(x, per_member=True)[:, 0], y).backward()
            run.step()
        w = run.net.features[3].weight  # [4, 3, 3, 3]: with one input channel both layouts coincide
        assert w.is_contiguous(memory_format=torch.channels_last) == cl
        outs.append(w.detach().clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def test_feature_cache_key_includes_device_and_precision(tmp_path, monkeypatch):
    import numpy as np

    from expkit import features
    from expkit.data import Split, Splits

    monkeypatch.setenv("EXPKIT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(features, "extract", lambda net, x, prepare, device, precision="fp32":
                        calls.append((device.type, precision)) or np.zeros((len(x), 4), np.float32))
    s = Splits(*[Split(torch.full((2, 3, 4, 4), i, dtype=torch.uint8), np.zeros(2, np.int64)) for i in range(3)],
               n_classes=2, description="t", split_info={"train": "t", "val": "v", "test": "t"})
    for device, precision in [("cpu", "fp32"), ("cpu", "fp32"), ("cpu", "bf16"), ("cuda", "bf16")]:
        features.features(torch.nn.Identity(), "w", s, torch.device(device), precision)
    assert calls == [("cpu", "fp32")] * 3 + [("cpu", "bf16")] * 3 + [("cuda", "bf16")] * 3  # the repeat hit the cache
    assert len(list(Path(tmp_path).rglob("*.npy"))) == 9


def test_sweep_jobs_take_gpu_slots_and_a_fused_group_takes_one(tmp_path, monkeypatch):
    """4 simulated GPUs, 1 job per GPU: 4 joblib workers (processes) land on 4 different GPUs; a
    fused group of 4 holds one slot. (No CUDA here: the jobs then train on the CPU; the placement
    is what is tested. tests/test_placement.py checks the per-GPU limit across processes.)"""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    monkeypatch.setenv("EXPKIT_FAKE_GPUS", "4")
    monkeypatch.setenv("EXPKIT_GPU_SLOTS", str(tmp_path / "slots"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    common = ["-m", "experiment=hw6/synth_kernels", "data.n=100", "trainer.epochs=1", "trainer.jobs_per_gpu=1",
              "seed=1,2,3,4"]
    r = run_cli(*common, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", f"hydra.sweep.dir={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr[-3000:]
    slots = {json.loads((tmp_path / "a" / str(j) / "summary.json").read_text())["gpu_slot"] for j in range(4)}
    assert slots == {"0", "1", "2", "3"}
    r = run_cli(*common, "hydra/launcher=fused", f"hydra.sweep.dir={tmp_path / 'b'}")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and out.count("placed on GPU") == 1 and "fused group of 4" in out, out[-3000:]
    assert {json.loads((tmp_path / "b" / str(j) / "summary.json").read_text())["gpu_slot"] for j in range(4)} == {"0"}
