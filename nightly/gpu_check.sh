#!/usr/bin/env bash
# The nightly's first step: is this GPU box fit to produce tonight's leaderboard? About 8 minutes
# on one GPU. Each stage runs under its own time budget (seconds; the variables override them) and
# the script ends with one line naming the stages that failed (exit 1) or saying all passed:
#
#   preflight   $GPU_CHECK_PREFLIGHT_S (30)   torch sees a CUDA device; else one line, exit 1 at once
#   gpu tests   $GPU_CHECK_TESTS_S (120)      python -m pytest -m gpu (the CUDA-only checks)
#   benchmarks  $GPU_CHECK_BENCH_S (210)      the GPU-bound benchmarks on CUDA at full size; their
#                                             ratios table goes to $GPU_CHECK_OUT/performance.txt
#   repeat 1/2, $GPU_CHECK_REPEAT_S (50) each nightly/gpu-repeat.json run twice, each from a fresh
#   repeat 2/2                                cache into its own store (weights trained and sets
#                                             crafted twice)
#   compare     $GPU_CHECK_COMPARE_S (10)     nightly/compare_stores.py: the same cells (config
#                                             hashes) with the same per-image clean and robust
#                                             flags, else the differing cells and images, exit 1
#
# Usage, from the repository's virtual environment:  bash nightly/gpu_check.sh
# $PYTHON (default python) is the interpreter; $GPU_CHECK_OUT (default results/) receives
# performance.txt and, under gpu-check/, the two repeat stores. $BENCH_BENCH_WEIGHTS (a cache
# folder, read by benchmarks/conftest.py) lends the benchmarks trained weights so that they do not
# train at-pgd again; $BENCH_BENCH_SIZE=tiny runs them at their smoke size (numbers meaningless).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-results}
PREFLIGHT_S=${GPU_CHECK_PREFLIGHT_S:-30}
TESTS_S=${GPU_CHECK_TESTS_S:-120}
BENCH_S=${GPU_CHECK_BENCH_S:-210}
REPEAT_S=${GPU_CHECK_REPEAT_S:-50}
COMPARE_S=${GPU_CHECK_COMPARE_S:-10}
# The benchmarks whose ratios depend on the GPU (attack throughput, the harness's overhead over a
# bare PGD loop, the adaptive suite's cost); the store and peak-memory benchmarks measure the
# host's disk and RAM and run in the full benchmark suite, not here.
BENCHMARKS=(benchmarks/test_throughput.py benchmarks/test_pgd_overhead.py)

FAILED=()
START=$SECONDS

# stage NAME BUDGET LOG COMMAND...: run COMMAND under BUDGET seconds (its output also copied into
# the file LOG unless LOG is -) and record whether it passed.
stage() {
    local name=$1 budget=$2 log=$3 rc t0=$SECONDS
    shift 3
    echo "gpu_check: $name (budget ${budget} s)"
    if [ "$log" = - ]; then
        timeout --kill-after=15 "$budget" "$@"
        rc=$?
    else
        timeout --kill-after=15 "$budget" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    fi
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        printf '\ngpu_check: FAIL %s: over its %s s budget (stopped)\n' "$name" "$budget" >&2
        FAILED+=("$name")
    elif [ "$rc" -ne 0 ]; then
        echo "gpu_check: FAIL $name: exit status $rc after $((SECONDS - t0)) s" >&2
        FAILED+=("$name")
    else
        echo "gpu_check: ok $name ($((SECONDS - t0)) s)"
    fi
}

# preflight: one line and exit 1 when torch sees no CUDA device (nothing else can run then).
timeout --kill-after=5 "$PREFLIGHT_S" "$PYTHON" -c '
import os
import sys
import torch
if not torch.cuda.is_available():
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    sys.exit(f"gpu_check: no CUDA device is visible (torch {torch.__version__}, built for CUDA "
             f"{torch.version.cuda}, CUDA_VISIBLE_DEVICES={visible}): run the nightly on a GPU "
             f"box")
print(f"gpu_check: {torch.cuda.device_count()} CUDA device(s), {torch.cuda.get_device_name(0)}, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}")
'
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: no answer from torch.cuda within ${PREFLIGHT_S} s: the GPU or its driver hangs" >&2
fi
if [ "$rc" -ne 0 ]; then
    exit 1
fi

mkdir -p "$OUT/gpu-check"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

stage "gpu tests" "$TESTS_S" - "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider

stage benchmarks "$BENCH_S" "$OUT/performance.txt" \
    "$PYTHON" -m pytest "${BENCHMARKS[@]}" -p no:randomly -p no:cacheprovider -q --bench-device cuda

for i in 1 2; do
    rm -f "$OUT/gpu-check/run-$i.sqlite"
    stage "repeat $i/2" "$REPEAT_S" - env BENCH_CACHE_DIR="$WORK/cache-$i" \
        "$PYTHON" -m bench -q run --config nightly/gpu-repeat.json \
        --results "$OUT/gpu-check/run-$i.sqlite"
done
stage compare "$COMPARE_S" - \
    "$PYTHON" nightly/compare_stores.py "$OUT/gpu-check/run-1.sqlite" "$OUT/gpu-check/run-2.sqlite"

if [ ${#FAILED[@]} -ne 0 ]; then
    echo "gpu_check: FAILED: $(IFS=,; echo "${FAILED[*]}") ($((SECONDS - START)) s)" >&2
    exit 1
fi
echo "gpu_check: all stages passed in $((SECONDS - START)) s"
