"""expkit speed figures P1..P5, each a ratio or wall time measured in this one run.

    python scripts/bench.py [--countries ../shared/data/countries] [--epochs 3] [--threads 1]
                            [--p4 [PRESET ...]] [--launcher fused]

P1 expkit trainer vs the course-style loop, s/epoch (scripts/bench_mlp.py)   target >= 5x, acc +-1 point
P2 fused 4-lr sweep (ex4/lr) vs one member alone and vs 4 sequential runs    target <= 1.5x one member
P3 linear-probe lr sweep with the feature cache vs without (scripts/bench_probe.py)  target <= 1.5x one run
P4 ex4 MLP presets at their epochs, wall time (opt-in: --p4, minutes)       target < 15 min
P5 `python train.py --help` wall time                                        target < 1.5 s
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
PRESETS = ["lr", "epochs", "batchnorm", "batch_size", "depth_width", "gradients", "gradients_fixed", "implicit"]
LRS = [1, 0.01, 0.001, 0.00001]  # ex4/lr


def p1(countries, epochs):
    import bench_mlp

    _, ratio, gap = bench_mlp.compare(countries, epochs)
    return f"P1 {ratio:.1f}x faster per epoch than the course loop, test acc gap {gap:.2f} points " \
           f"(target >= 5x, <= 1 point) [{epochs} epochs, 6x16+BN, batch 256]", ratio >= 5 and gap <= 1


def p2(countries, epochs):
    """ex4/lr as trainers see it: 4 Adam lrs, 6x16 MLP, batch 256, on the countries CSVs."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import compose_cfg
    from expkit.config import validate
    from expkit.data import load
    from expkit.models import build
    from expkit.trainers import fused, torch as plain

    data = [f"data.root={countries}"] if countries else []
    cfgs = [validate(compose_cfg(data + [f"optim.lr={lr}", f"trainer.epochs={epochs}", "trainer.checkpoint=false"]))
            for lr in LRS]
    splits = load(cfgs[0].data)

    def model(c):
        torch.manual_seed(c.seed)
        return build(c.model, splits)[1]

    def alone(c):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            plain.fit(model(c), splits, c, Path(tmp), torch.device("cpu"), c.seed)
        return time.perf_counter() - t0

    alone(cfgs[2])  # warm-up: first-call costs (lazy imports, allocator) would count against "one"
    times = [alone(c) for c in cfgs]
    one, seq = times[2], sum(times)  # one = lr 0.001, a member that trains all epochs
    t0 = time.perf_counter()
    hists = fused.fit([model(c) for c in cfgs], splits, cfgs, torch.device("cpu"))
    group = time.perf_counter() - t0
    ran = [len(h.rows) for h in hists]  # a diverging member leaves the group early (cheaper)
    print(f"   one member {one:.2f}s, 4 sequential {seq:.2f}s, fused 4 lrs {group:.2f}s (epochs run per lr: {ran})")
    return (f"P2 fused 4-lr sweep = {group / one:.2f}x one member, {seq / group:.1f}x faster than 4 sequential "
            f"runs (target <= 1.5x one member) [{epochs} epochs, 6x16, Adam, lr {LRS}]", group / one <= 1.5)


def p3():
    probe = ROOT / "scripts" / "bench_probe.py"
    if not probe.exists():
        return "P3 pending (scripts/bench_probe.py, the linear-probe feature-cache benchmark, is not there yet)", None
    r = subprocess.run([sys.executable, str(probe)], cwd=ROOT, capture_output=True, text=True)
    note = ""
    if r.returncode and "weights" in r.stderr:
        # no ImageNet file here: time the same code with a random-init file (cache speed does not
        # depend on the weight values; accuracies would be meaningless and are not reported)
        note = " [random-init weights, 64 images per split: timing only]"
        r = subprocess.run([sys.executable, str(probe), "--random-weights", "--limit", "64"], cwd=ROOT,
                           capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    print("\n".join("   " + ln for ln in lines[:-1]))
    if r.returncode or not lines:
        why = (r.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return f"P3 not measured: scripts/bench_probe.py exit {r.returncode}: {why}", None
    return lines[-1] + note, None


def p4(countries, presets, launcher, threads):
    extra = ([f"data.root={countries}"] if countries else []) + ([f"hydra/launcher={launcher}"] if launcher else [])
    extra.append(f"trainer.threads={threads}")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for p in presets:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "train.py", "-m", f"experiment=ex4/{p}", f"hydra.sweep.dir={tmp}/{p}",
                                *extra], cwd=ROOT, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            total += dt
            print(f"   ex4/{p}: {dt:.0f}s{'' if r.returncode == 0 else f' (exit {r.returncode})'}")
    names = "all ex4 MLP presets" if presets == PRESETS else f"ex4/{{{','.join(presets)}}}"
    return (f"P4 {names}: {total / 60:.1f} min (target < 15 min) [launcher {launcher or 'basic'}]",
            total < 900 if presets == PRESETS else None)


def p5():
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return f"P5 `python train.py --help`: {t:.2f}s (median of 3; target < 1.5 s)", t < 1.5


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--countries", type=Path, default=ROOT.parent / "shared" / "data" / "countries")
    ap.add_argument("--epochs", type=int, default=5, help="epochs for P1 and P2 (fewer: the accuracy gap is mostly shuffling noise)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (P1, P2; P4 via trainer.threads)")
    ap.add_argument("--p4", nargs="*", choices=PRESETS, help="run P4 (all presets, or the ones named)")
    ap.add_argument("--launcher", default=None, help="P4's hydra/launcher, e.g. fused")
    ap.add_argument("--skip", nargs="*", default=[], choices=["P1", "P2", "P3", "P5"])
    args = ap.parse_args()
    import platform

    import torch

    torch.set_num_threads(args.threads)
    have = (args.countries / "train.csv").exists()
    print(f"machine: {platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s); countries: {args.countries if have else 'absent'}")
    results = []
    steps = [("P1", lambda: p1(args.countries, args.epochs) if have else
              (f"P1 skipped: no countries CSVs at {args.countries} (--countries DIR)", None)),
             ("P2", lambda: p2(args.countries if have else None, args.epochs)), ("P3", p3), ("P5", p5)]
    if args.p4 is not None:  # last: it takes minutes
        steps.append(("P4", lambda: p4(args.countries if have else None, args.p4 or PRESETS, args.launcher, args.threads)))
    for name, fn in steps:
        if name in args.skip:
            continue
        print(f"{name} ...", flush=True)
        line, ok = fn()
        results.append((line, ok))
        print(line, flush=True)
    print("\nsummary:")
    for line, ok in results:
        print(f"  [{'met' if ok else 'MISSED' if ok is False else '-'}] {line}")


if __name__ == "__main__":
    main()
