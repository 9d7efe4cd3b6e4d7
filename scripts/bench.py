"""expkit speed figures, each a ratio against a reference measured in this same run.

    python scripts/bench.py [--countries ../shared/data/countries] [--epochs 3] [--threads 1]
                            [--only P1 P2 ...] [--p4] [--ex4 [PRESET ...] [--fuse] [--jobs N]]

P1     `python train.py data.root=... model.batchnorm=true` (checkpointing on), s/epoch, vs the
       course-style loop (DataLoader, val + test every epoch, batch 1024)      target >= 5x faster
P1C    the same with trainer.compile=true (the whole step compiled): steady s/epoch, and a 50-epoch run's
       whole process (warm and cold inductor cache) vs the course loop's 50 epochs   target >= 8x; >= 4x
P2     K = 4 lrs fused vs one member; K = 16 seeds fused vs one member        target <= 1.3x; <= 2x
P2-CNN hw6/synth_kernels, 8 seeds fused vs one seed                           target <= 2.5x
P3     linear-probe lr sweep with the feature cache vs one run without (scripts/bench_probe.py)
P4     the user's sweep: ex4/depth_width, seeds 1-3, 5 epochs (21 jobs), fused groups on a 2-worker joblib
       launcher vs the basic launcher, whole sweeps; per-configuration mean val acc within 0.02
       (opt-in: --p4, minutes)                                                 target >= 2.5x
P4C    the same fused sweep with trainer.compile=true (with --p4), reported
EX4    all ex4 MLP presets at their epochs, wall time (opt-in: --ex4 [PRESET ...] [--fuse --jobs N])
P5     `python train.py --help` vs `python -c "import torch"`, whole process
P6     a 1-epoch countries run from the command line, whole process, vs `python -c "import torch"`
                                                                               target <= 2x
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
PRESETS = ["lr", "epochs", "batchnorm", "batch_size", "depth_width", "gradients", "gradients_fixed", "implicit"]


def cli(*args):
    """Wall seconds of one `python ARGS` in ROOT (a whole process, as a user pays it)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - t0


def p1(countries, epochs):
    import bench_mlp

    results, _, gap = bench_mlp.compare(countries, epochs)  # the course loop, in this process
    course = results["course"][0]
    with tempfile.TemporaryDirectory() as tmp:
        cli("train.py", f"data.root={countries}", "model.batchnorm=true", f"trainer.epochs={epochs}",
            f"hydra.run.dir={tmp}/r")
        s = json.loads(Path(f"{tmp}/r/summary.json").read_text())
    ours = s["time_per_epoch_s"]  # fit wall time / epochs: checkpoint writes included
    ratio = course / ours
    floor = model_floor(countries, s["iterations_per_epoch"])
    print(f"   ceiling: the model's own forward+backward for one epoch's {s['iterations_per_epoch']} steps (one fixed "
          f"batch, no optimizer, no data) {floor:.3f}s = {course / floor:.1f}x the course loop: no loop of this "
          f"eager model can be faster")
    return (f"P1 command line {ours:.3f} s/epoch vs course loop {course:.3f}: {ratio:.1f}x faster (target >= 5x; "
            f"ceiling {course / floor:.1f}x); test acc {s['final']['test_acc']:.4f}, course-loop gap {gap:.2f} points "
            f"[{epochs} epochs, 6x16+BN, batch 256, checkpointing on]", ratio >= 5)


def p1_compiled(countries, epochs):
    """P1 with the compiled step: steady epochs (cache warmed by a first run), then 50-epoch runs as whole
    processes with the cache warm and cold (a fresh TORCHINDUCTOR_CACHE_DIR), against the course loop. The
    course loop runs before and after them and the reference is its mean: this machine's pace drifts by up
    to ~40% within minutes, and a reference taken at one end alone moved the ratios with it."""
    import os

    import bench_mlp

    course_runs = [bench_mlp.compare(countries, epochs, only="course")["course"][0]]
    args = [f"data.root={countries}", "model.batchnorm=true", "trainer.compile=true"]
    with tempfile.TemporaryDirectory() as tmp:
        cli("train.py", *args, "trainer.epochs=2", f"hydra.run.dir={tmp}/warm")  # fills the inductor cache
        cli("train.py", *args, f"trainer.epochs={epochs}", f"hydra.run.dir={tmp}/r")
        s = json.loads(Path(f"{tmp}/r/summary.json").read_text())
        eager = cli("train.py", args[0], args[1], "trainer.epochs=50", f"hydra.run.dir={tmp}/e50")
        warm = cli("train.py", *args, "trainer.epochs=50", f"hydra.run.dir={tmp}/w50")
        acc = [json.loads(Path(f"{tmp}/{d}/summary.json").read_text())["final"]["val_acc"] for d in ("e50", "w50")]
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=f"{tmp}/cold_cache")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "train.py", *args, "trainer.epochs=50", f"hydra.run.dir={tmp}/c50"], cwd=ROOT,
                       env=env, capture_output=True, check=True)
        cold = time.perf_counter() - t0
        w50 = json.loads(Path(f"{tmp}/w50/summary.json").read_text())
    course_runs.append(bench_mlp.compare(countries, epochs, only="course")["course"][0])
    course = statistics.mean(course_runs)
    ours = s["time_per_epoch_s"]
    print(f"   course loop {course_runs[0]:.3f} s/epoch before, {course_runs[1]:.3f} after: reference {course:.3f}")
    print(f"   compiled: {ours:.3f} s/epoch (compile {s['compile']['compile_s']:.1f}s, {s['compile']['graphs']} graph, "
          f"warm cache); 50 epochs whole process: eager {eager:.1f}s, compiled warm {warm:.1f}s (of which compile "
          f"{w50['compile']['compile_s']:.1f}s, epochs {50 * w50['time_per_epoch_s']:.1f}s), cold {cold:.1f}s; course loop "
          f"50 epochs {50 * course:.1f}s; final val acc eager {acc[0]:.4f} compiled {acc[1]:.4f}")
    return [(f"P1C compiled step {ours:.3f} s/epoch = {course / ours:.1f}x the course loop's {course:.3f} (target >= 8x)",
             course / ours >= 8),
            (f"P1C 50 epochs, whole process: compiled warm {warm:.1f}s = {50 * course / warm:.1f}x, cold {cold:.1f}s = "
             f"{50 * course / cold:.1f}x the course loop's 50 epochs (target >= 4x warm); eager {eager:.1f}s; "
             f"val acc {acc[1]:.4f} vs eager {acc[0]:.4f}", 50 * course / warm >= 4 and abs(acc[0] - acc[1]) <= 0.02)]


def model_floor(countries, steps, batch=256):
    """Seconds of `steps` forward+backward passes of P1's model on one fixed batch: what the model
    itself costs in eager PyTorch, a lower bound for any training loop of it."""
    import torch
    import torch.nn.functional as F

    from conftest import compose_cfg
    from expkit.config import validate
    from expkit.data import load
    from expkit.models import build

    cfg = validate(compose_cfg([f"data.root={countries}", "model.batchnorm=true"]))
    splits = load(cfg.data)
    torch.manual_seed(0)
    net = build(cfg.model, splits)[1].train()
    x = torch.as_tensor(splits.train.x[:batch]).float()
    y = torch.as_tensor(splits.train.y[:batch]).long()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(steps):
            F.cross_entropy(net(x), y).backward()
        times.append(time.perf_counter() - t0)
    return min(times)


def fit_time(overrides, n_members, vary):
    """Seconds to train n_members (differing in `vary`: 'optim.lr' or 'seed') as one stack."""
    import torch

    from conftest import compose_cfg
    from expkit.config import validate
    from expkit.data import load
    from expkit.models import build
    from expkit.trainers import torch as trainer

    values = {"optim.lr": [1, 0.01, 0.001, 0.0001], "seed": list(range(1, 17))}[vary][:n_members]
    cfgs = [validate(compose_cfg([*overrides, f"{vary}={v}", "trainer.checkpoint=false"])) for v in values]
    splits = load(cfgs[0].data)
    members = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        members.append(trainer.Member(c, build(c.model, splits)[1], Path(tempfile.mkdtemp())))
    t0 = time.perf_counter()
    hists = trainer.fit(members, splits, torch.device("cpu"))
    # compiled: its epochs only (compile time is apart, reported in the summary)
    return sum(hists[0].rows[i]["time_s"] for i in range(len(hists[0].rows))) * len(hists) \
        if cfgs[0].trainer.compile else time.perf_counter() - t0


def p2(countries, epochs):
    data = [f"data.root={countries}"] if countries else []
    base = [*data, f"trainer.epochs={epochs}"]
    fit_time(base, 1, "optim.lr")  # warm-up: first-call costs would count against "one"
    one = fit_time(base + ["optim.lr=0.001"], 1, "seed")
    four = fit_time(base, 4, "optim.lr")
    sixteen = fit_time(base, 16, "seed")
    print(f"   one member {one:.2f}s, 4 lrs fused {four:.2f}s, 16 seeds fused {sixteen:.2f}s")
    ok = four / one <= 1.3 and sixteen / one <= 2
    comp = base + ["trainer.compile=true"]
    fit_time(comp + ["optim.lr=0.001"], 1, "seed")  # warm the inductor cache for K = 1
    one_c = fit_time(comp + ["optim.lr=0.001"], 1, "seed")
    fit_time(comp, 16, "seed")
    sixteen_c = fit_time(comp, 16, "seed")
    print(f"   compiled (epochs only, warm cache): one member {one_c:.2f}s, 16 seeds fused {sixteen_c:.2f}s")
    return [(f"P2 4 lrs fused = {four / one:.2f}x one member (target <= 1.3x); 16 seeds = {sixteen / one:.2f}x "
             f"(target <= 2x) [{epochs} epochs, 6x16, Adam, batch 256]", ok),
            (f"P2C compiled: 16 seeds fused = {sixteen_c / one_c:.2f}x one compiled member; one compiled member "
             f"{one / one_c:.1f}x faster than eager", None)]


def p2_cnn(epochs):
    base = ["experiment=hw6/synth_kernels", f"trainer.epochs={epochs}"]
    fit_time(base, 1, "seed")  # warm-up
    one, eight = fit_time(base, 1, "seed"), fit_time(base, 8, "seed")
    print(f"   one seed {one:.2f}s, 8 seeds fused {eight:.2f}s")
    return (f"P2-CNN hw6/synth_kernels 8 seeds fused = {eight / one:.2f}x one seed (target <= 2.5x) "
            f"[{epochs} epochs, batch 50]", eight / one <= 2.5)


def p3():
    r = subprocess.run([sys.executable, "scripts/bench_probe.py", "--random-weights", "--limit", "64"], cwd=ROOT,
                       capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    print("\n".join("   " + ln for ln in lines[:-1]))
    if r.returncode or not lines:
        return f"P3 not measured: scripts/bench_probe.py exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:300]}", None
    return lines[-1] + " [random-init weights file, 64 images per split: timing only]", None


def sweep_s(args):
    """Wall seconds of one sweep `python train.py -m ARGS` (a whole process) and its per-job table."""
    import pandas as pd

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "train.py", "-m", *args], cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"sweep failed (exit {r.returncode}): {' '.join(args)}\n{r.stderr[-2000:]}")
    out = next(a.partition("=")[2] for a in args if a.startswith("hydra.sweep.dir="))
    return dt, pd.read_csv(Path(out) / "results.csv")


def p4(countries, epochs=5):
    """The issue's sweep through the basic launcher (one job after another) and as fused groups on
    2 joblib workers, in this run; the same configurations must reach the same mean val acc."""
    data = [f"data.root={countries}"] if countries else []
    common = ["experiment=ex4/depth_width", *data, "seed=1,2,3", f"trainer.epochs={epochs}"]
    fused_args = ["hydra.sweeper.fuse=true", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    with tempfile.TemporaryDirectory() as tmp:
        basic, t_basic = sweep_s([*common, f"hydra.sweep.dir={tmp}/basic"])
        fused, t_fused = sweep_s([*common, *fused_args, f"hydra.sweep.dir={tmp}/fused"])
        # compiled: each of the 7 shapes (a group of 3 seeds) compiles its step once (the inductor cache is warm
        # for a shape compiled before on this machine)
        compiled, t_compiled = sweep_s([*common, *fused_args, "trainer.compile=true", f"hydra.sweep.dir={tmp}/compiled"])
    keys = ["model.depth", "model.width"]
    a, b, c = (t.groupby(keys).val_acc.mean() for t in (t_basic, t_fused, t_compiled))
    gap = float((a - b).abs().max())
    ratio = basic / fused
    print(f"   basic launcher {basic:.1f}s, fused groups on joblib(2) {fused:.1f}s, the same with trainer.compile=true "
          f"{compiled:.1f}s; per-config mean val acc max |diff| {gap:.4f} fused, {float((a - c).abs().max()):.4f} "
          f"compiled, over {len(a)} configs")
    return [(f"P4 ex4/depth_width x 3 seeds, {epochs} epochs (21 jobs): fused + joblib n_jobs=2 {fused:.1f}s vs basic "
             f"{basic:.1f}s = {ratio:.2f}x faster (target >= 2.5x); per-config mean val acc within {gap:.4f} "
             f"(bound 0.02)", ratio >= 2.5 and gap <= 0.02),
            (f"P4C the same fused sweep with trainer.compile=true {compiled:.1f}s = {basic / compiled:.2f}x the basic "
             f"launcher, {fused / compiled:.2f}x the eager fused sweep", None)]


def ex4(countries, presets, fuse, jobs, threads):
    """All ex4 presets (or those named), each a whole sweep, as a user would run the study."""
    extra = ([f"data.root={countries}"] if countries else []) + [f"trainer.threads={threads}"]
    if fuse:
        extra.append("hydra.sweeper.fuse=true")
    if jobs > 1:
        extra += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for p in presets:
            dt, _ = sweep_s([f"experiment=ex4/{p}", f"hydra.sweep.dir={tmp}/{p}", *extra])
            total += dt
            print(f"   ex4/{p}: {dt:.0f}s")
    return (f"EX4 ex4/{{{','.join(presets)}}}: {total / 60:.1f} min [{' '.join(extra[1:]) or 'basic launcher'}]",
            None)


def p5_p6(countries):
    torch_s = statistics.median(cli("-c", "import torch") for _ in range(3))
    help_s = statistics.median(cli("train.py", "--help") for _ in range(3))
    data = [f"data.root={countries}"] if countries else []
    with tempfile.TemporaryDirectory() as tmp:
        run_s = statistics.median(cli("train.py", *data, "trainer.epochs=1", f"hydra.run.dir={tmp}/{i}")
                                  for i in range(3))
    print(f"   python -c 'import torch' {torch_s:.2f}s, train.py --help {help_s:.2f}s, 1-epoch run {run_s:.2f}s")
    return [(f"P5 `python train.py --help` {help_s:.2f}s = {help_s / torch_s:.2f}x `import torch` (median of 3)", None),
            (f"P6 1-epoch countries run {run_s:.2f}s = {run_s / torch_s:.2f}x `python -c 'import torch'` "
             f"{torch_s:.2f}s (target <= 2x; median of 3)", run_s / torch_s <= 2)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--countries", type=Path, default=ROOT.parent / "shared" / "data" / "countries")
    ap.add_argument("--epochs", type=int, default=3, help="epochs for P1 and P2 (P2-CNN: 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (P1, P2; P4 via trainer.threads)")
    ap.add_argument("--only", nargs="*", default=["P1", "P1C", "P2", "P2-CNN", "P3", "P5", "P6"],
                    choices=["P1", "P1C", "P2", "P2-CNN", "P3", "P5", "P6"])
    ap.add_argument("--p4", action="store_true", help="run P4 (minutes)")
    ap.add_argument("--p4-epochs", type=int, default=5)
    ap.add_argument("--ex4", nargs="*", choices=PRESETS, help="time all ex4 presets (or the ones named)")
    ap.add_argument("--fuse", action="store_true", help="--ex4 with hydra.sweeper.fuse=true")
    ap.add_argument("--jobs", type=int, default=1, help="--ex4 on a joblib launcher with this many workers")
    args = ap.parse_args()
    import os
    import platform

    import torch

    torch.set_num_threads(args.threads)
    have = (args.countries / "train.csv").exists()
    countries = args.countries if have else None
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s); countries: {countries or 'absent (embedded data)'}")
    steps = {"P1": lambda: [p1(countries, args.epochs) if have else ("P1 skipped: needs the countries CSVs", None)],
             "P1C": lambda: p1_compiled(countries, args.epochs) if have else [("P1C skipped: needs the CSVs", None)],
             "P2": lambda: p2(countries, args.epochs), "P2-CNN": lambda: [p2_cnn(2)], "P3": lambda: [p3()],
             "P5": lambda: p5_p6(countries)}
    if "P6" in args.only and "P5" not in args.only:
        args.only.append("P5")
    results = []
    for name in [s for s in steps if s in args.only]:
        print(f"{name} ...", flush=True)
        for line, ok in steps[name]():
            results.append((line, ok))
            print(line, flush=True)
    if args.p4:  # last: these take minutes
        print("P4 ...", flush=True)
        for line, ok in p4(countries, args.p4_epochs):
            results.append((line, ok))
            print(line, flush=True)
    if args.ex4 is not None:
        results.append(ex4(countries, args.ex4 or PRESETS, args.fuse, args.jobs, args.threads))
        print(results[-1][0])
    print("\nsummary:")
    for line, ok in results:
        print(f"  [{'met' if ok else 'MISSED' if ok is False else '-'}] {line}")


if __name__ == "__main__":
    main()
