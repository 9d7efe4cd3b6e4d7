"""GPU placement (expkit/placement.py) on a simulated box: jobs are real processes holding flock
slots; nothing here needs a GPU or torch."""
import ctypes
import errno
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types
from collections import Counter, defaultdict

import pytest

from expkit import placement
from expkit.errors import UserError

CTX = multiprocessing.get_context("fork")  # fast, and the children inherit the monkeypatched env


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch):
    """Each test starts as a fresh process would: nothing listed, loaded, pinned or warned yet."""
    monkeypatch.setattr(placement, "_box_cache", {})
    monkeypatch.setattr(placement, "_LIBS", {})
    monkeypatch.setattr(placement, "_original_cvd", placement._UNSET)
    monkeypatch.setattr(placement, "_warned", set())
    for var in ("SLURM_JOB_ID", placement.FAKE_GB_ENV, "CUDA_DEVICE_ORDER"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_box(monkeypatch):
    """A simulated 4-GPU machine: EXPKIT_FAKE_GPUS=4, no CUDA_VISIBLE_DEVICES."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(placement.FAKE_ENV, "4")


def _job(args):
    """One sweep job in its own process: wait for its start time, take a slot, hold it, record."""
    j, slot_dir, rec_dir, start_at, hold_s, per_device = args
    time.sleep(max(0.0, start_at - time.monotonic()))
    slot = placement.acquire(slot_dir, placement.visible_devices(), per_device, prefer=j, timeout_s=30)
    with slot:
        t0 = time.monotonic()  # recorded inside the held interval: overlaps of records are real overlaps
        time.sleep(hold_s)
        t1 = time.monotonic()
    rec = {"job": j, "device": slot.device_id, "slot": slot.slot, "start": t0, "end": t1, "pid": os.getpid()}
    (rec_dir / f"job{j}.json").write_text(json.dumps(rec))
    return os.getpid()


def _records(rec_dir):
    return [json.loads(p.read_text()) for p in sorted(rec_dir.glob("job*.json"))]


def _max_overlap(intervals):
    """The most intervals open at one instant (an end at t closes before a start at t opens)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _check_limits(recs, per_device):
    by_device, by_slot = defaultdict(list), defaultdict(list)
    for r in recs:
        by_device[r["device"]].append((r["start"], r["end"]))
        by_slot[(r["device"], r["slot"])].append((r["start"], r["end"]))
    for dev, iv in by_device.items():
        assert _max_overlap(iv) <= per_device, f"device {dev}: more than {per_device} jobs at once: {sorted(iv)}"
    for key, iv in by_slot.items():
        assert _max_overlap(iv) == 1, f"slot {key} held by two jobs at once: {sorted(iv)}"


def test_sweep_of_12_on_4_gpus_with_2_per_gpu(fake_box, tmp_path):
    """The issue's acceptance test: 12 jobs, 4 GPUs x 2 slots, a pool of 8 worker processes (as
    joblib n_jobs=8 would run them). Jobs start 50 ms apart (as a launcher dispatches them), so
    which slot frees first is deterministic: each device must get exactly 3 jobs, never > 2 at once."""
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    start, gap, hold = time.monotonic() + 0.3, 0.05, 0.5
    tasks = [(j, tmp_path / "slots", rec_dir, start + j * gap, hold, 2) for j in range(12)]
    with CTX.Pool(8) as pool:
        pids = pool.map(_job, tasks, chunksize=1)
    assert len(set(pids)) == 8 and os.getpid() not in pids  # 8 separate worker processes did the work
    recs = _records(rec_dir)
    assert len(recs) == 12
    assert Counter(r["device"] for r in recs) == {"0": 3, "1": 3, "2": 3, "3": 3}, recs
    _check_limits(recs, per_device=2)
    assert sorted(p.name for p in (tmp_path / "slots").iterdir()) == sorted(
        f"{placement.host()}.gpu{d}.slot{s}.lock" for d in range(4) for s in range(2))


def test_more_processes_than_slots_wait_for_a_free_one(fake_box, tmp_path):
    """12 processes at once on 4 x 2 slots: 4 must wait; still never > 2 jobs on a device."""
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    start = time.monotonic() + 0.3
    procs = [CTX.Process(target=_job, args=((j, tmp_path / "slots", rec_dir, start, 0.3, 2),)) for j in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    recs = _records(rec_dir)
    assert len(recs) == 12
    assert {r["device"] for r in recs} == {"0", "1", "2", "3"}
    _check_limits(recs, per_device=2)
    # 4 of them could only start once a first-wave job had finished
    first_end = min(r["end"] for r in recs)
    assert sum(r["start"] >= first_end for r in recs) == 4


def _fused_group(g, members, slot_dir, rec_dir, hold_s):
    """A fused group: K members trained as ONE run in one process, so it acquires ONCE."""
    slot = placement.acquire(slot_dir, placement.visible_devices(), 1, prefer=g * members, timeout_s=10)
    with slot:
        torch_device = placement.pin(slot.device_id)
        t0 = time.monotonic()
        seen = [{"member": m, "device": os.environ["CUDA_VISIBLE_DEVICES"], "torch_device": torch_device}
                for m in range(members)]
        time.sleep(hold_s)
        t1 = time.monotonic()
    (rec_dir / f"group{g}.json").write_text(json.dumps({"members": seen, "start": t0, "end": t1}))


def test_fused_group_takes_one_slot_on_one_device(monkeypatch, tmp_path):
    """Two fused groups of 4 on a 2-GPU box with 1 job per GPU: each group holds ONE slot, so both
    run at once, and all 4 members of a group see the same device (as cuda:0)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(placement.FAKE_ENV, "2")
    rec_dir = tmp_path / "rec"
    rec_dir.mkdir()
    procs = [CTX.Process(target=_fused_group, args=(g, 4, tmp_path / "slots", rec_dir, 0.6)) for g in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    groups = [json.loads((rec_dir / f"group{g}.json").read_text()) for g in range(2)]
    devices = []
    for grp in groups:
        assert len(grp["members"]) == 4
        assert len({m["device"] for m in grp["members"]}) == 1, grp
        assert {m["torch_device"] for m in grp["members"]} == {"cuda:0"}
        devices.append(grp["members"][0]["device"])
    assert sorted(devices) == ["0", "1"]  # one device per group, the two groups on different ones
    assert _max_overlap([(grp["start"], grp["end"]) for grp in groups]) == 2  # both held a slot at once


def _hold_forever(slot_dir, ready_path):
    slot = placement.acquire(slot_dir, ["0"], 1, timeout_s=10)
    ready_path.write_text(slot.device_id)
    time.sleep(60)


def test_killed_job_frees_its_slot(tmp_path):
    slot_dir, ready = tmp_path / "slots", tmp_path / "ready"
    p = CTX.Process(target=_hold_forever, args=(slot_dir, ready))
    p.start()
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline and p.is_alive(), "the holder never took its slot"
            time.sleep(0.02)
        with pytest.raises(TimeoutError):  # held: nobody else gets it
            placement.acquire(slot_dir, ["0"], 1, timeout_s=0.2)
        os.kill(p.pid, signal.SIGKILL)
        p.join(5)
        assert p.exitcode == -signal.SIGKILL
        t = time.monotonic()
        with placement.acquire(slot_dir, ["0"], 1, timeout_s=2) as slot:
            assert (slot.device_id, slot.slot) == ("0", 0)
        assert time.monotonic() - t < 0.5
    finally:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join(5)


def test_release_and_context_manager(tmp_path):
    slot = placement.acquire(tmp_path, ["a", "b"], 1, prefer=5)
    assert (slot.device_index, slot.device_id) == (1, "b")  # scan starts at 5 % 2
    other = placement.acquire(tmp_path, ["a", "b"], 1, prefer=5)  # b is full: a
    assert other.device_id == "a"
    with pytest.raises(TimeoutError):
        placement.acquire(tmp_path, ["a", "b"], 1, timeout_s=0.1)
    slot.release()
    slot.release()  # idempotent
    with placement.acquire(tmp_path, ["a", "b"], 1, timeout_s=1) as again:
        assert again.device_id == "b"
    other.release()
    with pytest.raises(UserError):
        placement.acquire(tmp_path, [], 1)
    with pytest.raises(UserError):
        placement.acquire(tmp_path, ["0"], 0)


def test_fewest_held_device_wins(tmp_path):
    devices = ["0", "1", "2"]
    held = [placement.acquire(tmp_path, devices, 2, prefer=0) for _ in range(3)]
    assert [s.device_id for s in held] == ["0", "1", "2"]
    held[1].release()
    nxt = placement.acquire(tmp_path, devices, 2, prefer=0)  # 1 now holds fewest (0 jobs)
    assert nxt.device_id == "1"
    for s in [held[0], held[2], nxt]:
        s.release()


def test_visible_devices(monkeypatch):
    monkeypatch.delenv(placement.FAKE_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert placement.visible_devices() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert placement.visible_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f1c, GPU-02ab")
    assert placement.visible_devices() == ["GPU-8f1c", "GPU-02ab"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,2")
    assert placement.visible_devices() == ["1"]
    monkeypatch.setenv(placement.FAKE_ENV, "4")  # the visible set, when set, wins over the hook
    assert placement.visible_devices() == ["1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert placement.visible_devices() == ["0", "1", "2", "3"]
    monkeypatch.setenv(placement.FAKE_ENV, "four")
    with pytest.raises(UserError):
        placement.visible_devices()
    monkeypatch.delenv(placement.FAKE_ENV)
    monkeypatch.setattr(placement.shutil, "which", lambda name: None)  # no nvidia-smi
    monkeypatch.setitem(placement._LIBS, placement.LIBNVML, None)    # no NVML
    monkeypatch.setitem(placement._LIBS, placement.LIBCUDA, None)    # no driver
    assert placement.visible_devices() == []
    assert not placement.blind()  # a machine without GPUs: nothing to warn about


def test_visible_devices_from_nvidia_smi(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(placement.FAKE_ENV, raising=False)
    monkeypatch.setitem(placement._LIBS, placement.LIBNVML, None)
    monkeypatch.setattr(placement.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    out = "0, GPU-aa, 81559\n1, GPU-bb, 81559\n"
    monkeypatch.setattr(placement.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout=out))
    assert placement.visible_devices() == ["0", "1"]
    assert placement.gpu("1").uuid == "GPU-bb" and placement.memory_gb(["0", "1"]) == pytest.approx(79.6, abs=0.1)


def _fake_torch(initialised):
    return types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: initialised))


def test_pin(monkeypatch):
    monkeypatch.setitem(placement._LIBS, placement.LIBCUDA, None)  # no driver to ask: torch's word only
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(False))
    assert placement.pin("2") == "cuda:0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    # the next job of this (reused) process may go anywhere the process was given: CUDA has not started
    assert placement.visible_devices() == ["0", "1", "2", "3"]
    assert placement.pin("3") == "cuda:0" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_DEVICE_ORDER" not in os.environ  # the ids came from the user's CUDA_VISIBLE_DEVICES: their order

    monkeypatch.setitem(sys.modules, "torch", _fake_torch(True))  # torch started CUDA with "3"
    assert placement.pin("3") == "cuda:0"  # already pinned there: nothing to change
    with pytest.raises(UserError, match="CUDA already started in this process"):
        placement.pin("2")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"  # untouched by the refused pin

    monkeypatch.delitem(sys.modules, "torch")  # torch not imported: nothing can be initialised
    assert placement.pin("1") == "cuda:0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_pin_by_box_index_fixes_the_cuda_order(monkeypatch, fake_box):
    """Ids listed by NVML/nvidia-smi count in PCI bus order; CUDA's default order is fastest first."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setitem(placement._LIBS, placement.LIBCUDA, None)
    assert placement.pin("2") == "cuda:0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


# -- a simulated NVIDIA driver (libcuda) and NVML, called as ctypes calls them --------------------

def _out(ref, value):
    """Write through a ctypes.byref() argument."""
    ref._obj.value = value


class FakeCuda:
    """libcuda.so.1 on a box of n GPUs with `placement.fake_uuid` UUIDs: cuInit reads
    CUDA_VISIBLE_DEVICES once, as the real driver does; before it, calls fail NOT_INITIALIZED."""

    def __init__(self, n):
        self.n, self.seen, self.inits = n, None, 0

    def cuInit(self, flags):
        self.inits += 1
        if self.seen is None:
            ids = placement._parse_cvd(os.environ.get("CUDA_VISIBLE_DEVICES"))
            self.seen = list(range(self.n)) if ids is None else [int(i) for i in ids if int(i) < self.n]
        return 0

    def cuDeviceGetCount(self, ref):
        if self.seen is None:
            return placement.CUDA_ERROR_NOT_INITIALIZED
        _out(ref, len(self.seen))
        return 0

    def cuDeviceGet(self, ref, ordinal):
        _out(ref, ordinal)
        return 0

    def cuDeviceGetUuid_v2(self, raw, dev):
        uuid = bytes.fromhex(placement.fake_uuid(self.seen[dev.value])[4:].replace("-", ""))
        ctypes.memmove(raw, uuid, 16)
        return 0


class FakeNvml:
    """libnvidia-ml.so.1 for n GPUs of `gb` GB each (NVML never looks at CUDA_VISIBLE_DEVICES)."""

    def __init__(self, n, gb=80.0):
        self.n, self.gb = n, gb

    def nvmlInit_v2(self):
        return 0

    def nvmlShutdown(self):
        return 0

    def nvmlDeviceGetCount_v2(self, ref):
        _out(ref, self.n)
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, i, ref):
        _out(ref, 1000 + i)
        return 0

    def nvmlDeviceGetUUID(self, handle, buf, size):
        buf.value = placement.fake_uuid(handle.value - 1000).encode()
        return 0

    def nvmlDeviceGetMemoryInfo(self, handle, ref):
        ref._obj.total = int(self.gb * 2**30)
        return 0


def fake_driver(monkeypatch, n, gb=80.0, nvml=True):
    """This process on a simulated box of n GPUs: a driver, NVML (unless nvml=False), no nvidia-smi."""
    monkeypatch.delenv(placement.FAKE_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(placement.shutil, "which", lambda name: None)
    cuda = FakeCuda(n)
    monkeypatch.setitem(placement._LIBS, placement.LIBCUDA, cuda)
    monkeypatch.setitem(placement._LIBS, placement.LIBNVML, FakeNvml(n, gb) if nvml else None)
    return cuda


def test_nvml_lists_the_gpus_without_nvidia_smi(monkeypatch):
    """Issue 20, item 3: no nvidia-smi used to mean no GPUs, so no placement and no warning."""
    fake_driver(monkeypatch, 2, gb=16)
    assert placement.visible_devices() == ["0", "1"]
    assert placement.gpu("1").uuid == placement.fake_uuid(1)
    assert placement.memory_gb(["0", "1"]) == 16
    assert placement.cuda_started() is None  # listing them started nothing


def test_blind_when_the_driver_is_there_but_nothing_lists_gpus(monkeypatch):
    fake_driver(monkeypatch, 2, nvml=False)
    monkeypatch.setattr(placement, "driver_gpus", lambda: None)  # the child-process probe fails too
    assert placement.visible_devices() == [] and placement.blind()


def test_pin_after_cuda_started_with_the_whole_box(monkeypatch):
    """Issue 20, item 1: a library (or an earlier job) asked CUDA first, with CUDA_VISIBLE_DEVICES
    unset. Setting it now changes nothing: the slot's GPU is cuda:k among all of them."""
    cuda = fake_driver(monkeypatch, 4)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert placement.cuda_started() is None
    cuda.cuInit(0)  # what torch.cuda.is_available() does first
    assert placement.cuda_started().uuids == [placement.fake_uuid(i) for i in range(4)]
    assert placement.cuda_tied(["0", "1", "2", "3"]) == ["0", "1", "2", "3"]
    assert placement.pin("2") == "cuda:2"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # nothing pretends the pin changed anything


def test_pin_after_cuda_started_on_another_gpu(monkeypatch):
    """A worker whose CUDA started while pinned to GPU 1 can only run on GPU 1: placement waits for
    a slot there, and pinning it elsewhere is one line instead of training on the wrong GPU."""
    cuda = fake_driver(monkeypatch, 4)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert placement.pin("1") == "cuda:0"
    cuda.cuInit(0)  # its job trained on GPU 1
    assert placement.visible_devices() == ["0", "1", "2", "3"]
    assert placement.cuda_tied(placement.visible_devices()) == ["1"]
    assert placement.pin("1") == "cuda:0"
    with pytest.raises(UserError, match="cannot place this job on GPU 2: CUDA already started"):
        placement.pin("2")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"


def test_lock_files_name_the_host_and_say_who_holds_them(tmp_path):
    """Issue 20, item 4: nodes sharing a slot dir must not share "gpu0"; a held slot says who holds it."""
    with placement.acquire(tmp_path, ["0"], 1, job="7") as slot:
        assert slot.path.name == f"{placement.host()}.gpu0.slot0.lock"
        text = slot.path.read_text()
        assert f"pid={os.getpid()}" in text and "since=" in text and "job=7" in text
        who = placement.holder(slot.path)
        assert who.startswith(f"pid {os.getpid()} on ") and " since " in who and who.endswith("job 7")
    assert placement.holder(slot.path) == "?"  # released: nobody


def _hold(slot_dir, ready_path, hold_s):
    slot = placement.acquire(slot_dir, ["0"], 1, job="3")
    ready_path.write_text(str(os.getpid()))
    time.sleep(hold_s)
    slot.release()


def test_a_waiting_job_says_who_holds_the_slot_and_how_long_it_waited(tmp_path, caplog):
    """Issue 20, item 4: a hung job's slot used to make the others poll forever in silence."""
    ready = tmp_path / "ready"
    p = CTX.Process(target=_hold, args=(tmp_path / "slots", ready, 30))
    p.start()
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline and p.is_alive()
            time.sleep(0.02)
        with caplog.at_level(logging.INFO, logger="expkit"), pytest.raises(TimeoutError):
            placement.acquire(tmp_path / "slots", ["0"], 1, timeout_s=0.7, report_every_s=0.2)
        waits = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting")]
        assert len(waits) >= 2, waits  # periodically, not once
        assert f"pid {p.pid} on " in waits[-1] and "job 3" in waits[-1] and "for a GPU slot" in waits[-1]
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(5)


def test_a_file_system_without_flock_is_said_not_failed(tmp_path, monkeypatch):
    """Issue 20, item 4: flock failing with ENOLCK (an NFS mount without lockd) failed every GPU job."""
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(placement.fcntl, "flock", no_flock)
    with pytest.raises(placement.LockingUnsupported, match="cannot hold file locks"):
        placement.acquire(tmp_path, ["0"], 1)


def test_scheduler_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert placement.scheduler_gpus() is None
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert placement.scheduler_gpus() is None  # SLURM gave no GPUs: nothing to defer to
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert placement.scheduler_gpus() == ("SLURM job 4242", "0")


def test_module_imports_no_torch():
    code = "import sys, expkit.placement; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_default_per_device():
    assert placement.default_per_device(None, "resnet18") == 1
    assert placement.default_per_device(80, "resnet18") == 1
    assert placement.default_per_device(None, "cnn") == 2
    assert placement.default_per_device(None, "mlp") == 4
    assert placement.default_per_device(80, "mlp") == 4
    assert placement.default_per_device(4, "mlp") == 2  # small card: 2 GB per small job
    assert placement.default_per_device(1, "cnn") == 1  # never below 1
    assert placement.default_per_device(None, "something_new") == 1
