"""trainer.compile=true: same results as eager, and every compile happens in the first epoch
(a short last batch, other eval batch sizes and train/eval switches never recompile later)."""
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import compose_cfg
from expkit.config import validate
from expkit.data import load
from expkit.models import MODELS, build
from expkit.trainers import torch as trainer

DONE = trainer.Progress.done  # called once per epoch


def fit_counting_graphs(overrides, tmp_path, monkeypatch):
    """Train; return (rows, number of compiled graphs at the end of each epoch)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    graphs = []

    def count(self, *args):
        graphs.append(counters["stats"]["unique_graphs"])
        DONE(self, *args)

    monkeypatch.setattr(trainer.Progress, "done", count)
    cfg = validate(compose_cfg(["trainer.checkpoint=false", *overrides]))
    splits = load(cfg.data)
    torch.manual_seed(cfg.seed)
    hist, = trainer.fit([trainer.Member(cfg, build(cfg.model, splits)[1], tmp_path)], splits, torch.device("cpu"))
    graphs.append(counters["stats"]["unique_graphs"])  # after the final test-set pass too
    return pd.DataFrame(hist.rows), graphs


def test_compiled_mlp_matches_eager_and_compiles_only_in_epoch_one(countries_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    # 450 train rows / batch 64 -> a last batch of 2; 112 val rows / eval batch 50 -> 50, 50, 12
    ov = [f"data.root={countries_root}", "trainer.epochs=3", "trainer.batch_size=64", "trainer.eval_batch_size=50",
          "model.batchnorm=true", "model.depth=2", "optim=sgd", "optim.lr=0.05"]
    eager, none = fit_counting_graphs(ov, tmp_path, monkeypatch)
    compiled, graphs = fit_counting_graphs(ov + ["trainer.compile=true"], tmp_path, monkeypatch)
    assert none == [0, 0, 0, 0]
    assert graphs == [2] * 4, graphs  # train + no-grad eval; dynamic=None would add a static first graph
    # inductor fuses ops: float rounding differs slightly from eager
    for c in ("train_loss", "val_loss", "test_loss"):
        np.testing.assert_allclose(compiled[c], eager[c], rtol=1e-3, err_msg=c)


@pytest.mark.skipif("cnn" not in MODELS, reason="model=cnn not registered")
def test_compiled_cnn_compiles_only_in_epoch_one(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    # 184 train images / batch 64 -> last batch 56; 23 val / eval batch 20 -> 20, 3
    ov = ["data=synth_edges", "data.n=230", "model=cnn", "model.convs=[{filters: 4, kernel: 5, pool: 2}]",
          "trainer.epochs=2", "trainer.batch_size=64", "trainer.eval_batch_size=20", "trainer.compile=true"]
    rows, graphs = fit_counting_graphs(ov, tmp_path, monkeypatch)
    assert len(rows) == 2 and graphs[0] >= 1 and graphs == [graphs[0]] * 3, graphs
