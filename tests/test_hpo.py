"""HPO: the Optuna preset searches lr/width on the jobs' best val accuracy and survives failed trials."""
import pandas as pd
import pytest
import yaml

from conftest import run_cli, write_countries


def test_optuna_search_tolerates_a_failed_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[hpo]'")
    data = write_countries(tmp_path / "d", n=200)
    sweep = tmp_path / "s"
    # one good and one invalid learning rate (the seeded sampler draws both): bad trials fail, the search goes on
    r = run_cli("-m", "experiment=hpo/mlp_lr_width", "hydra.sweeper.n_trials=4",
                "hydra.sweeper.n_jobs=1", "optim.lr=choice(0.01,-1.0)",
                "model.width=choice(8)", "trainer.epochs=2", f"data.root={data}",
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 4 and set(table.status) == {"completed", "failed"}
    failed = table[table.status == "failed"]
    assert (failed["optim.lr"] == -1.0).all() and failed.error.str.contains("optim.lr must be > 0").all()
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    ok = table[table.status == "completed"].iloc[0]
    assert best["best_params"]["optim.lr"] == 0.01 and best["best_value"] == pytest.approx(ok.best_val_acc)


def test_optuna_preset_declares_the_search_space():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[hpo]'")
    from hydra import compose, initialize_config_dir

    from conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", ["experiment=hpo/mlp_lr_width"], return_hydra_config=True)
    sw = cfg.hydra.sweeper
    assert "Optuna" in sw._target_ and sw.direction == "maximize" and sw.max_failure_rate == 1.0
    assert "log" in sw.params["optim.lr"] and "choice" in sw.params["model.width"]
