"""Where a run trains and in what precision, decided once per run and logged with the reason.

Nothing here has run on a GPU (this project's machines have none): every decision below is
plain logic on the config, the model and `torch.cuda` queries, tested on CPU with those queries
mocked (tests/test_device.py). docs/gpu.md says what that covers.

The order matters on a GPU box: the CUDA driver reads CUDA_VISIBLE_DEVICES once per process, at
its first query (`torch.cuda.is_available()` included). So whether a job wants a GPU is decided
without any CUDA call (`wants_gpu_conf` from the config, `wants_gpu` from the built model), a
sweep's job is placed and pinned (expkit/placement.py, runner._place), and only then does
`pick_device` ask CUDA; a job that stays on the CPU never asks.
"""
import logging
import os
import sys

from expkit.errors import UserError, require

log = logging.getLogger("expkit")
PRECISIONS = ("auto", "fp32", "bf16", "fp16-mixed")
# device=auto: a model this small, or an MLP without convolutions below it, is a handful of tiny
# kernels per step whose launch cost on a GPU exceeds the CPU's compute (a heuristic: never timed
# on a GPU here; set trainer.device=cuda to override)
GPU_MIN_PARAMS = 100_000
BF16_MIN_PARAMS = 1_000_000  # precision=auto: bf16 autocast for conv models with this many trainable parameters
CONV_MODELS = ("cnn", "resnet18", "sklearn_probe")  # sklearn_probe: its frozen ResNet18 computes the features
_placed = None  # the torch device of this job's GPU slot (runner._place), or None


def set_placed(device):
    """The device a sweep job's slot pinned it to ("cuda:k"), or None: `pick_device` trains there."""
    global _placed
    _placed = device


def describe(model):
    """(parameter count, has conv layers) of an nn.Module; (0, False) for an estimator."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return 0, False
    return sum(p.numel() for p in model.parameters()), any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def trainable(model):
    """Parameters that train (a frozen backbone has none); 0 for an estimator."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return 0
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_xgboost(model):
    return type(model).__module__.startswith("xgboost")


def wants_gpu(name, model):
    """Whether trainer.device=`name` sends this model to a GPU when one is there (no CUDA call:
    a sweep asks this before pinning the job to its GPU). Under auto: conv models, torch models
    of GPU_MIN_PARAMS+ parameters, and XGBoost (it has a GPU tree method); sklearn never."""
    if name == "cpu":
        return False
    if name != "auto":
        return True
    import torch

    if not isinstance(model, torch.nn.Module):
        return is_xgboost(model)
    n_params, conv = describe(model)
    return conv or n_params >= GPU_MIN_PARAMS


def _mlp_lower_bound(conf):
    """Parameters an MLP has whatever its data (one input, one class): its hidden layers' share."""
    hidden = list(conf.hidden) if conf.get("hidden") is not None else [conf.width] * conf.depth
    n, prev = 0, 1
    for h in hidden + [1]:
        n += prev * h + h
        prev = h
    return n


def wants_gpu_conf(name, model_conf):
    """`wants_gpu` from the config alone, before the data is loaded and the model built (so that
    a sweep job waits for its GPU slot holding nothing): True or False, or None when only the
    built model can tell (an MLP under auto whose hidden layers alone stay below GPU_MIN_PARAMS:
    its input layer depends on the data; a model this function does not know)."""
    if name == "cpu":
        return False
    if name != "auto":
        return True
    kind = model_conf.name
    if kind in CONV_MODELS or kind == "xgboost":
        return True
    if kind == "sklearn":
        return str(model_conf.get("_target_", "")).startswith("xgboost.")
    if kind == "mlp" and _mlp_lower_bound(model_conf) >= GPU_MIN_PARAMS:
        return True
    return None


def cuda_available():
    """torch.cuda.is_available(): this starts the CUDA driver, which then keeps the
    CUDA_VISIBLE_DEVICES it read for the life of the process. Call it only for a job bound for a GPU."""
    import torch

    return torch.cuda.is_available()


def pick_device(name, model=None):
    """The torch device for trainer.device (auto | cpu | cuda | cuda:N) and why. A model that
    stays on the CPU never queries CUDA; a sweep job placed on a GPU slot trains on that GPU."""
    import torch

    if name == "auto":
        if model is not None and not wants_gpu(name, model):
            if not isinstance(model, torch.nn.Module):
                return torch.device("cpu"), f"auto: {type(model).__name__} (sklearn) fits on the CPU only"
            n_params, _ = describe(model)
            return torch.device("cpu"), (f"auto: {n_params:,} parameters, no convolutions: faster on the CPU than as "
                                         f"~100 tiny GPU kernels a step (trainer.device=cuda to override)")
        if not cuda_available():
            return torch.device("cpu"), "auto: no CUDA device"
        where = f"placed on its GPU slot ({_placed})" if _placed else "CUDA available"
        if model is not None and is_xgboost(model):
            return torch.device(_placed or "cuda:0"), f"auto: {where}; XGBoost fits with its CUDA tree method"
        n_params, conv = describe(model) if model is not None else (0, False)
        return torch.device(_placed or "cuda:0"), f"auto: {where}, {n_params:,} parameters{', conv' if conv else ''}"
    if name.startswith("cuda"):
        n = torch.cuda.device_count() if cuda_available() else 0
        require(n > 0, f"trainer.device={name} but no CUDA device is available; use trainer.device=auto or cpu")
        if name == "cuda" and _placed:
            return torch.device(_placed), "asked; placed on its GPU slot"
        index = int(name.partition(":")[2] or 0)
        require(index < n, f"trainer.device={name} but this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1} "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        return torch.device(f"cuda:{index}"), "asked"
    return torch.device(name), "asked"


def pick_precision(name, device, model):
    """(precision, why): fp32 | bf16 | fp16-mixed. auto: fp32 on the CPU, for small models and for
    frozen backbones (a probe's features: nothing of it trains); bf16 autocast for conv models with
    BF16_MIN_PARAMS+ trainable parameters on CUDA. Metrics are always computed in fp32 (no autocast)."""
    import torch

    if name != "auto":
        if name in ("bf16", "fp16-mixed") and device.type != "cuda":
            require(name == "bf16", "trainer.precision=fp16-mixed needs a CUDA device (use fp32 or bf16 on the CPU)")
        if name == "bf16" and device.type == "cuda":
            require(torch.cuda.is_bf16_supported(), "trainer.precision=bf16 but this GPU has no bfloat16 support; "
                                                    "use trainer.precision=fp16-mixed or fp32")
        return name, "asked"
    n_params, conv = describe(model)
    n_train = trainable(model)
    if n_params and not n_train:
        return "fp32", "auto: a frozen backbone's features are computed in fp32 (trainer.precision=bf16 to change it)"
    if device.type == "cuda" and conv and n_train >= BF16_MIN_PARAMS and torch.cuda.is_bf16_supported():
        return "bf16", f"auto: conv model with {n_train:,} trainable parameters on CUDA"
    return "fp32", "auto: " + ("CPU" if device.type != "cuda" else "small or non-conv model")


def autocast(device, precision):
    """The context a training step's forward runs in."""
    import contextlib

    import torch

    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext


def set_determinism(deterministic, device):
    """The kernels a run uses; returns `kernel_settings()` for summary.json.

    trainer.deterministic=true: cuDNN deterministic, no autotuning, deterministic algorithms (CPU
    runs are deterministic either way). false on CUDA: cuDNN autotunes (cudnn.benchmark; faster,
    and the same seed may then give slightly different numbers). Always: no TF32 (cuDNN's default
    runs "fp32" convolutions in TF32, a 10-bit mantissa), so fp32 means fp32; bf16 and fp16-mixed
    come from autocast, never from TF32."""
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
        torch.use_deterministic_algorithms(True)
    elif torch.are_deterministic_algorithms_enabled():  # an earlier run in this process set it
        # only when needed: the call imports torch._inductor (1 s of a 1-epoch run's start)
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.backends.cuda.matmul.allow_tf32 = False  # the legacy switches: they set conv, rnn and matmul alike
    torch.backends.cudnn.allow_tf32 = False
    return kernel_settings()


def kernel_settings():
    """What decides a run's numbers beyond its config, as set now: {deterministic, cudnn_benchmark,
    cudnn_deterministic, tf32_matmul, tf32_cudnn} (a flag torch cannot report is None)."""
    import torch

    def flag(get):
        try:
            return bool(get())
        except RuntimeError:  # torch refuses to read mixed legacy/new TF32 settings
            return None

    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "tf32_matmul": flag(lambda: torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": flag(lambda: torch.backends.cudnn.allow_tf32)}


def free_cuda_cache():
    """Hand the CUDA caching allocator's free blocks back to the driver (between the jobs of a
    reused worker: the next job, maybe another process's, gets that memory). Nothing when CUDA has
    not started in this process; the context itself stays while the process lives."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def check_resume(saved, now, path):
    """A checkpoint resumes only on the device type and precision that wrote it. Changing
    trainer.device or trainer.precision would make it another config's run (refused as such), so
    the way to resume is a machine where the same config resolves as it did, or a fresh start."""
    if saved == now:
        return
    need = []
    if saved.get("device") != now.get("device"):
        need.append("a CUDA GPU" if saved.get("device") == "cuda" else "no CUDA GPU")
    if saved.get("precision") != now.get("precision"):  # only precision=auto resolves differently
        need.append("bfloat16 support" if saved.get("precision") == "bf16" else "no bfloat16 support")
    raise UserError(f"{path} was written on {saved.get('device')} in {saved.get('precision')}; this run resolves to "
                    f"{now.get('device')} in {now.get('precision')} here. A checkpoint resumes only where the same "
                    f"config resolves as it did (changing trainer.device or trainer.precision makes it another "
                    f"config's run): resume it on a machine with {' and '.join(need)}, or delete {path} to start "
                    f"this run afresh here")
