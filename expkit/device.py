"""Where a run trains and in what precision, decided once per run and logged with the reason.

Nothing here has run on a GPU (this project's machines have none): every decision below is
plain logic on the config, the model and `torch.cuda` queries, tested on CPU with those queries
mocked (tests/test_device.py). The README's GPU section says what that covers.
"""
import logging
import os

from expkit.errors import UserError, require

log = logging.getLogger("expkit")
PRECISIONS = ("auto", "fp32", "bf16", "fp16-mixed")
# device=auto: a model this small, or an MLP without convolutions below it, is a handful of tiny
# kernels per step whose launch cost on a GPU exceeds the CPU's compute (a heuristic: never timed
# on a GPU here; set trainer.device=cuda to override)
GPU_MIN_PARAMS = 100_000
BF16_MIN_PARAMS = 1_000_000  # precision=auto: bf16 autocast for conv models at least this large


def describe(model):
    """(parameter count, has conv layers) of an nn.Module; (0, False) for an estimator."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return 0, False
    return sum(p.numel() for p in model.parameters()), any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def wants_gpu(name, model):
    """Whether trainer.device=`name` sends this model to a GPU when one is there (no CUDA call:
    a sweep asks this before pinning the job to its GPU)."""
    if name == "cpu":
        return False
    n_params, conv = describe(model)
    return name != "auto" or conv or n_params >= GPU_MIN_PARAMS


def pick_device(name, model=None):
    """The torch device for trainer.device (auto | cpu | cuda | cuda:N) and why."""
    import torch

    n_params, conv = describe(model) if model is not None else (0, False)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu"), "auto: no CUDA device"
        if model is not None and not wants_gpu(name, model):
            return torch.device("cpu"), (f"auto: {n_params:,} parameters, no convolutions: faster on the CPU than as "
                                         f"~100 tiny GPU kernels a step (trainer.device=cuda to override)")
        return torch.device("cuda:0"), f"auto: CUDA available, {n_params:,} parameters{', conv' if conv else ''}"
    if name.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        require(n > 0, f"trainer.device={name} but no CUDA device is available; use trainer.device=auto or cpu")
        index = int(name.partition(":")[2] or 0)
        require(index < n, f"trainer.device={name} but this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1} "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        return torch.device(f"cuda:{index}"), "asked"
    return torch.device(name), "asked"


def pick_precision(name, device, model):
    """(precision, why): fp32 | bf16 | fp16-mixed. auto: fp32 on the CPU and for small models; bf16
    autocast for large conv models on CUDA. Metrics are always computed in fp32 (no autocast)."""
    import torch

    if name != "auto":
        if name in ("bf16", "fp16-mixed") and device.type != "cuda":
            require(name == "bf16", "trainer.precision=fp16-mixed needs a CUDA device (use fp32 or bf16 on the CPU)")
        if name == "bf16" and device.type == "cuda":
            require(torch.cuda.is_bf16_supported(), "trainer.precision=bf16 but this GPU has no bfloat16 support; "
                                                    "use trainer.precision=fp16-mixed or fp32")
        return name, "asked"
    n_params, conv = describe(model)
    if device.type == "cuda" and conv and n_params >= BF16_MIN_PARAMS and torch.cuda.is_bf16_supported():
        return "bf16", f"auto: conv model with {n_params:,} parameters on CUDA"
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
    """trainer.deterministic=true: cuDNN deterministic, no autotuning, deterministic algorithms
    (CPU runs are deterministic either way). false on CUDA: cuDNN autotunes (faster, and the same
    seed may then give slightly different numbers)."""
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
        torch.use_deterministic_algorithms(True)
    elif torch.are_deterministic_algorithms_enabled():  # an earlier run in this process set it
        # only when needed: the call imports torch._inductor (1 s of a 1-epoch run's start)
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


def check_resume(saved, now, path):
    """A checkpoint resumes only on the device type and precision that wrote it."""
    if saved != now:
        raise UserError(f"{path} was written on {saved['device']} in {saved['precision']}; this run resolves to "
                        f"{now['device']} in {now['precision']}: set trainer.device={saved['device']} "
                        f"trainer.precision={saved['precision']} to resume it, or delete the file to start afresh")
