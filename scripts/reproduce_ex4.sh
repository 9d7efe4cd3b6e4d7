#!/usr/bin/env bash
# Run every ex4 MLP study in sequence, then write one report index.
#   scripts/reproduce_ex4.sh DATA_ROOT [OUT_DIR] [extra overrides ...]
# e.g. scripts/reproduce_ex4.sh ../shared/data/countries outputs/ex4_full seed=1,2,3   (docs/ex4_results)
#      scripts/reproduce_ex4.sh ../shared/data/countries outputs/ex4_full hydra/launcher=joblib
#      scripts/reproduce_ex4.sh /data/countries outputs/ex4_gpu trainer.device=cuda
set -euo pipefail
root=${1:?usage: scripts/reproduce_ex4.sh DATA_ROOT [OUT_DIR] [overrides...]}
out=${2:-outputs/ex4_full}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."
mkdir -p "$out"
index="$out/REPORT.md"
{
  echo "# ex4 MLP studies"
  echo
  echo "data: \`$root\`; machine: $(uname -m), $(nproc) cores; $(python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'); extra: ${*:-none}"
} > "$index"
start=$(date +%s)
status=0
for preset in lr epochs batchnorm batch_size depth_width gradients gradients_fixed implicit; do
  t0=$(date +%s)
  python train.py -m "experiment=ex4/$preset" "data.root=$root" "hydra.sweep.dir=$out/$preset" "$@" \
    > "$out/$preset.log" 2>&1 || status=1
  t=$(( $(date +%s) - t0 ))
  echo "ex4/$preset: ${t}s" | tee -a /dev/stderr > /dev/null
  {
    echo; echo "## ex4/$preset (${t}s)"; echo
    if [ -e "$out/$preset/results_by_config.md" ]; then
      echo "mean ± std over seeds:"; echo; cat "$out/$preset/results_by_config.md"; echo
      echo "<details><summary>every job</summary>"; echo; cat "$out/$preset/results.md"; echo; echo "</details>"
    else
      cat "$out/$preset/results.md" 2>/dev/null || echo "(no table: see $preset.log)"
    fi
    echo
    for png in "$out/$preset"/*.png; do [ -e "$png" ] && echo "![]($preset/$(basename "$png"))"; done
  } >> "$index"
done
echo; echo "total: $(( $(date +%s) - start ))s -> $index"
echo >> "$index"; echo "total wall time: $(( $(date +%s) - start ))s" >> "$index"
exit $status
