"""trainer.compile=true compiles the whole step (forward, loss, backward, optimizer update) as one
graph per stack: equal to eager up to rounding (inductor fuses ops: losses within 1e-3), for one
member and for a fused group, Adam and SGD with momentum, MLP with BatchNorm and CNN; no fallback
to eager; one more graph when a member leaves (another K), none for the short last batch or the
evaluation (eager). Each compile takes seconds to a minute on a cold inductor cache: slow tests."""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg, load_for
from expkit.config import validate
from expkit.models import build
from expkit.trainers import torch as trainer

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def fit(overrides, seeds, tmp_path, callbacks=None):
    cfgs = [validate(compose_cfg(["trainer.checkpoint=false", *overrides, f"seed={s}"])) for s in seeds]
    splits = load_for(cfgs[0])
    members = []
    for k, c in enumerate(cfgs):
        torch.manual_seed(c.seed)
        (tmp_path / f"m{k}").mkdir(parents=True, exist_ok=True)
        members.append(trainer.Member(c, build(c.model, splits)[1], tmp_path / f"m{k}",
                                      callbacks=(callbacks or {}).get(k, [])))
    torch._dynamo.reset()
    return trainer.fit(members, splits, torch.device("cpu"))


def close(compiled, eager):
    a, b = pd.DataFrame(compiled.rows), pd.DataFrame(eager.rows)
    assert len(a) == len(b)
    for c in ("train_loss", "val_loss", "test_loss"):
        np.testing.assert_allclose(a[c], b[c], rtol=1e-3, atol=1e-4, err_msg=c)


MLP = ["model.batchnorm=true", "model.depth=2", "trainer.epochs=3", "trainer.batch_size=64"]


@pytest.mark.parametrize("optim", [["optim.lr=0.01", "optim.weight_decay=0.001"],
                                   ["optim=sgd", "optim.lr=0.05", "optim.momentum=0.9"]])
def test_compiled_step_equals_eager_for_one_member_and_a_fused_group(optim, countries_root, tmp_path):
    ov = [f"data.root={countries_root}", *MLP, *optim]  # 450 rows / batch 64: a short last batch of 2
    for seeds in ([1], [1, 2]):
        compiled = fit(ov + ["trainer.compile=true"], seeds, tmp_path)
        eager = fit(ov, seeds, tmp_path)
        for c, e in zip(compiled, eager):
            close(c, e)
            info = c.extras["compile"]
            assert info["graphs"] == 1 and info["fallback"] is None and info["eager"] is None, info
            assert info["compile_s"] > 0 and info["last_batch"] and info["call"] == "direct"
            assert info["cuda_graphs"] is False  # the CPU
            assert "compile" not in e.extras
        assert compiled[0].rows[-1]["train_loss"] != eager[0].rows[0]["train_loss"]  # it trained


def test_a_member_leaving_compiles_once_more_and_the_survivor_equals_eager(countries_root, tmp_path):
    ov = [f"data.root={countries_root}", *MLP, "optim.lr=0.01"]
    leave = {0: [lambda row: "pruned" if row["epoch"] == 1 else None]}
    compiled = fit(ov + ["trainer.compile=true"], [1, 2], tmp_path, leave)
    eager = fit(ov, [1, 2], tmp_path, leave)
    assert len(compiled[0].rows) == 1 and len(compiled[1].rows) == 3
    for c, e in zip(compiled, eager):
        close(c, e)
    assert compiled[1].extras["compile"]["graphs"] == 2  # K = 2, then K = 1


def test_compiled_cnn_equals_eager(tmp_path):
    ov = ["data=synth_edges", "data.n=230", "model=cnn", "model.convs=[{filters: 4, kernel: 5, pool: 2}]",
          "trainer.epochs=2", "trainer.batch_size=64", "optim.lr=0.003"]
    compiled, = fit(ov + ["trainer.compile=true"], [1], tmp_path)
    eager, = fit(ov, [1], tmp_path)
    close(compiled, eager)
    assert compiled.extras["compile"]["graphs"] == 1 and compiled.extras["compile"]["fallback"] is None


def test_the_direct_call_is_dynamos_compiled_code_bit_for_bit(countries_root):
    """After its first call a CompiledStep runs Dynamo's compiled code directly (no frame hook, no guards): the
    same parameters, optimizer state and BatchNorm statistics, to the bit, as calling it through Dynamo, and no
    graph compiled again."""
    import torch._dynamo.utils

    from expkit.trainers.compiled import CompiledStep
    from expkit.trainers.stacked import Stack

    cfg = validate(compose_cfg([f"data.root={countries_root}", *MLP, "optim.lr=0.01", "seed=1"]))
    splits = load_for(cfg)
    x, y = torch.as_tensor(splits.train.x[:64]), torch.as_tensor(splits.train.y[:64])
    runs, steps = [], []
    torch._dynamo.reset()
    for _ in range(2):
        torch.manual_seed(1)
        run = Stack([trainer.Member(cfg, build(cfg.model, splits)[1], None)], torch.device("cpu"))
        run.net.train()
        runs.append(run)
        steps.append(CompiledStep(run, trainer.loss_and_hits, {}))
    direct, dynamo = steps
    init = runs[0].flat.clone()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for i in range(20):
        xb, yb = x[None].roll(i, 1), y[None].roll(i, 1)
        direct(xb, yb)
        if dynamo.call is None:
            dynamo(xb, yb)
        else:
            run = dynamo.run
            run.t += 1
            dynamo.t.fill_(run.t)
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                dynamo.fn(run.flat, run.state, dynamo.buffers, xb, yb, dynamo.t)
    assert direct.stats["call"] == "direct" and direct.call.__code__ is not direct.own.__code__
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 2  # one per stack, none again
    a, b = runs
    assert torch.equal(a.flat, b.flat) and all(torch.equal(s, t) for s, t in zip(a.state, b.state))
    assert all(torch.equal(direct.buffers[n], dynamo.buffers[n]) for n in direct.buffers)
    assert torch.equal(init, b.flat) is False and (a.flat - init).abs().max() > 1e-3  # it trained


def test_the_cuda_graph_path_runs_on_the_cpu_to_the_same_bits(countries_root):
    """cuda_graphs=True (what CUDA gets: static inputs, mode reduce-overhead, a step mark per call) on the CPU,
    where inductor skips the CUDA graph: the same parameters and BatchNorm statistics as the plain compiled step.
    Whether the graph pays on a GPU is scripts/gpu_check.sh's (path compile)."""
    from expkit.trainers.compiled import CompiledStep
    from expkit.trainers.stacked import Stack

    cfg = validate(compose_cfg([f"data.root={countries_root}", *MLP, "optim.lr=0.01", "seed=1"]))
    splits = load_for(cfg)
    x, y = torch.as_tensor(splits.train.x[:64]), torch.as_tensor(splits.train.y[:64])
    torch._dynamo.reset()
    steps = []
    for graphs in (True, False):
        torch.manual_seed(1)
        run = Stack([trainer.Member(cfg, build(cfg.model, splits)[1], None)], torch.device("cpu"))
        run.net.train()
        steps.append(CompiledStep(run, trainer.loss_and_hits, {}, cuda_graphs=graphs))
    for i in range(10):
        outs = [s(x[None].roll(i, 1), y[None].roll(i, 1)) for s in steps]
        assert all(torch.equal(a, b) for a, b in zip(*outs))
    g, plain = steps
    assert g.stats["cuda_graphs"] is True and plain.stats["cuda_graphs"] is False
    assert torch.equal(g.run.flat, plain.run.flat) and all(torch.equal(g.buffers[n], plain.buffers[n]) for n in g.buffers)


def test_a_compiled_group_preempted_mid_epoch_resumes_to_the_same_bits(countries_root, tmp_path, monkeypatch):
    """A compiled fused group asked to stop in epoch 2 (a scheduler's SIGTERM) checkpoints mid-epoch; run again it
    compiles again and ends bit-equal to the uninterrupted compiled group: losses, accuracies, every step's loss."""
    import signal

    from expkit import preempt

    ov = [f"data.root={countries_root}", *MLP, "optim.lr=0.01", "trainer.compile=true", "trainer.checkpoint=true",
          "trainer.checkpoint_every_s=3600", "trainer.record_steps=true"]
    ref = fit(ov, [1, 2], tmp_path / "ref")
    calls = {"n": 0}

    def requested():  # 10 steps an epoch: the 14th check is before epoch 2's step 3 (0-based)
        calls["n"] += 1
        if calls["n"] == 14:
            preempt._state["signal"] = signal.SIGTERM
        return preempt._state["signal"] is not None

    monkeypatch.setattr(preempt, "requested", requested)
    with pytest.raises(preempt.Preempted, match="checkpoint in epoch 2 at step 3/10"):
        fit(ov, [1, 2], tmp_path / "run")
    monkeypatch.undo()
    state = torch.load(tmp_path / "run" / "m0" / "checkpoint.pt", weights_only=False)
    assert state["partial"]["step"] == 3 and len(state["rows"]) == 1
    resumed = fit(ov, [1, 2], tmp_path / "run")
    for r, h in zip(resumed, ref):
        a, b = pd.DataFrame(r.rows).drop(columns="time_s"), pd.DataFrame(h.rows).drop(columns="time_s")
        pd.testing.assert_frame_equal(a, b)
        np.testing.assert_array_equal(r.steps, h.steps)
        assert r.extras["compile"]["graphs"] == 1


@pytest.mark.parametrize("case", ["early_stop", "diverge"])
def test_compiled_runs_stop_early_and_diverge_as_eager_runs_do(case, countries_root, tmp_path):
    ov = [f"data.root={countries_root}", *MLP] + (
        ["optim.lr=0.01", "trainer.early_stop.patience=1", "trainer.early_stop.min_delta=1"] if case == "early_stop"
        else ["model.batchnorm=false", "optim=sgd", "optim.lr=1e6", "optim.momentum=0.9"])
    compiled, = fit(ov + ["trainer.compile=true"], [1], tmp_path / "c")
    eager, = fit(ov, [1], tmp_path / "e")
    assert compiled.extras["compile"]["graphs"] == 1
    assert len(compiled.rows) == len(eager.rows) < 3
    assert (compiled.stopped_early, compiled.diverged) == (eager.stopped_early, eager.diverged) == (
        (True, False) if case == "early_stop" else (False, True))


def test_recording_gradient_norms_keeps_the_eager_step_and_says_why(countries_root, tmp_path):
    h, = fit([f"data.root={countries_root}", *MLP, "trainer.compile=true", "trainer.grad_layers=[0]"], [1], tmp_path)
    assert h.extras["compile"]["graphs"] == 0 and "grad_layers" in h.extras["compile"]["eager"]


def test_auto_decides_by_the_expected_gain_against_the_compile_cost():
    from expkit.trainers.compiled import COMPILE_S, auto_decision

    ok, why = auto_decision(0.001, 20_000, warm=True, compiler=True)  # 50 epochs of P1: ~13 s saved > ~8 s warm
    assert ok and "warm" in why and ">" in why
    assert not auto_decision(0.001, 20_000, warm=False, compiler=True)[0]  # < ~30 s cold
    assert not auto_decision(0.001, 2_000, warm=True, compiler=True)[0]  # 5 epochs: not worth it
    assert not auto_decision(1.0, 10 ** 6, warm=True, compiler=False)[0]
    assert auto_decision(0.001, 10 ** 6, warm=False, compiler=True)[0] and COMPILE_S["cold"] > COMPILE_S["warm"]


def test_auto_trains_its_first_epoch_eager_then_compiles_when_it_pays(countries_root, tmp_path, monkeypatch):
    """A short run stays eager and says why; with compiling free (monkeypatched cost) it compiles from the
    second epoch on: one graph, the same losses as eager up to rounding."""
    from expkit.trainers import compiled

    ov = [f"data.root={countries_root}", *MLP, "optim.lr=0.01"]
    eager = fit(ov, [1], tmp_path)
    short = fit(ov + ["trainer.compile=auto"], [1], tmp_path)
    info = short[0].extras["compile"]
    assert info["auto"]["compile"] is False and "to compile" in info["auto"]["why"] and info["graphs"] == 0
    assert [r["train_loss"] for r in short[0].rows] == [r["train_loss"] for r in eager[0].rows]  # eager throughout
    monkeypatch.setattr(compiled, "COMPILE_S", {"warm": 0.0, "cold": 0.0})
    paid = fit(ov + ["trainer.compile=auto"], [1], tmp_path)
    info = paid[0].extras["compile"]
    assert info["auto"]["compile"] is True and info["graphs"] == 1 and info["fallback"] is None, info
    assert paid[0].rows[0]["train_loss"] == eager[0].rows[0]["train_loss"]  # epoch 1 eager
    close(paid[0], eager[0])


def test_compile_accepts_true_false_auto_only(countries_root):
    from expkit.errors import UserError

    with pytest.raises(UserError, match="trainer.compile must be true, false or auto"):
        validate(compose_cfg(["trainer.compile=maybe"]))
    assert validate(compose_cfg(["trainer.compile=auto"])).trainer.compile == "auto"
    assert validate(compose_cfg([])).trainer.compile is False  # the default: finished jobs keep their identity
