"""Sweep tables: one row per job (swept keys, status, metrics) -> results.csv and results.md;
when the jobs differ in seed, also one row per configuration (mean ± std over seeds) ->
results_by_config.csv and results_by_config.md.

Works on any directory of runs: a sweep dir (numbered job dirs), a single run dir, or several
sweeps merged: `python -m expkit.report DIR [DIR ...] [--out DIR]`.

The helpers the plots share (swept_keys, config_groups, pm, to_markdown, ...) live in tables.py and
are importable from here too. Nothing here imports the plotting code at import time: build_report
draws through kinds.draw, imported when it runs.
"""
import json
import logging
from pathlib import Path

import pandas as pd
import yaml

from expkit.cache import atomic_write
from expkit.config import by_value, identity, settled
from expkit.report.tables import (  # noqa: F401  (swept_keys, pm, to_markdown, ...: importable from here too)
    OK, PARALLEL, SEED, _finite, _mean_std, config_groups, config_keys, pm, seed_varies, swept_keys, to_markdown)

log = logging.getLogger(__name__)
METRICS = ["train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss"]


def job_dirs(root: Path):
    """Run dirs under root (a run dir itself counts; a sweep's jobs at the depth its hydra.sweep.subdir
    gives them: session.job_pattern), in job order."""
    from expkit.session import job_pattern

    root = Path(root)
    if (root / ".hydra").is_dir() or (root / "summary.json").exists():
        return [root]
    at = job_pattern(root)
    dirs = [p.parent for p in root.glob(f"{at}/.hydra")] + [p.parent for p in root.glob(f"{at}/summary.json")]
    return sorted(set(dirs), key=lambda p: [(0, int(x), "") if x.isdigit() else (1, 0, x)
                                            for x in p.relative_to(root).parts])


def _overrides(d: Path, summary=None):
    """{key: override text} of a job (Hydra's record, else summary.json's), keys without +/~."""
    f = d / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(f.read_text()) if f.exists() else []
    if not items and summary:
        items = summary.get("overrides", [])
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = value
    return out


def _summary(d: Path):
    if not (d / "summary.json").exists():
        return {}
    try:
        return json.loads((d / "summary.json").read_text())
    except ValueError:
        return {"status": "failed", "error": "unreadable summary.json"}


def _config(d: Path, summary):
    """The job's config as saved: Hydra's composed .hydra/config.yaml (written before it ran), else
    summary.json's validated config, else config.yaml; {} without any."""
    f = d / ".hydra" / "config.yaml"
    if f.exists():
        return yaml.safe_load(f.read_text()) or {}
    if summary.get("config"):
        return summary["config"]
    f = d / "config.yaml"
    return (yaml.safe_load(f.read_text()) or {}) if f.exists() else {}


def _row(d: Path, root: Path, s):
    row = {"job": str(d.relative_to(root)) if d != root else d.name}
    row["status"] = s.get("status", "unfinished")
    final = s.get("final", {})
    for m in METRICS:
        row[m] = final.get(m)
    best = s.get("best", {})
    row["best_val_acc"], row["best_epoch"] = best.get("val_acc"), best.get("epoch")
    row["best_test_acc"] = best.get("test_acc")  # test accuracy at the epoch of best val accuracy
    for k in ("epochs_run", "iterations_per_epoch", "wall_time_s", "n_params"):
        row[k] = s.get(k)
    for k, v in s.get("report_columns", {}).items():
        row[k] = v
    row["error"] = s.get("error", "")
    return row


class JobConfig:
    """What the table knows of one job's configuration: its config by value (validated, defaults
    filled in, when it validates), its identity without seed (expkit.config.identity, the sweeper's
    notion of the same config), and its overrides (the keys the user swept)."""

    def __init__(self, d: Path, summary):
        self.dir = d
        self.overrides = _overrides(d, summary)
        stamp = tuple((f.name, st.st_mtime_ns, st.st_size) for f in (d / ".hydra" / "config.yaml", d / "summary.json",
                                                                    d / "config.yaml") if (st := _stat(f)))
        if _SETTLED.get(d) is None or _SETTLED[d][0] != stamp:  # a sweep re-reads its table after every job
            config, valid = settled(_config(d, summary))
            _SETTLED[d] = (stamp, config, valid, identity(None, seed=False, settled_cfg=(config, valid)))
        _, self.config, self.valid, self.identity = _SETTLED[d]
        if not self.valid:  # a partial or unreadable config: the overrides it lacks still tell configs apart
            extra = {k: _parsed(v) for k, v in self.overrides.items() if _at(self.config, k) is _MISSING}
            self.identity += json.dumps(by_value(extra), sort_keys=True, default=str)
        self._choices = None

    def values(self):
        """{dotted key: value} of the job's config leaves; a partial config: its overrides' values too."""
        out = leaves(self.config)
        if not self.valid:
            out.update({k: _parsed(v) for k, v in self.overrides.items() if k not in out and "." in k})
        return out

    def value(self, key):
        """The job's value of a swept key, by value: from its config; a group's choice (model=cnn,
        experiment=ex4/lr) by its name; else the override's text parsed; _MISSING without one."""
        node = _at(self.config, key)
        if node is not _MISSING and not ("." not in key and isinstance(node, dict)):
            return node
        if node is not _MISSING or "." not in key:  # a config group: its option's name
            if key in self.overrides:
                return self.overrides[key]
            return self.choices().get(key, _MISSING)
        return _parsed(self.overrides[key]) if key in self.overrides else _MISSING

    def choices(self):
        if self._choices is None:
            f = self.dir / ".hydra" / "hydra.yaml"
            try:
                found = ((yaml.safe_load(f.read_text()) or {}).get("hydra", {}).get("runtime", {})
                         .get("choices") or {}) if f.exists() else {}
            except yaml.YAMLError:
                found = {}
            self._choices = {k: v for k, v in found.items() if v is not None and not k.startswith("hydra")}
        return self._choices


_MISSING = object()
_SETTLED = {}  # job dir -> (its config files' stamps, config, valid, identity): validated once per change


def _stat(f: Path):
    try:
        return f.stat()
    except OSError:
        return None


def _at(tree, key):
    """The node at a dotted key of plain data, or _MISSING."""
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def leaves(tree, prefix=""):
    """{dotted key: value} of every leaf (lists are leaves) of plain data, in order."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _parsed(text):
    """An override's text as a value (a job whose config lacks the key): '1' and '1.0' are one value."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v)  # YAML 1.1 reads 1e-3 as text
        except ValueError:
            return v
    return v


def _same(v):
    """A value's key for comparing by value, a missing one included as its own value."""
    return "<missing>" if v is _MISSING else json.dumps(by_value(v), sort_keys=True, default=str)


def _shown(v):
    """A value as the table holds it: lists and dicts as compact text, a missing one as None."""
    if v is _MISSING:
        return None
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return v


def varying_keys(jobs):
    """The keys a table shows, in order: the swept keys (overridden in some job) whose values differ
    by value (a missing value counted as one), the seed if it differs, then the config keys needed so
    that no two configurations (identities without seed) share a row's values."""
    candidates = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    if SEED not in candidates:
        candidates.append(SEED)
    keys = [k for k in candidates if len({_same(j.value(k)) for j in jobs}) > 1]

    def clashes(keys):
        seen = {}
        for j in jobs:
            seen.setdefault(tuple(_same(j.value(k)) for k in keys if k != SEED), set()).add(j.identity)
        return [ids for ids in seen.values() if len(ids) > 1]

    if clashes(keys):  # e.g. a preset edited between two runs into one dir: show what differs
        flat = [leaves(j.config) for j in jobs]
        extra = list(dict.fromkeys(k for lv in flat for k in lv))
        keys += [k for k in extra if k not in keys and k != SEED
                 and len({_same(lv.get(k, _MISSING)) for lv in flat}) > 1]
    return keys


def collect(roots):
    """The results table over one or more run/sweep dirs: one row per job. The swept keys come
    first, by value (from each job's config: optim.lr=1 and optim.lr=1.0 show 1.0; a job without a
    seed= override shows the seed it ran), only those that differ between jobs (with one job,
    nothing was swept), plus any config key needed to tell two configurations apart."""
    rows, jobs = [], []
    for root in roots:
        root = Path(root)
        for d in job_dirs(root):
            s = _summary(d)
            r = _row(d, root, s)
            if len(roots) > 1:
                r["sweep"] = str(root)
            rows.append(r)
            jobs.append(JobConfig(d, s))
    if not rows:
        return pd.DataFrame()
    keys = varying_keys(jobs)
    lead = (["sweep"] if len(roots) > 1 else []) + ["job"]
    table = []
    for r, j in zip(rows, jobs):
        head = {k: r[k] for k in lead}
        head.update({k: _shown(j.value(k)) for k in keys})
        table.append({**head, **{k: v for k, v in r.items() if k not in lead}})
    df = pd.DataFrame(table)
    df = df[lead + keys + [c for c in df.columns if c not in lead + keys]]  # keys first, even all-missing
    metrics = [c for c in df.columns if c not in lead + keys]
    df = df.drop(columns=[c for c in metrics if df[c].isna().all()])
    if "error" in df and not df.error.astype(bool).any():
        df = df.drop(columns="error")
    return df


# ---- results over seeds: one row per configuration = per combination of the swept keys but seed ----

AGG = METRICS + ["best_val_acc", "best_test_acc", "wall_time_s"]


def _summaries(df):
    """Per configuration: its key values, counts, seeds and each metric's finite values over its seeds."""
    keys = config_keys(df)
    for _, idx in config_groups(df, keys):
        g = df.loc[idx]
        ok = g[g.status.isin(OK)]
        pruned = int((g.status == "pruned").sum())
        yield {
            "keys": {k: g[k].iloc[0] for k in keys},
            "n": len(ok),
            "seeds": ",".join("-" if s != s or s is None else str(by_value(s)) for s in ok[SEED]),
            "counts": {"diverged": int((g.status == "diverged").sum()), "pruned": pruned,
                       "failed": len(g) - len(ok) - pruned},
            "values": {m: _finite(ok[m]) for m in AGG if m in g},
        }


def _counts(summaries):
    """The count columns of results_by_config: diverged, pruned (only when a job was), failed."""
    pruned = any(s["counts"]["pruned"] for s in summaries)
    return [c for c in ("diverged", "pruned", "failed") if c != "pruned" or pruned]


def by_config(df):
    """results_by_config: one row per configuration with n (seeds with a result), the seeds, diverged
    and failed counts, and <metric>_mean / <metric>_std over its seeds (non-finite values left out).
    None when the jobs do not differ in seed."""
    if not seed_varies(df):
        return None
    rows, summaries = [], list(_summaries(df))
    for s in summaries:
        r = dict(s["keys"], n=s["n"], seeds=s["seeds"], **{c: s["counts"][c] for c in _counts(summaries)})
        for m, v in s["values"].items():
            r[f"{m}_mean"], r[f"{m}_std"] = _mean_std(v)
        rows.append(r)
    out = pd.DataFrame(rows)
    empty = [m for m in AGG if f"{m}_mean" in out and out[f"{m}_mean"].isna().all()]
    return out.drop(columns=[f"{m}_{x}" for m in empty for x in ("mean", "std")])


def by_config_markdown(df):
    """The .md of results_by_config: mean ± std strings; '(k/n)' where only k of the n seeds had a value."""
    table = by_config(df)
    rows, summaries = [], list(_summaries(df))
    for s in summaries:
        r = dict(s["keys"], n=s["n"], seeds=s["seeds"], **{c: s["counts"][c] for c in _counts(summaries)})
        for m, v in s["values"].items():
            if f"{m}_mean" in table:
                r[m] = pm(*_mean_std(v)) + (f" ({len(v)}/{s['n']})" if 0 < len(v) < s["n"] else "")
        rows.append(r)
    t = pd.DataFrame(rows)
    if not t.diverged.any():
        t = t.drop(columns="diverged")
    head = ("Mean ± sample std (ddof 1) over seeds, per configuration (the swept keys but seed). "
            "n: seeds with a result (completed or diverged); pruned (an Optuna trial stopped early) and "
            "failed (failed, skipped, unfinished): jobs without one, left out of the means; (k/n): only k "
            "seeds had a finite value.\n\n")
    return head + to_markdown(t.astype(object))


def write_table(root, roots=None, out=None):
    out = Path(out or root)
    df = collect(roots or [root])
    if df.empty:
        return df
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    md = to_markdown(df)
    if "status" in df and (df.status == "pruned").any():  # where the pruned jobs stopped, and what it saved
        counts = member_epochs(roots or [root])
        md += f"\n{member_epochs_line(counts)} (epochs_run: where each job stopped)\n" if counts else ""
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(md))
    if seed_varies(df):
        table, md = by_config(df), by_config_markdown(df)
        atomic_write(out / "results_by_config.csv", lambda tmp: table.to_csv(tmp, index=False))
        atomic_write(out / "results_by_config.md", lambda tmp: tmp.write_text(md))
    else:  # a rebuilt table without several seeds: no stale per-config table beside it
        for f in ("results_by_config.csv", "results_by_config.md"):
            (out / f).unlink(missing_ok=True)
    return df


def member_epochs(roots):
    """(epochs trained, epochs the full grid trains, {epochs run: pruned jobs}) over the jobs of one or
    more sweep dirs: each job's epochs_run against its trainer.epochs. None without such a job."""
    trained = full = 0
    stopped = {}
    for root in [roots] if isinstance(roots, (str, Path)) else roots:
        for d in job_dirs(Path(root)):
            s = _summary(d)
            planned = JobConfig(d, s).value("trainer.epochs")
            if not isinstance(planned, (int, float)) or isinstance(planned, bool):
                continue
            ran = int(s.get("epochs_run") or 0)
            full += int(planned)
            trained += ran
            if s.get("status") == "pruned":
                stopped[ran] = stopped.get(ran, 0) + 1
    return (trained, full, dict(sorted(stopped.items()))) if full else None


def member_epochs_line(counts):
    """'member-epochs trained: 63 of the full grid's 243 (26%); pruned: 18 after epoch 1, 6 after epoch 3'."""
    trained, full, stopped = counts
    where = ", ".join(f"{n} after epoch {e}" for e, n in stopped.items())
    return (f"member-epochs trained: {trained} of the full grid's {full} ({trained / full:.0%})"
            + (f"; pruned: {where}" if where else ""))


def plots_config(root: Path):
    """The preset's report.plots, as saved by Hydra with the sweep (multirun.yaml) or the run."""
    for f in (root / "multirun.yaml", root / ".hydra" / "config.yaml", root / "config.yaml"):
        if f.exists():
            cfg = yaml.safe_load(f.read_text()) or {}
            return (cfg.get("report") or {}).get("plots") or []
    return []


def study_name(roots):
    """The study's `name` (the preset's), from the sweep's multirun.yaml or the run's config; merged
    sweeps of different studies: their names joined by ' + '."""
    names = []
    for root in roots:
        root = Path(root)
        for f in (root / "multirun.yaml", root / ".hydra" / "config.yaml", root / "config.yaml"):
            if f.exists():
                name = (yaml.safe_load(f.read_text()) or {}).get("name")
                if name:
                    names.append(str(name))
                break
    return " + ".join(dict.fromkeys(names)) or None


def build_report(root, roots=None, out=None, plots=None, study=None):
    """Table (+ results_by_config when seeds vary) + the preset's plots for a sweep (or merged
    sweeps), and parallel coordinates when the jobs differ in two or more keys (the seed aside);
    plots given (a list, [] for none) replace both. Plot titles name the study (`name` of the
    sweep's config unless given). Returns the table."""
    from expkit.report.kinds import draw  # here, not at the top: the tables never load the plotting code

    root = Path(root)
    out = Path(out or root)
    df = write_table(root, roots, out)
    specs = list(plots if plots is not None else plots_config(root))
    if plots is None and len(df) and len(config_keys(df)) >= 2 and PARALLEL not in [dict(s).get("kind") for s in specs]:
        specs.append({"kind": PARALLEL})  # every sweep that varies two or more keys: parallel coordinates
    if len(df) and specs:
        roots = [Path(r) for r in (roots or [root])]
        study = study or study_name(roots)
        dirs = {(str(r) if len(roots) > 1 else None, str(d.relative_to(r)) if d != r else d.name): d
                for r in roots for d in job_dirs(r)}
        paths = [dirs[(row.get("sweep"), row["job"])] for row in df.to_dict("records")]
        for spec in specs:
            try:
                draw(spec, df, paths, out, study=study)
            except Exception as ex:  # one bad plot must not lose the table or the other plots
                log.warning("plot %s failed: %s: %s", spec, type(ex).__name__, ex)
    return df
