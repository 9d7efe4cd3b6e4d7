"""scripts/gpu_check.sh --cpu: the GPU check script keeps working where there is no GPU (CI), so
that a GPU box can run it as it is. Every path prints one line; none may FAIL here."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(PASS|FAIL|SKIP) (\w+) (\d+\.\d) (.*)$")
GPU_ONLY = {"mlp_cuda", "fp16_mixed", "pin_after_cpu_job", "xgboost_cuda"}


@pytest.mark.slow
def test_gpu_check_runs_every_path_on_the_cpu(tmp_path):
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--keep", str(tmp_path / "runs")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    lines = r.stdout.strip().splitlines()
    parsed = [LINE.match(x) for x in lines]
    assert all(parsed), f"not a path line: {[x for x, m in zip(lines, parsed) if not m]}\n{r.stderr[-3000:]}"
    status = {m.group(2): m.group(1) for m in parsed}
    failed = [x for x in lines if x.startswith("FAIL")]
    assert not failed and r.returncode == 0, "\n".join(failed) + "\n" + r.stderr[-3000:]
    assert sum(s == "PASS" for s in status.values()) >= 10, r.stdout
    assert {p for p, s in status.items() if s == "SKIP"} == GPU_ONLY  # only what needs a GPU is skipped
    assert len(status) == 16


def test_gpu_check_refuses_without_a_gpu_and_names_the_cpu_mode(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--only", "bf16"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stdout == "" and "--cpu" in r.stderr.strip().splitlines()[-1]
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--only", "nope"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown path" in r.stderr
