"""The GPU box, tested on a CPU: device and precision choices with torch.cuda mocked, determinism,
checkpoints across devices, estimators' devices, streaming from the host, channels_last, the
frozen-feature cache key. Nothing here runs CUDA kernels (no GPU on this project's machines)."""
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import compose_cfg, run_cli
from expkit.device import pick_device, pick_precision, set_determinism
from expkit.errors import ForeignDir, UserError
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
    with pytest.raises(UserError, match="written on cuda in bf16; this run resolves to cpu in fp32 here") as err:
        run(cfg, tmp_path / "r")
    # issue 20, item 7: the advice names what works. It used to say "set trainer.device=cuda
    # trainer.precision=bf16", which makes another config, whose resume is refused as such:
    assert "set trainer." not in str(err.value) and "a machine with a CUDA GPU and bfloat16 support" in str(err.value)
    other = compose_cfg([f"data.root={countries_root}", "trainer.epochs=3", "trainer.checkpoint_every_s=0",
                         "trainer.precision=bf16"])
    with pytest.raises(ForeignDir, match="written by a different config"):
        run(other, tmp_path / "r")
    assert f"or delete {path} to start this run afresh" in str(err.value)  # the other way, and it works:
    path.unlink()
    assert run(cfg, tmp_path / "r")["status"] == "completed"


def test_estimators_report_the_device_they_fit_on():
    from sklearn.linear_model import LogisticRegression
    from xgboost import XGBClassifier

    from expkit.trainers.estimator import device_for

    xgb = XGBClassifier()
    assert device_for(xgb, torch.device("cuda:0")) == torch.device("cuda:0") and xgb.get_params()["device"] == "cuda:0"
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
    from expkit.trainers.stacked import Stack

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
    """4 simulated GPUs, 1 job per GPU: 4 joblib workers (processes) land on 4 different GPUs; on one
    GPU, a fused group of 4 holds one slot. (No CUDA here: the jobs then train on the CPU; the placement
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
    monkeypatch.setenv("EXPKIT_FAKE_GPUS", "1")  # on 4 GPUs the sweeper splits the group: one unit per GPU
    r = run_cli(*common, "hydra/launcher=fused", f"hydra.sweep.dir={tmp_path / 'b'}")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and out.count("placed on GPU") == 1, out[-3000:]
    sums = [json.loads((tmp_path / "b" / str(j) / "summary.json").read_text()) for j in range(4)]
    assert {s["gpu_slot"] for s in sums} == {"0"} and all(len(s["fused_with"]) == 4 for s in sums)


# -- issue 20: the right GPU for every job (placement in run_group, probes, estimators, kernels) ----

@pytest.fixture
def box(monkeypatch, tmp_path):
    """A simulated box of n GPUs for runner._place (EXPKIT_FAKE_GPUS), slots under tmp_path, this
    process not yet pinned; CUDA itself stays unavailable (jobs then train on the CPU)."""
    from expkit import device, placement

    def make(n, gb=None):
        monkeypatch.setenv(placement.FAKE_ENV, str(n))
        if gb is not None:
            monkeypatch.setenv("EXPKIT_FAKE_GPU_GB", str(gb))
        return tmp_path / "slots"

    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "EXPKIT_FAKE_GPU_GB", "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(placement, "SLOT_DIR", tmp_path / "slots")
    monkeypatch.setattr(placement, "_box_cache", {}, raising=False)
    monkeypatch.setattr(placement, "_LIBS", {"libcuda.so.1": None, "libnvidia-ml.so.1": None}, raising=False)
    monkeypatch.setattr(placement, "_original_cvd", getattr(placement, "_UNSET", None), raising=False)
    monkeypatch.setattr(placement, "_warned", set(), raising=False)
    monkeypatch.setattr(device, "_placed", None, raising=False)
    saved = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    yield make
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


CNN_TINY = ["experiment=hw6/synth_kernels", "data.n=100", "trainer.epochs=1", "trainer.jobs_per_gpu=1"]


def test_a_cpu_job_never_starts_cuda(countries_root, tmp_path, monkeypatch):
    """Issue 20, item 1: device=auto asked torch.cuda.is_available() before knowing that a small MLP
    stays on the CPU. That call starts the driver, which then keeps the CUDA_VISIBLE_DEVICES it read:
    the next GPU job of the same process could not be pinned any more."""
    from expkit.runner import run

    def started(*a, **k):
        raise AssertionError("a CPU job started CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", started)
    monkeypatch.setattr(torch.cuda, "device_count", started)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", started, raising=False)
    assert pick_device("auto", MLP(2, 4, [16] * 6))[0].type == "cpu"
    for extra in ([], ["trainer.device=cpu"]):
        s = run(compose_cfg([f"data.root={countries_root}", "trainer.epochs=1", *extra]), tmp_path / str(len(extra)))
        assert s["status"] == "completed" and s["device"] == "cpu"


def test_the_config_says_whether_a_job_wants_a_gpu_before_anything_is_built():
    from expkit.device import GPU_MIN_PARAMS, wants_gpu, wants_gpu_conf

    conf = lambda *o: compose_cfg(list(o)).model  # noqa: E731
    assert wants_gpu_conf("auto", conf("model=cnn")) and wants_gpu_conf("auto", conf("model=resnet18"))
    assert wants_gpu_conf("auto", conf("model=xgboost")) and wants_gpu_conf("auto", conf("model=sklearn_probe"))
    assert wants_gpu_conf("auto", conf("model=sklearn")) is False
    assert wants_gpu_conf("cpu", conf("model=cnn")) is False and wants_gpu_conf("cuda", conf("model=mlp")) is True
    assert wants_gpu_conf("auto", conf("model=mlp")) is None  # its input layer depends on the data: decided later
    big = conf("model=mlp", "model.width=400", "model.depth=2")  # its hidden layers alone pass the bar
    assert wants_gpu_conf("auto", big) is True
    # never a different answer from the built model's (the same rule, known earlier)
    net = MLP(1, 1, [400, 400])
    assert sum(p.numel() for p in net.parameters()) >= GPU_MIN_PARAMS and wants_gpu("auto", net)


def _slot_held(slot_dir):
    from expkit import placement

    try:
        placement.acquire(slot_dir, ["0"], 1, timeout_s=0).release()
        return False
    except TimeoutError:
        return True


def test_a_gpu_job_takes_its_slot_before_loading_data(box, tmp_path, monkeypatch):
    """Issue 20, item 2: slots were taken after the data was decoded and the model built, so jobs
    waiting for a GPU held their decoded data in host memory."""
    from expkit import data as datasets
    from expkit.runner import run_group

    slot_dir = box(1)
    real, seen = datasets.load, []
    monkeypatch.setattr(datasets, "load", lambda *a, **k: seen.append(_slot_held(slot_dir)) or real(*a, **k))
    s = run_group([compose_cfg(CNN_TINY)], [tmp_path / "cnn"], [[]], job_num=0)[0]
    assert seen == [True] and s["gpu_slot"] == "0"
    assert not _slot_held(slot_dir)  # and released after


def test_an_auto_mlp_is_placed_once_its_size_is_known(box, tmp_path, countries_root, caplog):
    from expkit.runner import run_group

    box(1)
    small = compose_cfg([f"data.root={countries_root}", "trainer.epochs=1"])
    big = compose_cfg([f"data.root={countries_root}", "trainer.epochs=1", "model.hidden=[256,512]"])
    with caplog.at_level("INFO", logger="expkit"):
        assert "gpu_slot" not in run_group([small], [tmp_path / "s"], [[]], job_num=0)[0]
        assert run_group([big], [tmp_path / "b"], [[]], job_num=1)[0]["gpu_slot"] == "0"  # 2 + 131k + 2k params
    assert sum("placed on GPU 0" in r.getMessage() for r in caplog.records) == 1


def test_the_cuda_cache_is_freed_between_jobs(countries_root, tmp_path, monkeypatch):
    """Issue 20, item 2: a reused worker kept the caching allocator's blocks from job to job."""
    from expkit.runner import run

    calls = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as in a worker after a GPU job
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    run(compose_cfg([f"data.root={countries_root}", "trainer.epochs=1", "trainer.device=cpu"]), tmp_path / "r")
    assert calls  # after the job (and before the next one's data)


def test_the_memory_cap_per_gpu_applies(box, tmp_path, caplog):
    """Issue 20, item 7: default_per_device's memory cap was never applied (memory passed as None)."""
    from expkit.runner import run_group

    box(1, gb=4)  # a 4 GB card: one 4 GB CNN job at a time, not the default 2
    cfg = compose_cfg([c for c in CNN_TINY if "jobs_per_gpu" not in c])
    with caplog.at_level("INFO", logger="expkit"):
        run_group([cfg], [tmp_path / "r"], [[]], job_num=0)
    assert any("at most 1 job(s) per GPU" in r.getMessage() for r in caplog.records)


def test_slurm_gpus_are_the_schedulers(box, tmp_path, monkeypatch, caplog):
    """Issue 19, item 5: under SLURM every job on a node saw GPU "0" and waited on the same lock file."""
    from expkit.runner import run_group

    slot_dir = box(4)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what SLURM gives each job: its own GPU, as "0"
    with caplog.at_level("INFO", logger="expkit"):
        s = run_group([compose_cfg(CNN_TINY)], [tmp_path / "r"], [[]], job_num=3)[0]
    assert s["status"] == "completed" and "gpu_slot" not in s
    assert not slot_dir.exists() or not list(slot_dir.iterdir())
    assert any("SLURM job 4242 was given GPU(s) 0 by its scheduler" in r.getMessage() for r in caplog.records)


def test_no_flock_means_no_placement_and_one_warning(box, tmp_path, monkeypatch, caplog):
    """Issue 20, item 4: a slot dir on a file system without flock made every GPU job fail."""
    import errno

    from expkit import placement
    from expkit.runner import run_group

    box(2)

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(placement.fcntl, "flock", no_flock)
    with caplog.at_level("INFO", logger="expkit"):
        s = run_group([compose_cfg(CNN_TINY)], [tmp_path / "r"], [[]], job_num=0)[0]
    assert s["status"] == "completed" and "gpu_slot" not in s
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "file locks" in r.getMessage()]
    assert len(warned) == 1 and "EXPKIT_GPU_SLOTS" in warned[0]


def test_placement_blind_to_the_gpus_warns(box, tmp_path, monkeypatch, caplog):
    """Issue 20, item 3: a driver but no NVML and no nvidia-smi: every job went to cuda:0 unlimited, silently."""
    from expkit import placement
    from expkit.runner import _place

    box(0)
    monkeypatch.delenv(placement.FAKE_ENV)
    monkeypatch.setitem(placement._LIBS, placement.LIBCUDA, object())  # a driver is installed
    monkeypatch.setattr(placement.shutil, "which", lambda name: None)
    monkeypatch.setattr(placement, "driver_gpus", lambda: None)
    with caplog.at_level("INFO", logger="expkit"):
        assert _place(compose_cfg(CNN_TINY), None, 0) is None
    assert any("cannot see this machine's GPUs" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_xgboost_goes_to_the_gpu_under_auto_and_sklearn_says_cpu(gpus):
    """Issue 20, item 6: estimators counted as 0 parameters, so device=auto kept XGBoost on the CPU."""
    from sklearn.linear_model import LogisticRegression
    from xgboost import XGBClassifier

    gpus(1)
    device, why = pick_device("auto", XGBClassifier())
    assert device == torch.device("cuda:0") and "XGBoost" in why
    device, why = pick_device("auto", LogisticRegression())
    assert device.type == "cpu" and "fits on the CPU only" in why
    gpus(0)
    assert pick_device("auto", XGBClassifier())[0].type == "cpu"


def test_probes_compute_features_in_fp32_unless_asked(gpus):
    """Issue 20, item 5: a probe's precision came from its ResNet backbone (bf16 on a GPU), silently."""
    from expkit.models.resnet18 import _classifier_class

    gpus(1)
    cuda = torch.device("cuda:0")
    backbone = resnet().requires_grad_(False)  # what frozen_backbone hands the runner
    precision, why = pick_precision("auto", cuda, backbone)
    assert precision == "fp32" and "frozen" in why
    assert pick_precision("bf16", cuda, backbone) == ("bf16", "asked")
    head_only = _classifier_class()(resnet(), frozen=True)  # a linear probe without the feature cache
    assert pick_precision("auto", cuda, head_only)[0] == "fp32"
    assert pick_precision("auto", cuda, resnet())[0] == "bf16"  # a ResNet that trains: as before


def test_sklearn_probe_records_where_its_features_were_computed(tmp_path, monkeypatch):
    import torchvision

    from expkit.runner import run
    from test_deepfake import write_folder

    monkeypatch.setenv("EXPKIT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = compose_cfg(["data=deepfake", f"data.root={write_folder(tmp_path / 'faces', n=(4, 2, 2))}",
                       "data.resize=20", "data.crop=16", "model=sklearn_probe", f"model.weights_path={weights}"])
    s = run(cfg, tmp_path / "r")
    assert (s["device"], s["precision"]) == ("cpu", "fp32")  # the estimator's own
    f = s["features"]
    assert (f["device"], f["precision"], f["backbone"]) == ("cpu", "fp32", "ResNet")


def test_kernel_settings_fp32_is_fp32_and_recorded():
    """Issue 20, item 5: cuDNN runs "fp32" convolutions in TF32 by default; nothing recorded it."""
    from expkit.device import kernel_settings

    torch.backends.cudnn.allow_tf32 = True  # torch's default
    try:
        k = set_determinism(False, torch.device("cuda"))
        assert k == {"deterministic": False, "cudnn_benchmark": True, "cudnn_deterministic": False,
                     "tf32_matmul": False, "tf32_cudnn": False}
        assert not torch.backends.cudnn.allow_tf32
        k = set_determinism(True, torch.device("cuda"))
        assert k["deterministic"] and not k["cudnn_benchmark"] and k["cudnn_deterministic"]
    finally:
        set_determinism(False, torch.device("cpu"))
    assert kernel_settings()["cudnn_benchmark"] is False


PROBE_FIRST = r"""
import json, logging, os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.INFO)
import torch
from conftest import compose_cfg
from test_placement import FakeCuda, FakeNvml
from expkit import placement
from expkit.runner import run_group

cuda = placement._LIBS[placement.LIBCUDA] = FakeCuda(4)  # this process on a simulated 4-GPU box
placement._LIBS[placement.LIBNVML] = FakeNvml(4)


def runtime_count():  # torch's first CUDA query: the runtime starts the driver, which reads CUDA_VISIBLE_DEVICES
    cuda.cuInit(0)
    return 0  # (and finds no GPU it can run kernels on: jobs then train on this CPU)


torch._C._cuda_getDeviceCount = runtime_count
out = {{}}
run_group([compose_cfg(["data.root={countries}", "trainer.epochs=1"])], [Path({tmp!r}) / "cpu"], [[]], job_num=0)
out["inits_after_cpu_job"] = cuda.inits  # a CPU job first, as a reused worker may run
{probe}
held = placement.acquire(placement.SLOT_DIR, ["0"], 1)  # another job holds GPU 0
cnn = compose_cfg(["experiment=hw6/synth_kernels", "data.n=100", "trainer.epochs=1", "trainer.jobs_per_gpu=1"])
s = run_group([cnn], [Path({tmp!r}) / "gpu"], [[]], job_num=0)[0]
from expkit import device
out.update(gpu_slot=s.get("gpu_slot"), cvd=os.environ.get("CUDA_VISIBLE_DEVICES"), placed=device._placed)
print("RESULT", json.dumps(out))
"""


@pytest.mark.parametrize("probe, slot, cvd, placed, where", [
    # a library asked CUDA with CUDA_VISIBLE_DEVICES unset: every GPU is cuda:k; GPU 0 busy -> GPU 1 = cuda:1
    ("torch.cuda.is_available()", "1", None, "cuda:1", "placed on GPU 1, cuda:1 in this process"),
    # a worker whose earlier GPU job ran pinned to GPU 2: only GPU 2 (cuda:0) is reachable, whatever is free
    ("placement.pin('2'); torch.cuda.is_available()", "2", "2", "cuda:0", "this job can only run on GPU(s) 2"),
])
def test_a_process_that_probed_cuda_first_trains_on_the_gpu_of_its_slot(tmp_path, countries_root, probe, slot,
                                                                         cvd, placed, where):
    """Issue 20, item 1, in a real process: the job's recorded GPU is the one CUDA gives it. Before,
    a CPU job's device=auto query started CUDA, and pin() only asked torch.cuda.is_initialized(), so
    the next GPU job set CUDA_VISIBLE_DEVICES too late: it trained on cuda:0 of the first visible
    GPUs while recording (and holding the slot of) another GPU."""
    import subprocess
    import sys

    tests = str(Path(__file__).parent)
    code = PROBE_FIRST.format(tests=tests, countries=countries_root, tmp=str(tmp_path), probe=probe)
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "EXPKIT_FAKE_GPUS",
                                                            "SLURM_JOB_ID", "CUDA_DEVICE_ORDER")}
    env["EXPKIT_GPU_SLOTS"] = str(tmp_path / "slots")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                       cwd=Path(tests).parent)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stderr[-3000:]
    out = json.loads(line[0][7:])
    assert out["inits_after_cpu_job"] == 0  # the CPU job never started CUDA
    assert out["gpu_slot"] == slot and out["cvd"] == cvd and out["placed"] == placed
    assert where in r.stderr + r.stdout, (r.stderr + r.stdout)[-3000:]


def test_more_workers_than_slots_is_said(box, monkeypatch, caplog):
    """Issue 20, item 2: jobs_per_gpu limits running jobs, not the CUDA contexts that idle workers keep."""
    import types

    from hydra.core.hydra_config import HydraConfig

    from expkit.runner import _place

    box(2)
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: types.SimpleNamespace(launcher={"n_jobs": 16})))
    with caplog.at_level("INFO", logger="expkit"):
        for job in range(2):  # a reused worker's second job does not repeat it
            slot = _place(compose_cfg(CNN_TINY), None, job)
            assert slot.device_id in ("0", "1")
            slot.release()
    warned = [r.getMessage() for r in caplog.records if "CUDA context" in r.getMessage()]
    assert len(warned) == 1 and "n_jobs=16 workers for 2 GPU(s) x 1 job(s) each" in warned[0] and "n_jobs=2" in warned[0]
