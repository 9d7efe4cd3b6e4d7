#!/usr/bin/env bash
# Every GPU path of expkit, one line each: PASS|FAIL|SKIP <path> <seconds> <detail>.
#   scripts/gpu_check.sh          on a GPU box (meant for < 5 minutes)
#   scripts/gpu_check.sh --cpu    the same paths on the CPU, GPU-only ones SKIP (CI)
# Options: --only a,b  --keep DIR. Exit 1 if any path FAILs. What each path proves: docs/gpu.md.
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
