"""One training path for one or many members: any same-shaped torch models fuse (MLP, CNN,
ResNet18 in every mode), each member equals its separate run, and groups checkpoint and resume.

Tolerance for equivalence: a stacked member runs the same arithmetic as its separate run in
another float summation order (batched / grouped kernels), so results agree to rounding that a
few training steps barely amplify on these tiny sets: losses 1e-4 relative+absolute (observed
< 1e-6), accuracies to one sample.
"""
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg, killed_after_epoch_2, load_for, run_cli
from expkit.config import validate
from expkit.models import build
from expkit.runner import run_group
from expkit.stack import stack, unstack
from expkit.trainers.stacked import Stack
from expkit.trainers import torch as trainer
from test_deepfake import folder, weights  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def close(a, b, n_eval):
    for c in ("train_loss", "val_loss", "test_loss"):
        np.testing.assert_allclose(a[c], b[c], rtol=1e-4, atol=1e-4, err_msg=c)
    for c in ("train_acc", "val_acc", "test_acc"):
        np.testing.assert_allclose(a[c], b[c], atol=1.01 / n_eval, err_msg=c)


def group_vs_alone(overrides, values, tmp_path, probs_atol=1e-4):
    """Members differing in (key, value) pairs, trained as one stack and one by one."""
    cfgs = [validate(compose_cfg([*overrides, *v, "trainer.checkpoint=false"])) for v in values]
    splits = load_for(cfgs[0])

    def built(c):
        torch.manual_seed(c.seed)
        return build(c.model, splits)[1]

    group = trainer.fit([trainer.Member(c, built(c), tmp_path / f"g{k}") for k, c in enumerate(cfgs)], splits,
                        torch.device("cpu"))
    for k, c in enumerate(cfgs):
        alone, = trainer.fit([trainer.Member(c, built(c), tmp_path / f"a{k}")], splits, torch.device("cpu"))
        close(pd.DataFrame(group[k].rows), pd.DataFrame(alone.rows), len(splits.val))
        np.testing.assert_allclose(group[k].test_probs, alone.test_probs, atol=probs_atol)
    assert group[0].rows[-1]["train_loss"] != group[1].rows[-1]["train_loss"]  # really different members
    return group


def test_cnn_members_equal_separate_runs(tmp_path):
    group_vs_alone(["data=synth_edges", "data.n=300", "model=cnn", "model.convs=[{filters: 3, kernel: 5, pool: 2}]",
                    "trainer.epochs=2", "trainer.batch_size=32", "optim=sgd", "optim.lr=0.01", "optim.momentum=0.9"],
                   [["seed=1"], ["seed=2", "optim.lr=0.03"], ["seed=3"]], tmp_path)


def test_resnet18_finetune_members_equal_separate_runs(folder, weights, tmp_path):  # noqa: F811
    group_vs_alone(["data=deepfake", f"data.root={folder}", "data.resize=20", "data.crop=16", "model=resnet18",
                    "model.mode=finetune", f"model.weights_path={weights}", "trainer.epochs=1", "trainer.batch_size=8"],
                   # 20 BatchNorm layers in train mode: probabilities differed by 1.8e-4 (torch 2.14.1, 2026-11-30)
                   [["optim.lr=0.001"], ["optim.lr=0.0001"]], tmp_path, probs_atol=5e-4)


def test_stack_and_unstack_are_exact_for_every_layer_kind():
    import torchvision

    from expkit.models.mlp import MLP
    from expkit.stack import interleave, split_members

    from expkit.stack import BATCH, CHANNELS

    mlp_bn = lambda: MLP(2, 5, [8, 8], batchnorm=True, stats=(torch.ones(2), torch.ones(2) * 3))  # noqa: E731
    # (model, input shape, layout): the default layout (None: BATCH without Conv2d, CHANNELS with) and both forced
    for make, shape, layout in [(mlp_bn, (2,), None), (mlp_bn, (2,), CHANNELS), (mlp_bn, (2,), BATCH),
                                (lambda: MLP(2, 5, [8], encoding="sines"), (2,), None),
                                (lambda: MLP(2, 5, [8, 8], residual=True), (2,), None),
                                (lambda: torchvision.models.resnet18(num_classes=3), (3, 16, 16), None),
                                (lambda: torchvision.models.resnet18(num_classes=3), (3, 16, 16), BATCH)]:
        models = []
        for s in range(3):
            torch.manual_seed(s)
            models.append(make().eval())
        st = stack(models, layout).eval()
        assert st.stack_layout == layout or (layout is None and st.stack_layout == (
            CHANNELS if any(isinstance(m, torch.nn.Conv2d) for m in models[0].modules()) else BATCH))
        x = torch.randn(3, 4, *shape)
        with torch.no_grad():
            out = split_members(st(interleave(x, st.stack_layout)), 3, st.stack_layout)
            ref = torch.stack([m(x[k]) for k, m in enumerate(models)])
        assert (out - ref).abs().max() < 1e-4
        for k, m in enumerate(models):
            back = unstack(st, k, m)
            assert all(torch.equal(back[n], v) for n, v in m.state_dict().items())


def test_stacked_batchnorm_trains_each_member_on_its_own_batch_statistics():
    from expkit.models.mlp import MLP
    from expkit.stack import BATCH, CHANNELS, interleave, split_members

    models = []
    for s in range(3):
        torch.manual_seed(s)
        models.append(MLP(2, 4, [6, 6], batchnorm=True).train())
    x = torch.randn(3, 16, 2) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1)  # members see different batches
    for layout in (BATCH, CHANNELS):
        st = stack([copy.deepcopy(m) for m in models], layout).train()
        out = split_members(st(interleave(x, layout)), 3, layout)
        ref = [copy.deepcopy(m) for m in models]
        expect = torch.stack([m(x[k]) for k, m in enumerate(ref)])
        assert (out - expect).abs().max() < 1e-5
        for k, m in enumerate(ref):  # running statistics per member
            back = unstack(st, k, m)
            for n, v in m.state_dict().items():
                assert torch.allclose(back[n].float(), v.float(), atol=1e-6), (layout, k, n)


def test_hits_are_argmax_hits_with_ties_infinities_and_nan():
    torch.manual_seed(0)
    for trial in range(50):
        z = torch.randint(0, 3, (5, 4, 7)).float()  # [B, K, C] with many ties
        z[torch.rand_like(z) < 0.05] = float("nan") if trial % 2 else float("inf")
        y = torch.randint(0, 7, (4, 5))
        _, hits = trainer.loss_and_hits(z, y)
        assert torch.equal(hits, (z.argmax(-1) == y.t()).sum(0))
        _, hits = trainer.loss_and_hits(z, y[0])  # labels shared by all members
        assert torch.equal(hits, (z.argmax(-1) == y[0].unsqueeze(1)).sum(0))


def test_a_stacked_cnn_runs_channels_last_on_the_cpu_unless_it_has_batchnorm(tmp_path):
    from expkit.models.cnn import CNN, ConvConf

    def members(bn):
        out = []
        for s in range(2):
            torch.manual_seed(s)
            net = CNN((1, 12, 12), 2, [ConvConf(3, 3), ConvConf(4, 3)], [], "relu")
            if bn:
                net.features.insert(1, torch.nn.BatchNorm2d(3))
            cfg = compose_cfg(["model=cnn", "data=synth_edges"])
            out.append(trainer.Member(cfg, net, tmp_path))
        return out

    assert Stack(members(False), torch.device("cpu")).channels_last
    assert not Stack(members(True), torch.device("cpu")).channels_last
    assert not Stack(members(False)[:1], torch.device("cpu")).channels_last  # one member: as it is


def test_a_layer_without_a_stacked_form_is_refused():
    from expkit.stack import NotStackable

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    with pytest.raises(NotStackable, match="Odd has parameters but no stacked form"):
        stack([Odd(), Odd()])


def test_synth_kernels_seed_sweep_trains_one_group_of_4_and_leaves_4_run_dirs(tmp_path):
    out = tmp_path / "s"
    r = run_cli("-m", "experiment=hw6/synth_kernels", "seed=1,2,3,4", "hydra/launcher=fused", "trainer.epochs=2",
                "data.n=200", f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fused: 4 job(s) train as 1 unit(s) (1 group(s) of 4)" in r.stdout + r.stderr
    for j in range(4):
        d = out / str(j)
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "completed" and s["fused_with"] == ["0", "1", "2", "3"] and s["config"]["seed"] == j + 1
        assert {"metrics.csv", "config.yaml", "model.pt", "predictions.csv", "curves.png"} <= {p.name for p in d.iterdir()}
    assert (out / "first_layer_kernels.png").exists()
    first = [torch.load(out / str(j) / "model.pt", weights_only=True)["features.0.weight"] for j in range(4)]
    assert not torch.equal(first[0], first[1])  # each seed its own kernels


@pytest.mark.parametrize("preset", ["ex4/linear_probe", "ex4/finetune"])
def test_deepfake_lr_sweeps_fuse(preset, folder, weights, tmp_path):  # noqa: F811
    out = tmp_path / "s"
    r = run_cli("-m", f"experiment={preset}", "hydra/launcher=fused", f"model.weights_path={weights}",
                f"data.root={folder}", "data.resize=20", "data.crop=16", "trainer.batch_size=8",
                f"hydra.sweep.dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fused: 5 job(s) train as 1 unit(s) (1 group(s) of 5)" in r.stdout + r.stderr
    table = pd.read_csv(out / "results.csv")
    assert sorted(table["optim.lr"]) == [1e-5, 1e-4, 1e-3, 1e-2, 0.1] and set(table.status) == {"completed"}


def test_a_killed_group_resumes_and_a_rerun_skips_finished_members(countries_root, tmp_path, monkeypatch):
    over = [f"data.root={countries_root}", "trainer.epochs=4", "trainer.batch_size=32", "trainer.checkpoint_every_s=0"]
    cfgs = [compose_cfg([*over, f"optim.lr={lr}"]) for lr in (0.01, 0.003)]
    run_group(cfgs, [tmp_path / "w0", tmp_path / "w1"], [[], []])
    dirs = [tmp_path / "k0", tmp_path / "k1"]
    restore = killed_after_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_group(cfgs, dirs, [[], []])
    assert all((d / "checkpoint.pt").exists() and not (d / "summary.json").exists() for d in dirs)
    restore()
    resumed = run_group(cfgs, dirs, [[], []])
    for w, b, d in zip(("w0", "w1"), resumed, dirs):  # the resumed group equals an uninterrupted one
        pd.testing.assert_frame_equal(pd.read_csv(d / "metrics.csv").drop(columns="time_s"),
                                      pd.read_csv(tmp_path / w / "metrics.csv").drop(columns="time_s"))
        assert b["status"] == "completed" and not (d / "checkpoint.pt").exists()
    mtimes = [(d / "summary.json").stat().st_mtime_ns for d in dirs]
    again = run_group(cfgs, dirs, [[], []])  # finished members are skipped, nothing rewritten
    assert [(d / "summary.json").stat().st_mtime_ns for d in dirs] == mtimes and again[0]["status"] == "completed"


def test_what_does_not_fuse_says_why():
    from expkit.runner import not_fusible

    assert not_fusible(validate(compose_cfg([]))) is None
    assert not_fusible(validate(compose_cfg(["trainer.compile=true"]))) is None  # a fused group compiles as one step
    assert "fp16-mixed" in not_fusible(validate(compose_cfg(["trainer.precision=fp16-mixed"])))
    assert "estimator" in not_fusible(validate(compose_cfg(["model=xgboost"])))
