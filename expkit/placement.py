"""Place a sweep's jobs on the GPUs of one machine: at most `per_device` jobs at once per GPU.

Jobs of a sweep run as separate processes on one box (joblib/loky workers, submitit_local jobs),
so the bookkeeping lives in the file system: one lock file per (host, device, slot),
`slot_dir/<host>.gpu<id>.slot<s>.lock`, held with `fcntl.flock(LOCK_EX | LOCK_NB)` for as long as
the job runs. The OS drops a flock when its process exits or is killed, so a dead job never leaks
a slot. The host name keeps machines that share a slot dir (a home dir on NFS) apart; the file of
a held slot says who holds it (pid, host, start time, job), and a job that waits says every
REPORT_EVERY_S seconds who holds the slots it waits for and for how long.

A job does, in this order, before anything touches CUDA:

    slot = acquire(slot_dir, usable, per_device, prefer=job_number)  # blocks
    device = pin(slot.device_id)   # CUDA_VISIBLE_DEVICES=<id>: inside the job it is "cuda:0"
    ... train on `device` ...
    slot.release()                 # or `with acquire(...) as slot:`; process exit releases too

where `usable = cuda_tied(visible_devices())` or, if that is None, `visible_devices()`.

The CUDA driver reads CUDA_VISIBLE_DEVICES once per process, when it starts (cuInit; in torch the
first `torch.cuda.is_available()`, not only `torch.cuda.init()`). `cuda_started()` asks the driver
itself whether that happened (libcuda's cuDeviceGetCount answers CUDA_ERROR_NOT_INITIALIZED until
then, and starts nothing) and which GPUs it then took (their UUIDs, in CUDA's order). A process
whose CUDA started earlier (a reused worker after a GPU job, or after any library probed CUDA) can
only use those GPUs: `cuda_tied` restricts placement to them and `pin` returns the torch device
that really is the slot's GPU there ("cuda:k"), or refuses with one line; it never pins an id that
the driver will not honour.

GPUs are found without initialising CUDA in this process: CUDA_VISIBLE_DEVICES as this process
got it; else NVML (libnvidia-ml.so.1 through ctypes: pynvml is not needed); else `nvidia-smi`;
else a short subprocess that asks the CUDA driver (a container with the driver but without NVML).
`blind()` says when a driver is there but nothing could count its GPUs (the job then warns).
Under a scheduler that gave the job its GPUs (SLURM: SLURM_JOB_ID and CUDA_VISIBLE_DEVICES set),
`scheduler_gpus()` names them and the runner takes no slot.

Nothing here imports torch or initialises CUDA. Test hooks: `EXPKIT_FAKE_GPUS=N` makes the box
report N simulated devices "0".."N-1" (UUIDs `fake_uuid(i)`; memory EXPKIT_FAKE_GPU_GB if set) when
CUDA_VISIBLE_DEVICES is unset; `_LIBS` maps a library name to a loaded object (tests put fake
NVML and CUDA drivers there).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from expkit.errors import UserError

log = logging.getLogger("expkit")
FAKE_ENV = "EXPKIT_FAKE_GPUS"  # test hook: simulated GPU count, used when CUDA_VISIBLE_DEVICES is unset
FAKE_GB_ENV = "EXPKIT_FAKE_GPU_GB"  # test hook: the simulated GPUs' memory
# one slot folder per machine and user: concurrent sweeps on one box share its GPUs fairly
SLOT_DIR = Path(os.environ.get("EXPKIT_GPU_SLOTS", Path("/tmp") / f"expkit-gpu-slots-{os.getuid()}"))
POLL_S = 0.05  # sleep between scans while every slot is busy
REPORT_EVERY_S = 60.0  # a waiting job logs who holds the slots, this often
LIBCUDA, LIBNVML = "libcuda.so.1", "libnvidia-ml.so.1"
CUDA_ERROR_NOT_INITIALIZED = 3
_LIBS: dict = {}  # library name -> loaded library, or None when it cannot be loaded (cached)
_UNSET = object()
_original_cvd = _UNSET  # CUDA_VISIBLE_DEVICES as this process got it, before its first pin


class LockingUnsupported(OSError):
    """The slot dir's file system has no flock (some network file systems)."""


class Gpu(NamedTuple):
    id: str                        # what names it in CUDA_VISIBLE_DEVICES: its index (PCI bus order) or UUID
    uuid: str | None = None        # GPU-xxxxxxxx-...; None when unknown
    mem_gb: float | None = None    # total memory; None when unknown


def _lib(name):
    """A shared library through ctypes, or None when this machine has none (cached)."""
    if name not in _LIBS:
        try:
            _LIBS[name] = ctypes.CDLL(name)
        except OSError:
            _LIBS[name] = None
    return _LIBS[name]


def _parse_cvd(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES's ids (None when unset). Like CUDA, the list stops at the first negative
    id, so "" and "-1" are none."""
    if value is None:
        return None
    ids = []
    for part in value.split(","):
        part = part.strip()
        if part.startswith("-"):
            break
        if part:
            ids.append(part)
    return ids


def box_cvd() -> str | None:
    """CUDA_VISIBLE_DEVICES as this process got it (before `pin` changed it), or None if unset."""
    return os.environ.get("CUDA_VISIBLE_DEVICES") if _original_cvd is _UNSET else _original_cvd


# -- the box's GPUs, without initialising CUDA in this process ------------------------------------

def fake_uuid(i: int) -> str:
    """The UUID of simulated GPU i (what a fake driver in the tests reports for it)."""
    return f"GPU-00000000-0000-0000-0000-{i:012x}"


def _fake_gpus():
    fake = os.environ.get(FAKE_ENV)
    if fake is None or not fake.strip():
        return None
    try:
        n = int(fake)
    except ValueError:
        raise UserError(f"{FAKE_ENV}={fake!r} must be a whole number of simulated GPUs") from None
    gb = os.environ.get(FAKE_GB_ENV)
    return [Gpu(str(i), fake_uuid(i), float(gb) if gb else None) for i in range(max(n, 0))]


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def nvml_gpus() -> list[Gpu] | None:
    """Every GPU of the machine by NVML index (= nvidia-smi's, PCI bus order), with UUID and
    memory; None when NVML is missing or fails. NVML never starts CUDA."""
    nvml = _lib(LIBNVML)
    if nvml is None:
        return None
    try:
        init = getattr(nvml, "nvmlInit_v2", None) or nvml.nvmlInit
        if init() != 0:
            return None
        try:
            n = ctypes.c_uint(0)
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(n)) != 0:
                return None
            gpus = []
            for i in range(n.value):
                handle = ctypes.c_void_p()
                if nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                    return None
                buf = ctypes.create_string_buffer(96)
                uuid = buf.value.decode() if nvml.nvmlDeviceGetUUID(handle, buf, 96) == 0 else None
                mem = _NvmlMemory()
                gb = mem.total / 2**30 if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) == 0 else None
                gpus.append(Gpu(str(i), uuid or None, gb))
            return gpus
        finally:
            getattr(nvml, "nvmlShutdown", lambda: 0)()
    except (AttributeError, OSError):
        return None


def smi_gpus() -> list[Gpu] | None:
    """The GPUs `nvidia-smi` lists (index, UUID, memory); None without nvidia-smi."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            try:
                gb = float(parts[2]) / 1024  # MiB
            except ValueError:
                gb = None
            gpus.append(Gpu(parts[0], parts[1] or None, gb))
    return gpus


_DRIVER_PROBE = r"""
import ctypes, os
os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
cuda = ctypes.CDLL("libcuda.so.1")
n = ctypes.c_int(0)
if cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(n)) == 0:
    for i in range(n.value):
        d, u, mem = ctypes.c_int(), (ctypes.c_ubyte * 16)(), ctypes.c_size_t()
        cuda.cuDeviceGet(ctypes.byref(d), i)
        h = bytes(u).hex() if cuda.cuDeviceGetUuid(u, d) == 0 else ""
        cuda.cuDeviceTotalMem_v2(ctypes.byref(mem), d)
        print(i, "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]) if h else "", mem.value)
"""


def driver_gpus() -> list[Gpu] | None:
    """The GPUs the CUDA driver finds, counted in a child process (CUDA starts there, not here);
    None without a driver. For machines with the driver but neither NVML nor nvidia-smi."""
    if _lib(LIBCUDA) is None:
        return None
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    try:
        out = subprocess.run([sys.executable, "-c", _DRIVER_PROBE], capture_output=True, text=True, timeout=60,
                             env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            gpus.append(Gpu(parts[0], parts[1] or None, int(parts[2]) / 2**30 or None))
        elif len(parts) == 2:
            gpus.append(Gpu(parts[0], None, int(parts[1]) / 2**30 or None))
    return gpus


_box_cache: dict = {}


def box_gpus() -> list[Gpu]:
    """Every GPU of this machine, whatever CUDA_VISIBLE_DEVICES says: simulated (EXPKIT_FAKE_GPUS),
    else NVML, else nvidia-smi, else the driver in a child process, else []."""
    fake = _fake_gpus()
    if fake is not None:
        return fake
    if "gpus" not in _box_cache:  # the hardware does not change while a process lives
        for source in (nvml_gpus, smi_gpus, driver_gpus):
            gpus = source()
            if gpus is not None:
                _box_cache["gpus"], _box_cache["source"] = gpus, source.__name__
                break
        else:
            _box_cache["gpus"], _box_cache["source"] = [], None
    return list(_box_cache["gpus"])


def blind() -> bool:
    """A CUDA driver is installed but nothing could list its GPUs (no NVML, no nvidia-smi, and the
    driver probe failed): placement cannot see the GPUs that torch may find."""
    return _fake_gpus() is None and not box_gpus() and _box_cache.get("source") is None and _lib(LIBCUDA) is not None


def visible_devices() -> list[str]:
    """The GPU ids this process's jobs may be placed on, without initialising CUDA.

    1. CUDA_VISIBLE_DEVICES as this process got it (not as `pin` set it for an earlier job): its
       comma-separated ids or UUIDs ("" = none; like CUDA, the list stops at the first negative id);
    2. else every GPU of the machine (`box_gpus`: EXPKIT_FAKE_GPUS, NVML, nvidia-smi, the driver).
    """
    ids = _parse_cvd(box_cvd())
    if ids is not None:
        return ids
    return [g.id for g in box_gpus()]


def hidden_gpus() -> bool:
    """The machine has GPUs but CUDA_VISIBLE_DEVICES hides them all."""
    if box_cvd() not in ("", "-1"):
        return False
    return bool(box_gpus())


def gpu(device_id: str) -> Gpu:
    """What is known of the GPU a placement id names (an index of the box, or a UUID or its prefix)."""
    device_id = str(device_id)
    for g in box_gpus():
        if g.id == device_id or (g.uuid and device_id.startswith(("GPU-", "MIG-")) and g.uuid.startswith(device_id)):
            return g
    return Gpu(device_id, device_id if device_id.startswith(("GPU-", "MIG-")) else None, None)


def memory_gb(devices: list[str]) -> float | None:
    """The smallest memory among these GPUs (None when any is unknown)."""
    mems = [gpu(d).mem_gb for d in devices]
    return min(mems) if mems and all(m is not None for m in mems) else None


def scheduler_gpus() -> tuple[str, str] | None:
    """(what, ids) when a scheduler gave this job its GPUs (SLURM: SLURM_JOB_ID set and
    CUDA_VISIBLE_DEVICES set for the job): its own slots would second-guess the scheduler."""
    cvd = box_cvd()
    job = os.environ.get("SLURM_JOB_ID")
    if job and cvd is not None:
        return f"SLURM job {job}", cvd
    return None


# -- has CUDA already read CUDA_VISIBLE_DEVICES in this process? ----------------------------------

class Started(NamedTuple):
    """CUDA in this process has started: these are its GPUs, cuda:0.. in order."""
    uuids: list[str] | None  # from the driver; None when it could not say
    cvd: str | None          # CUDA_VISIBLE_DEVICES now (what it read, when only expkit pins)

    def index_of(self, device_id: str) -> int | None:
        """The torch index (cuda:k) of a placement id in this process, or None if CUDA here cannot use it."""
        if self.uuids is not None:
            uuid = gpu(device_id).uuid
            if uuid is None:
                return None
            want = _uuid_key(uuid)
            for k, u in enumerate(self.uuids):
                if u and want and (_uuid_key(u).startswith(want) or want.startswith(_uuid_key(u))):
                    return k
            return None
        ids = _parse_cvd(self.cvd)
        if ids is None:  # it saw the whole box, in CUDA's order, unknown here without the driver
            return None
        return ids.index(str(device_id)) if str(device_id) in ids else None

    def describe(self) -> str:
        seen = ", ".join(self.uuids) if self.uuids is not None else "unknown"
        return f"CUDA_VISIBLE_DEVICES={self.cvd if self.cvd is not None else 'unset'} (GPUs: {seen})"


def _uuid_key(uuid: str) -> str:
    """A UUID's hex digits: NVML says GPU-… or MIG-…, the driver's raw bytes carry no prefix."""
    return re.sub(r"[^0-9a-f]", "", re.sub(r"^(gpu|mig)-", "", uuid.lower()))


def _driver_uuids(cuda) -> list[str] | None:
    n = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(n)) != 0:
        return None
    uuids = []
    get_uuid = getattr(cuda, "cuDeviceGetUuid_v2", None) or cuda.cuDeviceGetUuid
    for i in range(n.value):
        dev = ctypes.c_int()
        raw = (ctypes.c_ubyte * 16)()
        if cuda.cuDeviceGet(ctypes.byref(dev), i) != 0 or get_uuid(raw, dev) != 0:
            return None
        h = bytes(raw).hex()
        uuids.append(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return uuids


def cuda_started() -> Started | None:
    """None while nothing in this process has started the CUDA driver (CUDA_VISIBLE_DEVICES can
    still choose its GPU); else which GPUs it took. Starts nothing itself."""
    torch = sys.modules.get("torch")
    cuda_mod = getattr(torch, "cuda", None) if torch is not None else None
    torch_started = bool(cuda_mod is not None and cuda_mod.is_initialized())
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    driver = _lib(LIBCUDA)
    if driver is not None:
        try:
            n = ctypes.c_int(0)
            rc = driver.cuDeviceGetCount(ctypes.byref(n))
            if rc == CUDA_ERROR_NOT_INITIALIZED and not torch_started:
                return None
            if rc == 0:
                return Started(_driver_uuids(driver), cvd)
        except (AttributeError, OSError):
            pass
    return Started(None, cvd) if torch_started else None


def cuda_tied(devices: list[str]) -> list[str] | None:
    """None when this process may still go to any GPU; else the ones among `devices` that CUDA,
    already started here, can use (maybe none)."""
    started = cuda_started()
    if started is None:
        return None
    return [d for d in devices if started.index_of(d) is not None]


def pin(device_id: str) -> str:
    """Make `device_id` this process's GPU and return the torch device that is it.

    Before CUDA starts: CUDA_VISIBLE_DEVICES=<id> (with CUDA_DEVICE_ORDER=PCI_BUS_ID when the id is
    the box's index, the order NVML and nvidia-smi count in) and "cuda:0". After CUDA started in
    this process (it read CUDA_VISIBLE_DEVICES then, for good): "cuda:k", the index of that GPU
    among those CUDA took, or UserError when CUDA here cannot reach it; the environment is left
    as it is."""
    global _original_cvd
    device_id = str(device_id)
    started = cuda_started()
    if started is not None:
        k = started.index_of(device_id)
        if k is None:
            raise UserError(f"cannot place this job on GPU {device_id}: CUDA already started in this process "
                            f"(an earlier job or a library called it) with {started.describe()}, and CUDA reads "
                            "CUDA_VISIBLE_DEVICES only once; run the job in a fresh process")
        return f"cuda:{k}"
    if _original_cvd is _UNSET:
        _original_cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if _original_cvd is None and not device_id.startswith(("GPU-", "MIG-")):
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # index i = NVML's / nvidia-smi's GPU i
    os.environ["CUDA_VISIBLE_DEVICES"] = device_id
    return "cuda:0"


# -- slots ----------------------------------------------------------------------------------------

class _Later:
    """runner._place's answer when only the built model can tell whether the job wants a GPU (an
    MLP under trainer.device=auto): ask again then. Holds nothing."""

    def release(self):
        pass

    def __repr__(self):
        return "placement.LATER"


LATER = _Later()
_warned: set = set()


def warn_once(key: str, msg: str, *args):
    """A warning this process gives once (a reused worker's next jobs do not repeat it)."""
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


def default_per_device(device_mem_gb: float | None, model_kind: str) -> int:
    """How many jobs of this model share one GPU by default (always >= 1).

    model_kind is `model.name`: resnet18 -> 1 (a large conv net fills a GPU by itself), cnn -> 2,
    mlp -> 4 (small models leave a GPU mostly idle), anything else -> 1 (the safe choice). With
    device_mem_gb known (the runner passes the smallest visible GPU's), the count is also capped at
    device_mem_gb // (a rough per-job budget: 8 GB resnet18, 4 GB cnn, 2 GB mlp), so a small card
    runs fewer jobs.
    """
    most, gb_per_job = {"resnet18": (1, 8.0), "cnn": (2, 4.0), "mlp": (4, 2.0)}.get(model_kind, (1, None))
    if device_mem_gb is not None and gb_per_job:
        most = min(most, int(device_mem_gb // gb_per_job))
    return max(1, most)


def _safe(name: str) -> str:
    """A device id or host name as a file name part (UUIDs are fine; MIG ids may hold slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def host() -> str:
    return _safe(socket.gethostname().split(".")[0] or "localhost")


def slot_path(slot_dir: Path, device_id: str, slot: int) -> Path:
    return Path(slot_dir) / f"{host()}.gpu{_safe(device_id)}.slot{slot}.lock"


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
                os.ftruncate(fd, 0)  # nobody holds it now
            except OSError:
                pass
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


_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _try_lock(path: Path) -> int | None:
    """The open, exclusively flocked fd of `path`, or None if another process holds it.
    LockingUnsupported when the file system cannot flock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as ex:
        os.close(fd)
        if ex.errno in _NO_FLOCK:
            raise LockingUnsupported(ex.errno, f"{path.parent} cannot hold file locks (flock: {ex.strerror})") from None
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock(fd: int):
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def holder(path: Path) -> str:
    """Who holds a slot, from its lock file: 'pid P on HOST since T (for D) job J', or '?'."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return "?"
    fields = dict(re.findall(r"(\w+)=(\S+)", text))
    if "pid" not in fields:
        return text or "?"
    out = f"pid {fields['pid']} on {fields.get('host', '?')}"
    if "since" in fields:
        try:
            t0 = datetime.fromisoformat(fields["since"])
            out += f" since {t0:%Y-%m-%d %H:%M:%S} ({_clock((datetime.now() - t0).total_seconds())})"
        except ValueError:
            pass
    if fields.get("job"):
        out += f" job {fields['job']}"
    return out


def acquire(slot_dir: Path, devices: list[str], per_device: int, prefer: int = 0,
            timeout_s: float | None = None, job: str = "", report_every_s: float | None = None) -> Slot:
    """Block until this process holds one of the `len(devices) * per_device` slots; return it.

    Devices are scanned starting at `prefer % len(devices)` (pass the job number: jobs spread
    round-robin); among devices with a free slot, the one with the fewest held slots wins, ties
    going to the earliest in that scan order. While every slot is busy, it polls every POLL_S
    seconds and every `report_every_s` (default REPORT_EVERY_S) logs how long it has waited and
    who holds the slots; after `timeout_s` (None = forever) it raises TimeoutError. The held
    slot's file says who holds it (pid, host, start time, `job`). LockingUnsupported when the
    slot dir's file system has no flock.
    """
    if not devices:
        raise UserError("no GPU to place the job on (CUDA_VISIBLE_DEVICES is empty and the machine lists none); "
                        "use trainer.device=cpu")
    if int(per_device) < 1:
        raise UserError(f"jobs per GPU must be >= 1, got {per_device}")
    per_device = int(per_device)
    slot_dir = Path(slot_dir)
    slot_dir.mkdir(parents=True, exist_ok=True)
    n = len(devices)
    order = [(prefer + k) % n for k in range(n)]
    paths = {d: [slot_path(slot_dir, devices[d], s) for s in range(per_device)] for d in order}
    t_start = time.monotonic()
    deadline = None if timeout_s is None else t_start + timeout_s
    every = REPORT_EVERY_S if report_every_s is None else report_every_s
    next_report = t_start + every
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
                        os.write(fd, (f"pid={os.getpid()} host={socket.gethostname()} "
                                      f"since={datetime.now().isoformat(timespec='seconds')} job={_safe(job)}\n").encode())
                    except OSError:
                        pass
                    return Slot(d, devices[d], s, paths[d][s], fd)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise TimeoutError(f"no free GPU slot in {slot_dir} after {timeout_s}s "
                               f"({n} devices x {per_device} jobs each are busy)")
        if now >= next_report:
            next_report = now + every
            held = "; ".join(f"{p.name}: {holder(p)}" for d in order for p in paths[d])
            log.info("waiting %s for a GPU slot (%d GPU(s) x %d job(s) each, all busy): %s",
                     _clock(now - t_start), n, per_device, held)
        time.sleep(POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic())))
