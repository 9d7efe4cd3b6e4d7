"""Every GPU path of expkit, one line each: PASS|FAIL|SKIP <path> <seconds> <detail>.

    scripts/gpu_check.sh            on a GPU box: every path on CUDA (meant for < 5 minutes)
    scripts/gpu_check.sh --cpu      the same paths on the CPU (GPU-only ones SKIP), for CI
    scripts/gpu_check.sh --only fused_k16,kill_resume [--keep DIR]

Exit code 1 if any path FAILs (2: no GPU without --cpu). Tiny generated data (points2d, the
synthetic edges, a 32-px image folder), few epochs: the check is of the paths, not of accuracy.
Runs go under a temporary dir (--keep DIR keeps them there), with their own GPU slot dir and
feature cache, so a busy box's other sweeps neither block nor feed it. docs/gpu.md says what each
path proves and keeps the last output from a real GPU.
"""
import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLP = ["data=points2d", "data.n=400", "trainer.epochs=2"]
CNN = ["experiment=hw6/synth_kernels", "data.n=120", "trainer.epochs=1", "trainer.batch_size=20"]
PATHS = []


class Skip(Exception):
    pass


def path(name, gpu_only=False):
    def register(fn):
        PATHS.append((name, gpu_only, fn))
        return fn
    return register


class Ctx:
    def __init__(self, cpu, tmp):
        self.cpu, self.tmp = cpu, tmp
        self.dev = [] if cpu else ["trainer.device=cuda"]  # what "on the GPU" adds to an MLP's overrides
        self.images = None
        self.weights = None

    def dir(self, name):
        d = self.tmp / name
        d.parent.mkdir(parents=True, exist_ok=True)
        return d

    def env(self, **extra):
        env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
        env.update({k: v for k, v in extra.items() if v is not None})
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
        return env

    def train(self, *args, timeout=240, env=None):
        """python train.py ARGS, as a user types it. A sweep whose jobs failed exits 1 with each
        failure in its job's summary.json: the caller reads them (`jobs`)."""
        r = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=self.tmp,
                           env=env or self.env(), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0 and not (r.returncode == 1 and "-m" in args):
            raise AssertionError(f"train.py exited {r.returncode}: {_last_line(r.stderr)}")
        return r

    def image_folder(self):
        """A 32-px two-class image folder (8/4/4 per class): the deepfake layout."""
        if self.images is None:
            import numpy as np
            from PIL import Image

            root, rng = self.dir("data/faces"), np.random.default_rng(0)
            checker = (np.indices((32, 32)).sum(0) % 2 * 60)[..., None]
            for part, k in (("train", 8), ("val", 4), ("test", 4)):
                for label, cls in enumerate(("0_real", "1_fake")):
                    d = root / part / cls
                    d.mkdir(parents=True, exist_ok=True)
                    for i in range(k):
                        img = np.kron(rng.integers(0, 190, (8, 8, 3)), np.ones((4, 4, 1))) + (checker if label else 0)
                        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg", quality=95)
            self.images = root
        return ["data=deepfake", f"data.root={self.images}", "data.resize=32", "data.crop=32"]

    def resnet_weights(self):
        """A random ResNet18 state_dict as the 'pretrained' weights file (nothing downloads)."""
        if self.weights is None:
            import torch
            import torchvision

            torch.manual_seed(0)
            self.weights = self.dir("data/resnet18.pth")
            torch.save(torchvision.models.resnet18().state_dict(), self.weights)
        return self.weights


def _last_line(text):
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


def run(overrides, out):
    """One run in this process (expkit.api.run); its summary."""
    import expkit

    r = expkit.run(list(overrides), dir=str(out))
    assert r.summary["status"] == "completed", f"{out}: {r.summary.get('status')} {r.summary.get('error', '')}"
    return r.summary


def metrics(d):
    import pandas as pd

    m = pd.read_csv(Path(d) / "metrics.csv")
    return m.drop(columns=[c for c in m.columns if c == "time_s" or c.endswith("_s")])


def summary(d):
    return json.loads((Path(d) / "summary.json").read_text())


def jobs(sweep, n):
    """A sweep's job dirs in job order and their summaries; AssertionError naming the first failure."""
    dirs = sorted((p for p in Path(sweep).iterdir() if (p / "summary.json").exists()), key=lambda p: int(p.name))
    sums = [summary(d) for d in dirs]
    bad = [(d.name, s) for d, s in zip(dirs, sums) if s["status"] != "completed"]
    assert not bad, f"{len(bad)} job(s) not completed, job {bad[0][0]}: {bad[0][1]['status']} {bad[0][1].get('error', '')}"
    assert len(dirs) == n, f"{len(dirs)} of {n} jobs finished"
    return dirs, sums


def max_rel_diff(a, b, cols=("train_loss", "val_loss", "test_loss")):
    import numpy as np

    return max(float(np.max(np.abs(a[c] - b[c]) / np.maximum(np.abs(b[c]), 1e-12))) for c in cols if c in a)


def on_cuda(s):
    return str(s.get("device", "")).startswith("cuda")


# -- the paths ----------------------------------------------------------------------------------

@path("mlp_cuda", gpu_only=True)
def mlp_cuda(ctx):
    s = run(MLP + ["trainer.device=cuda"], ctx.dir("mlp_cuda"))
    assert on_cuda(s), f"trained on {s['device']}"
    return f"device {s['device']}, precision {s['precision']}, test acc {s['final']['test_acc']:.3f}"


@path("device_auto")
def device_auto(ctx):
    """trainer.device=auto and precision=auto choose as docs/gpu.md says, on this machine."""
    import torch
    import torchvision
    from sklearn.linear_model import LogisticRegression
    from xgboost import XGBClassifier

    from expkit.device import pick_device, pick_precision
    from expkit.models.cnn import CNN, ConvConf
    from expkit.models.mlp import MLP as Net

    cuda = torch.cuda.is_available()
    gpu = "cuda:0" if cuda else "cpu"
    want = {"mlp 2k": (Net(2, 2, [16] * 6), "cpu"), "cnn": (CNN((1, 28, 28), 2, [ConvConf(4, 3)], [], "relu"), gpu),
            "xgboost": (XGBClassifier(), gpu), "sklearn": (LogisticRegression(), "cpu"),
            "mlp 200k": (Net(2, 2, [400, 400]), gpu)}
    got, bad = [], []
    for name, (model, expect) in want.items():
        device, _ = pick_device("auto", model)
        got.append(f"{name}->{device}")
        if str(device) != expect:
            bad.append(f"{name}: {device}, expected {expect}")
    resnet = torchvision.models.resnet18(num_classes=1)
    p = pick_precision("auto", torch.device(gpu), resnet)[0]
    frozen = pick_precision("auto", torch.device(gpu), resnet.requires_grad_(False))[0]
    expect = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    got.append(f"resnet18 precision {p}, frozen {frozen}")
    if p != expect or frozen != "fp32":
        bad.append(f"resnet18 precision {p} (expected {expect}), frozen backbone {frozen} (expected fp32)")
    assert not bad, "; ".join(bad)
    return ", ".join(got)


def _compare_members(ctx, name, sweep_args, n, overrides, members, rtol):
    """A fused sweep (hydra/launcher=fused) against separate runs of some of its members."""
    sweep = ctx.dir(f"{name}/fused")
    ctx.train("-m", *sweep_args, *overrides, "hydra/launcher=fused", f"hydra.sweep.dir={sweep}")
    jobs_, sums = jobs(sweep, n)
    groups = {len(s.get("fused_with", [])) for s in sums}
    slots = {s.get("gpu_slot") for s in sums}
    worst = 0.0
    for k, extra, *done in members:  # done: a finished separate run of the same config, if there is one
        ref = done[0] if done and (done[0] / "summary.json").exists() else ctx.dir(f"{name}/separate_{k}")
        sep = summary(ref) if ref.exists() else run(overrides + extra, ref)
        worst = max(worst, max_rel_diff(metrics(jobs_[k]), metrics(ref)))
        assert sep["precision"] == sums[k]["precision"], "the fused and separate runs' precisions differ"
    assert worst <= rtol, f"fused vs separate: losses differ by {worst:.2e} (relative) > {rtol:g}"
    if not ctx.cpu:
        assert all(on_cuda(s) for s in sums), f"devices {sorted({s['device'] for s in sums})}"
        assert len(slots) == 1, f"the group spread over GPU slots {slots}"
    where = sums[0]["device"] + (f" (GPU slot {slots.pop()})" if slots - {None} else "")
    assert groups == {n}, f"not one fused group of {n}: group sizes {sorted(groups)}"
    return (f"{n} jobs as one fused group on {where}, {sums[0]['precision']}; vs separate runs of "
            f"{len(members)}: max rel loss diff {worst:.1e} (<= {rtol:g})")


@path("fused_k16")
def fused_k16(ctx):
    return _compare_members(ctx, "fused_k16", ["seed=range(1,17)"], 16, MLP + ctx.dev,
                            [(0, ["seed=1"]), (15, ["seed=16"])], rtol=1e-4)


@path("fused_cnn_bf16")
def fused_cnn_bf16(ctx):
    return _compare_members(ctx, "fused_cnn_bf16", ["seed=1,2,3,4"], 4, CNN + ["trainer.precision=bf16"],
                            [(0, ["seed=1"])], rtol=5e-2)


@path("resnet18_scratch")
def resnet18_scratch(ctx):
    s = run(ctx.image_folder() + ["model=resnet18", "model.mode=scratch", "optim.lr=0.001", "trainer.epochs=1",
                                  "trainer.batch_size=8"], ctx.dir("resnet18/scratch"))
    if not ctx.cpu:
        assert on_cuda(s), f"trained on {s['device']}"
    return f"device {s['device']}, precision {s['precision']}, {s['final']['val_loss']:.4f} val loss"


@path("resnet18_fused_lr")
def resnet18_fused_lr(ctx):
    rtol = 1e-3 if ctx.cpu else 5e-2  # auto precision on a GPU: bf16
    return _compare_members(ctx, "resnet18_fused_lr", ["optim.lr=0.001,0.01"], 2,
                            ctx.image_folder() + ["model=resnet18", "model.mode=scratch", "trainer.epochs=1",
                                                  "trainer.batch_size=8"],
                            [(0, ["optim.lr=0.001"], ctx.dir("resnet18/scratch"))], rtol=rtol)


@path("fp16_mixed", gpu_only=True)
def fp16_mixed(ctx):
    s = run(CNN + ["trainer.device=cuda", "trainer.precision=fp16-mixed"], ctx.dir("fp16_mixed"))
    assert on_cuda(s) and s["precision"] == "fp16-mixed", f"{s['device']} {s['precision']}"
    return f"CNN on {s['device']} in fp16-mixed (loss scaling), val loss {s['final']['val_loss']:.4f}"


@path("bf16")
def bf16(ctx):
    import math

    s = run(MLP + ctx.dev + ["trainer.precision=bf16"], ctx.dir("bf16"))
    assert s["precision"] == "bf16" and math.isfinite(s["final"]["val_loss"]), f"{s['precision']} {s['final']}"
    if not ctx.cpu:
        assert on_cuda(s), f"trained on {s['device']}"
    return f"MLP on {s['device']} in bf16 autocast, val loss {s['final']['val_loss']:.4f} (evaluated in fp32)"


@path("deterministic_rerun")
def deterministic_rerun(ctx):
    from expkit import rerun

    job = ctx.dir("deterministic/run")
    s = run(CNN + ["trainer.deterministic=true"], job)
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # its verdict line; this script's stdout is the paths' lines
        rc = rerun.main([str(job)])  # python -m expkit.rerun JOB, in this process: afresh, then compared
    assert rc == 0, f"python -m expkit.rerun {job} exited {rc}: metrics differ"
    return f"CNN on {s['device']}, deterministic: python -m expkit.rerun -> identical metrics"


@path("streaming")
def streaming(ctx):
    common = MLP + ctx.dev + ["trainer.deterministic=true"]
    a = run(common + ["trainer.data_on_device_share=0"], ctx.dir("streaming/host"))
    run(common, ctx.dir("streaming/device"))
    ma, mb = metrics(ctx.dir("streaming/host")), metrics(ctx.dir("streaming/device"))
    assert ma.equals(mb), f"streamed and on-device runs differ: max rel loss diff {max_rel_diff(ma, mb):.2e}"
    return f"on {a['device']}: data streamed from the host (share 0) = data on the device, bit for bit"


@path("kill_resume")
def kill_resume(ctx):
    args = ["data=points2d", "data.n=1500", "trainer.epochs=10", "trainer.batch_size=16",
            "trainer.checkpoint_every_s=0", "trainer.deterministic=true", *ctx.dev]
    d = ctx.dir("kill_resume/killed")
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={d}"], cwd=ctx.tmp,
                         env=ctx.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt, deadline = d / "checkpoint.pt", time.monotonic() + 180
    try:
        while not ckpt.exists():
            assert p.poll() is None, f"the run ended (exit {p.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.02)
        time.sleep(0.1)  # into the next epoch
        os.kill(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert not (d / "summary.json").exists(), "the run finished before it was killed: use more epochs"
    run(args, d)  # the same run again (here in this process): it resumes from the checkpoint
    m = re.search(r"resumed from \S+ after epoch (\d+)", (ctx.tmp / "gpu_check.log").read_text())
    assert m, "the re-run did not resume from its checkpoint"
    run(args, ctx.dir("kill_resume/whole"))
    a, b = metrics(d), metrics(ctx.dir("kill_resume/whole"))
    assert a.equals(b), f"killed+resumed differs from uninterrupted: max rel loss diff {max_rel_diff(a, b):.2e}"
    return f"kill -9 after epoch {m.group(1)}, resumed on {summary(d)['device']}: metrics equal to an uninterrupted run"


def _intervals(job_dir):
    """(placed, done) times of a job from its expkit.log."""
    stamp = lambda line: datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # noqa: E731
    placed = done = None
    for line in (job_dir / "expkit.log").read_text().splitlines():
        if "placed on GPU" in line:
            placed = stamp(line)
        elif re.search(r"\] - (completed|diverged): test acc", line):
            done = stamp(line)
    return placed, done


@path("joblib_slots")
def joblib_slots(ctx):
    from expkit import placement

    env = ctx.env()
    if ctx.cpu:
        if placement.box_gpus():
            raise Skip("this machine has GPUs: without --cpu the real ones are checked")
        env = ctx.env(CUDA_VISIBLE_DEVICES=None, EXPKIT_FAKE_GPUS="1")  # one simulated GPU; CUDA finds none
    sweep = ctx.dir("joblib/sweep")
    ctx.train("-m", *CNN, "seed=range(1,6)", "trainer.jobs_per_gpu=2", "hydra/launcher=joblib",
              "hydra.launcher.n_jobs=4", f"hydra.sweep.dir={sweep}", env=env, timeout=300)
    by_gpu = {}
    for j, s in zip(*jobs(sweep, 5)):
        assert s.get("gpu_slot") is not None, f"job {j.name} took no GPU slot"
        placed, done = _intervals(j)
        assert placed and done, f"job {j.name}: no placement/finish lines in its log"
        by_gpu.setdefault(s["gpu_slot"], []).append((placed, done))
    most = {}
    for g, iv in by_gpu.items():
        events = sorted([(a, 1) for a, _ in iv] + [(b, -1) for _, b in iv], key=lambda e: (e[0], e[1]))
        now = most[g] = 0
        for _, step in events:
            now += step
            most[g] = max(most[g], now)
    assert max(most.values()) <= 2, f"more than 2 jobs at once on a GPU: {most}"
    return "5 jobs, 4 workers, jobs_per_gpu=2: at most " + ", ".join(f"{n} at once on GPU {g}" for g, n in most.items())


PIN_SCRIPT = r"""
import json, logging, os, sys
logging.basicConfig(level=logging.INFO)
import torch
from expkit import device, placement
from expkit.api import compose
from expkit.runner import run_group

tmp, probe_first = sys.argv[1], sys.argv[2] == "1"
out = {"started_at_start": placement.cuda_started() is not None}
run_group([compose(["data=points2d", "data.n=400", "trainer.epochs=1"])], [__import__("pathlib").Path(tmp) / "cpu"], [[]], job_num=0)
out["started_after_cpu_job"] = placement.cuda_started() is not None
if probe_first:
    torch.cuda.is_available()  # a library probing CUDA with CUDA_VISIBLE_DEVICES unset: the whole box
    out["started_after_probe"] = placement.cuda_started() is not None
cnn = compose(["experiment=hw6/synth_kernels", "data.n=120", "trainer.epochs=1", "trainer.jobs_per_gpu=1"])
s = run_group([cnn], [__import__("pathlib").Path(tmp) / "gpu"], [[]], job_num=1)[0]
dev = torch.device(device._placed)
norm = lambda u: __import__("re").sub(r"[^0-9a-f]", "", __import__("re").sub(r"^(gpu|mig)-", "", str(u).lower()))
out.update(slot=s.get("gpu_slot"), placed=str(dev), trained_on=s["device"],
           uuid_trained=norm(torch.cuda.get_device_properties(dev).uuid), uuid_slot=norm(placement.gpu(s["gpu_slot"]).uuid))
print("RESULT " + json.dumps(out))
"""


@path("pin_after_cpu_job", gpu_only=True)
def pin_after_cpu_job(ctx):
    """Item 1 of issue 20 on real hardware: a CPU job, then (after a CUDA probe, or not) a GPU job in
    the same process trains on the GPU whose slot it holds (compared by UUID)."""
    details = []
    for probe in ("0", "1"):
        d = ctx.dir(f"pin/{probe}")
        r = subprocess.run([sys.executable, "-c", PIN_SCRIPT, str(d), probe], cwd=ROOT, env=ctx.env(),
                           capture_output=True, text=True, timeout=240)
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        assert r.returncode == 0 and line, f"exit {r.returncode}: {_last_line(r.stderr)}"
        o = json.loads(line[0][7:])
        assert not o["started_at_start"] and not o["started_after_cpu_job"], f"CUDA started before the GPU job: {o}"
        if probe == "1":
            assert o["started_after_probe"], "the driver did not report CUDA started after torch.cuda.is_available()"
        assert o["uuid_trained"] and o["uuid_trained"] == o["uuid_slot"], f"trained on another GPU than its slot's: {o}"
        details.append(f"{'probe first' if probe == '1' else 'no probe'}: slot GPU {o['slot']} = {o['placed']}")
    return "; ".join(details) + " (same UUID)"


@path("xgboost_cuda", gpu_only=True)
def xgboost_cuda(ctx):
    s = run(ctx.image_folder() + ["model=xgboost"], ctx.dir("xgboost"))  # trainer.device=auto
    assert on_cuda(s), f"trainer.device=auto fitted XGBoost on {s['device']}"
    return f"device=auto -> XGBoost on {s['device']}, test acc {s['final']['test_acc']:.3f}"


@path("sklearn_probe")
def sklearn_probe(ctx):
    s = run(ctx.image_folder() + ["model=sklearn_probe", f"model.weights_path={ctx.resnet_weights()}"],
            ctx.dir("sklearn_probe"))
    f = s.get("features") or {}
    assert f.get("precision") == "fp32", f"features in {f.get('precision')} (precision=auto must keep a probe in fp32)"
    if not ctx.cpu:
        assert str(f.get("device", "")).startswith("cuda"), f"features computed on {f.get('device')}"
    return f"features by the frozen ResNet18 on {f.get('device')} in {f.get('precision')}; LogisticRegression on {s['device']}"


@path("compile")
def compile_(ctx):
    """The compiled step (trainer.compile=true): one graph, called directly, CUDA graphs on a GPU; losses within
    1e-3 of eager; its steady epoch against eager's; and a fused group of 4 seeds compiled as one step."""
    many = MLP[:-1] + ["trainer.epochs=4", "trainer.batch_size=32"]  # full batches: the compiled step
    s = run(many + ctx.dev + ["trainer.compile=true"], ctx.dir("compile"))
    e = run(many + ctx.dev, ctx.dir("compile_eager"))
    diff = max_rel_diff(metrics(ctx.dir("compile")), metrics(ctx.dir("compile_eager")))
    assert diff <= 1e-3, f"compiled vs eager: losses differ by {diff:.2e} (relative)"
    c = s["compile"]
    assert c["graphs"] == 1 and c["fallback"] is None and c["call"] == "direct", f"compile summary {c}"
    assert c["cuda_graphs"] is (not ctx.cpu), f"CUDA graphs {c['cuda_graphs']} on {s['device']}"
    steady = [epoch_seconds(ctx.dir(d))[-1] for d in ("compile", "compile_eager")]
    fused = _compare_members(ctx, "compile_fused", ["seed=1,2,3,4"], 4, many + ctx.dev + ["trainer.compile=true"],
                             [(0, ["seed=1"])], rtol=1e-3)
    return (f"torch.compile on {s['device']} (CUDA graphs {c['cuda_graphs']}, compile {c['compile_s']:.1f}s): "
            f"losses within {diff:.1e} of eager; last epoch {steady[0]:.3f}s vs eager {steady[1]:.3f}s; {fused}")


def epoch_seconds(d):
    import pandas as pd

    return pd.read_csv(Path(d) / "metrics.csv")["time_s"].tolist()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run every path on the CPU (GPU-only paths SKIP)")
    ap.add_argument("--only", help="comma-separated path names")
    ap.add_argument("--keep", type=Path, help="keep the runs in this dir (default: a temporary dir, removed)")
    args = ap.parse_args(argv)
    names = [n for n, _, _ in PATHS]
    only = args.only.split(",") if args.only else names
    unknown = [n for n in only if n not in names]
    if unknown:
        sys.stderr.write(f"error: unknown path(s) {unknown}; choose from {names}\n")
        return 2
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="expkit-gpu-check-"))
    tmp.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: CUDA finds nothing, here and in every child
    # cuBLAS sizes its workspaces once per process: deterministic paths after CUDA paths need it set first
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ["EXPKIT_GPU_SLOTS"] = str(tmp / "slots")  # before expkit.placement reads it
    os.environ["EXPKIT_CACHE"] = str(tmp / "cache")      # features computed here, not read from a cache
    for k in ("EXPKIT_FAKE_GPUS", "SLURM_JOB_ID"):
        os.environ.pop(k, None)
    logging.basicConfig(filename=tmp / "gpu_check.log", level=logging.INFO,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    sys.path.insert(0, str(ROOT))
    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.stderr.write("error: no CUDA GPU here (torch.cuda.is_available() is False); "
                         "scripts/gpu_check.sh --cpu checks the same paths on the CPU\n")
        return 2
    where = "cpu" if args.cpu else f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    sys.stderr.write(f"gpu_check on {where}, torch {torch.__version__}, runs in {tmp}\n")
    ctx, counts, t_all = Ctx(args.cpu, tmp), {"PASS": 0, "FAIL": 0, "SKIP": 0}, time.perf_counter()
    for name, gpu_only, fn in PATHS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        try:
            if gpu_only and args.cpu:
                raise Skip("needs a CUDA GPU")
            status, detail = "PASS", fn(ctx)
        except Skip as ex:
            status, detail = "SKIP", str(ex)
        except subprocess.TimeoutExpired as ex:
            status, detail = "FAIL", f"timed out after {ex.timeout:.0f} s"
        except Exception as ex:
            status, detail = "FAIL", f"{type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''}"[:400]
            logging.getLogger("gpu_check").error("%s failed:\n%s", name, traceback.format_exc())
        counts[status] += 1
        print(f"{status} {name} {time.perf_counter() - t0:.1f} {detail}", flush=True)
    sys.stderr.write(f"gpu_check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in "
                     f"{time.perf_counter() - t_all:.0f} s ({where}); log: {tmp / 'gpu_check.log'}\n")
    if not args.keep and not counts["FAIL"]:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
