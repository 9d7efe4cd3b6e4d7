"""Data and model options take their keys, types and defaults from one place, expkit/schemas.py:
each conf/data and conf/model YAML starts from its schema (base_data_<name> / base_model_<name>)
and sets only what differs, so a wrong type or an unknown key fails when Hydra composes the config."""
import dataclasses
import importlib
import shutil
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT, compose_cfg, run_cli
from expkit.schemas import DATA_SCHEMAS, MODEL_SCHEMAS

SCHEMAS = {"data": DATA_SCHEMAS, "model": MODEL_SCHEMAS}
OPTIONS = [(group, str(p.relative_to(ROOT / "conf" / group).with_suffix("")))
           for group in SCHEMAS for p in sorted((ROOT / "conf" / group).rglob("*.yaml"))]


def _schema_of(group, node):
    return SCHEMAS[group][node.name]


def _compose_error(overrides, conf=ROOT / "conf"):
    """The exception composing `overrides` raises (the test fails if it composes)."""
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        with pytest.raises(Exception) as info:
            compose(config_name="config", overrides=list(overrides))
    return info.value


def _messages(ex):
    out = []
    while ex is not None:
        out.append(str(ex))
        ex = ex.__cause__ or ex.__context__
    return " | ".join(out)


@pytest.mark.parametrize("overrides,key", [
    (["model.width=abc"], "width"),
    (["model.hidden=[64,abc]"], "hidden"),
    (["model=cnn", "model.convs.0.filters=abc"], "filters"),
    (["model=resnet18", "model.feature_cache=maybe"], "feature_cache"),
    (["data.val_size=abc", "data=mnist"], "val_size"),
    (["data=points2d", "data.noise=loud"], "noise"),
    (["data=cifar10", "data.augment=abc"], "augment"),
    (["experiment=hw6/mnist_sizes", "data.test_size=abc"], "test_size"),
])
def test_a_wrong_type_fails_at_composition(overrides, key):
    msg = _messages(_compose_error(overrides))
    assert key in msg and ("could not be converted" in msg or "is not a valid" in msg), msg


@pytest.mark.parametrize("overrides", [["model.widht=8"], ["model=xgboost", "model.mode=finetune"], ["data.nosie=1"]])
def test_an_unknown_key_fails_at_composition(overrides):
    assert "Could not override" in _messages(_compose_error(overrides))


def test_a_yaml_typo_fails_at_composition(tmp_path):
    """A model file with a misspelt or mistyped key fails when it is composed, not when it runs."""
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    head = "defaults:\n  - base_model_mlp\n  - _self_\n"
    (conf / "model" / "typo.yaml").write_text(head + "widht: 8\n")
    (conf / "model" / "badtype.yaml").write_text(head + "depth: six\n")
    assert "widht" in _messages(_compose_error(["model=typo"], conf))
    assert "could not be converted" in _messages(_compose_error(["model=badtype"], conf))


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_option_starts_from_its_schema_and_sets_only_what_differs(group, option):
    path = ROOT / "conf" / group / f"{option}.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path))
    node = compose_cfg([f"{group}={option}"])[group]
    schema = _schema_of(group, node)
    assert OmegaConf.get_type(node) is schema, f"{path} must start from its schema"
    assert raw.pop("defaults", None) == [f"base_{group}_{node.name}", "_self_"], path
    fields = {f.name for f in dataclasses.fields(schema)}
    assert set(node.keys()) <= fields and set(raw) <= fields, (sorted(set(node.keys()) - fields), sorted(raw))
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    repeated = sorted(k for k, v in raw.items() if v == defaults[k])
    assert not repeated, f"{path} repeats the default of {repeated} (the schema holds it: expkit/schemas.py)"


@pytest.mark.parametrize("group,option", OPTIONS)
def test_composition_gives_what_validate_checks(group, option):
    """Nothing is left for validate to fill in: the composed node is the whole typed config."""
    from expkit.config import validate

    cfg = compose_cfg([f"{group}={option}"])
    assert OmegaConf.to_container(validate(cfg)[group]) == OmegaConf.to_container(cfg[group])


def test_every_schema_is_registered_named_and_used():
    from expkit.data import DATASETS, data_schema
    from expkit.models import MODELS, model_schema

    assert set(DATA_SCHEMAS) == set(DATASETS) and set(MODEL_SCHEMAS) == set(MODELS)
    used = {(g, compose_cfg([f"{g}={o}"])[g].name) for g, o in OPTIONS}
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            assert schema().name == name, f"{schema.__name__}.name must default to its key {name!r}"
            assert (group, name) in used, f"no conf/{group}/*.yaml starts from base_{group}_{name}"
    for name, module in DATASETS.items():
        assert importlib.import_module(module).Conf is DATA_SCHEMAS[name] is data_schema(name)
    for name, (module, kind) in MODELS.items():
        mod = importlib.import_module(module)
        assert mod.Conf is MODEL_SCHEMAS[name] is model_schema(name)
        assert kind in ("torch", "estimator") and hasattr(mod, "build")


def test_the_schemas_import_no_heavy_library():
    """The command line reads the schemas before any job runs: no torch, numpy or matplotlib."""
    code = ("import sys, expkit.schemas, expkit.config; "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


@pytest.mark.parametrize("overrides,key", [
    (["model.width=abc"], "model.width"),
    (["data=mnist", "data.val_size=abc"], "data.val_size"),
    (["model=deep2d/w8", "model.hidden=[x]"], "model.hidden"),
])
def test_cfg_job_rejects_a_wrong_type_in_one_line(tmp_path, overrides, key):
    run_dir = tmp_path / "run"
    r = run_cli("--cfg", "job", *overrides, f"hydra.run.dir={run_dir}")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr + r.stdout and not run_dir.exists()


@pytest.mark.parametrize("group", ["model", "data", "trainer"])
def test_validate_rejects_a_key_added_with_plus(group):
    """`+model.foo=1` composes (Hydra may add keys with `+`), but no run starts with a key no schema declares."""
    from expkit.config import validate
    from expkit.errors import UserError

    with pytest.raises(UserError, match=rf"config {group}\.foo: Key 'foo' not in"):
        validate(compose_cfg([f"+{group}.foo=1"]))
