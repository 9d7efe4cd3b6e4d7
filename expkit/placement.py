"""Place a sweep's jobs on the GPUs of one machine: at most `per_device` jobs at once per GPU.

Jobs of a sweep run as separate processes on one box (joblib/loky workers, submitit_local jobs),
so the bookkeeping lives in the file system: one lock file per (device, slot),
`slot_dir/gpu{id}.slot{s}.lock`, held with `fcntl.flock(LOCK_EX | LOCK_NB)` for as long as the
job runs. The OS drops a flock when its process exits or is killed, so a dead job never leaks a
slot and there is nothing to clean up (the lock files stay; they are empty markers).

A job does, in this order, before anything touches CUDA:

    slot = acquire(slot_dir, visible_devices(), per_device, prefer=job_number)  # blocks
    device = pin(slot.device_id)   # CUDA_VISIBLE_DEVICES=<id>: inside the job it is "cuda:0"
    ... train on `device` ...
    slot.release()                 # or `with acquire(...) as slot:`; process exit releases too

A fused group (K members trained as one run in one process) acquires ONCE: it takes one slot
and the whole group lives on that one device. Callers must not acquire per member.

Slots are keyed by the device id (what CUDA_VISIBLE_DEVICES names), not its position in the
list, so processes that see different subsets of the box still share the same lock files, and
a process already pinned to one device (a reused loky worker) acquires on that device only:
after `pin`, `visible_devices()` in that process returns just the pinned id.

Nothing here imports torch or initialises CUDA. Test hook: `EXPKIT_FAKE_GPUS=N` makes
`visible_devices()` report N simulated devices "0".."N-1" when CUDA_VISIBLE_DEVICES is unset.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from expkit.errors import UserError

FAKE_ENV = "EXPKIT_FAKE_GPUS"  # test hook: simulated GPU count, used when CUDA_VISIBLE_DEVICES is unset
# one slot folder per machine and user: concurrent sweeps on one box share its GPUs fairly
SLOT_DIR = Path(os.environ.get("EXPKIT_GPU_SLOTS", Path("/tmp") / f"expkit-gpu-slots-{os.getuid()}"))
POLL_S = 0.05  # sleep between scans while every slot is busy


def visible_devices() -> list[str]:
    """The GPU ids this process may use, without initialising CUDA.

    1. CUDA_VISIBLE_DEVICES if set: its comma-separated ids or UUIDs ("" = none; like CUDA, the
       list stops at the first negative id, so "-1" = none);
    2. else EXPKIT_FAKE_GPUS=N (test hook): "0".."N-1";
    3. else one id per "GPU i: ..." line of `nvidia-smi -L`, if that command exists;
    4. else [].
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = []
        for part in env.split(","):
            part = part.strip()
            if part.startswith("-"):
                break
            if part:
                ids.append(part)
        return ids
    fake = os.environ.get(FAKE_ENV)
    if fake is not None and fake.strip():
        try:
            n = int(fake)
        except ValueError:
            raise UserError(f"{FAKE_ENV}={fake!r} must be a whole number of simulated GPUs") from None
        return [str(i) for i in range(max(n, 0))]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    n = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return [str(i) for i in range(n)]


def hidden_gpus() -> bool:
    """The machine has GPUs (nvidia-smi lists some) but CUDA_VISIBLE_DEVICES hides them all."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) not in ("", "-1") or shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.startswith("GPU ") for line in out.splitlines())


def default_per_device(device_mem_gb: float | None, model_kind: str) -> int:
    """How many jobs of this model share one GPU by default (always >= 1).

    model_kind is `model.name`: resnet18 -> 1 (a large conv net fills a GPU by itself), cnn -> 2,
    mlp -> 4 (small models leave a GPU mostly idle), anything else -> 1 (the safe choice; CPU
    estimators such as sklearn/xgboost barely use a GPU slot anyway). With device_mem_gb known,
    the count is also capped at device_mem_gb // (a rough per-job budget: 8 GB resnet18, 4 GB
    cnn, 2 GB mlp), so a small card runs fewer jobs.
    """
    most, gb_per_job = {"resnet18": (1, 8.0), "cnn": (2, 4.0), "mlp": (4, 2.0)}.get(model_kind, (1, None))
    if device_mem_gb is not None and gb_per_job:
        most = min(most, int(device_mem_gb // gb_per_job))
    return max(1, most)


def _safe(device_id: str) -> str:
    """A device id as a file name part (UUIDs are fine; MIG ids may hold slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", device_id)


class Slot:
    """One held (device, slot) lock. `release()` (idempotent) or use it as a context manager.
    Dropping the object does not release it (the job keeps its device until release or exit)."""

    def __init__(self, device_index: int, device_id: str, slot: int, path: Path, fd: int):
        self.device_index = device_index  # position in the `devices` list given to acquire
        self.device_id = device_id        # what to pin: devices[device_index]
        self.slot = slot
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self):
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        return f"Slot(device {self.device_id!r} [#{self.device_index}], slot {self.slot}, {'held' if self.held else 'released'})"


def _try_lock(path: Path) -> int | None:
    """The open, exclusively flocked fd of `path`, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock(fd: int):
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def acquire(slot_dir: Path, devices: list[str], per_device: int, prefer: int = 0,
            timeout_s: float | None = None) -> Slot:
    """Block until this process holds one of the `len(devices) * per_device` slots; return it.

    Devices are scanned starting at `prefer % len(devices)` (pass the job number: jobs spread
    round-robin); among devices with a free slot, the one with the fewest held slots wins, ties
    going to the earliest in that scan order. While every slot is busy, it polls every POLL_S
    seconds; after `timeout_s` (None = forever) it raises TimeoutError.
    """
    if not devices:
        raise UserError("no GPU to place the job on (CUDA_VISIBLE_DEVICES is empty and nvidia-smi finds none); "
                        "use trainer.device=cpu")
    if int(per_device) < 1:
        raise UserError(f"jobs per GPU must be >= 1, got {per_device}")
    per_device = int(per_device)
    slot_dir = Path(slot_dir)
    slot_dir.mkdir(parents=True, exist_ok=True)
    n = len(devices)
    order = [(prefer + k) % n for k in range(n)]
    paths = {d: [slot_dir / f"gpu{_safe(devices[d])}.slot{s}.lock" for s in range(per_device)] for d in order}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        # count held slots per device (a probe holds a free lock for microseconds only)
        free = {}
        for d in order:
            free[d] = []
            for s, path in enumerate(paths[d]):
                fd = _try_lock(path)
                if fd is not None:
                    _unlock(fd)
                    free[d].append(s)
        candidates = sorted((d for d in order if free[d]), key=lambda d: per_device - len(free[d]))  # stable: scan order breaks ties
        for d in candidates:
            for s in free[d]:  # another process may have taken it since the probe: try the next
                fd = _try_lock(paths[d][s])
                if fd is not None:
                    try:
                        os.ftruncate(fd, 0)
                        os.write(fd, f"pid {os.getpid()}\n".encode())  # who holds it, for a human looking
                    except OSError:
                        pass
                    return Slot(d, devices[d], s, paths[d][s], fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no free GPU slot in {slot_dir} after {timeout_s}s "
                               f"({n} devices x {per_device} jobs each are busy)")
        time.sleep(POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic())))


def pin(device_id: str) -> str:
    """Make `device_id` this process's only GPU (CUDA_VISIBLE_DEVICES) and return "cuda:0",
    the torch device that then is it. Call it before anything initialises CUDA in this process
    (also before torch.cuda.is_available(), which fixes the visible set without counting as
    initialised). Raises UserError if CUDA is already initialised, unless this process is
    already pinned to the same device (a reused worker running its next job there)."""
    device_id = str(device_id)
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is not None and cuda.is_initialized():
        if os.environ.get("CUDA_VISIBLE_DEVICES") == device_id:
            return "cuda:0"
        raise UserError(f"cannot place this job on GPU {device_id}: CUDA is already initialised in this process "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); pin the device before any CUDA call")
    os.environ["CUDA_VISIBLE_DEVICES"] = device_id
    return "cuda:0"
