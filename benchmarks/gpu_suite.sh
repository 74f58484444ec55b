#!/usr/bin/env bash
# Issue 17's measurements in ONE command, for a GPU machine that already has PyTorch (the lent H100 / H200):
#
#   bash benchmarks/gpu_suite.sh [--wheels DIR] [--out DIR]     # on the GPU machine (OUT: benchmarks/results)
#   bash benchmarks/gpu_suite.sh --dry-run --out /tmp/suite    # anywhere: every step, tiny sizes, on the CPU
#   bash benchmarks/gpu_suite.sh --only table5 [--models scsam]  # some steps (comma-separated), e.g. one per
#                                                                # call where a call has a time limit
#
# Every step runs the project's own entry points (the code `segment` and `bench` run), and runs even when an
# earlier one failed; OUT/gpu_suite-status.tsv says which passed, with the last line of any error, and the
# script exits non-zero if any step failed.
#
#   setup    the project installed without touching the machine's torch (`pip install --no-deps -e .`), then
#            the wheels carried in --wheels DIR (offline) for what is still missing.
#   table5   ScSAM's Table 5 at vit-h for every backend that runs here (benchmarks/table5.py = `emseg-rt bench`):
#            per-image latency, the measured fp16 matmul rate and each model's fraction of it, the ScSAM
#            stage breakdown → OUT/<gpu>-table5.{json,md,png}.
#   volume   a 1000 × 1024 × 1024 uint8 volume → labels end to end through `segment`: slices/s, the
#            read / compute / stitch / write split and the backend's idle fraction
#            (benchmarks/volume_throughput.py) → OUT/<gpu>-volume_throughput.{json,md}.
#   kernels  the Triton kernels against their torch references: nearest-centroid labels
#            (benchmarks/nearest_centroid.py → OUT/nearest_centroid-<gpu>.{json,md}), then fused class merge
#            and relative-position attention (benchmarks/kernels.py → OUT/kernels-<gpu>.{json,md}).
#   gputests the CUDA tests (`pytest -m gpu`): every kernel against its reference on the GPU, the CUDA fast
#            path (device tiling, fp16 weights, compiled with the kernels as operators) keeping the CPU's
#            labels on the trained default model, onnxruntime's CUDA provider on the device path
#            → OUT/<gpu>-gputests.txt (needs pytest: carry its wheel with --wheels where it is missing).
#   rtx      whether TensorRT for RTX is importable here and an engine built for the nearest RTX target
#            loads (`emseg-rt build` + `segment --backend tensorrt`); Hopper (sm90) is not an RTX target, so
#            on an H100 / H200 the expected answer is a one-line refusal, recorded as such.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
OUT="benchmarks/results"
WHEELS=""
DRY_RUN=0
ONLY=""    # empty: every step
MODELS=""  # empty: table5's default (every Table 5 row)
STEPS="table5,volume,kernels,gputests,rtx"
die() { echo "gpu_suite.sh: $1" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out|--wheels|--only|--models) [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value (see --help)" ;;
    esac
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        --wheels) WHEELS="$2"; shift ;;
        --only) ONLY=",$2,"; shift ;;
        --models) MODELS="$2"; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
for name in ${ONLY//,/ }; do
    [[ ",$STEPS," == *",$name,"* ]] || die "--only: unknown step $name (steps: $STEPS)"
done
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/emseg-gpu-suite.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
STATUS="$OUT/gpu_suite-status.tsv"
if [ -z "$ONLY" ] || [ ! -f "$STATUS" ]; then  # --only adds its rows to an earlier call's table
    printf 'step\tstatus\tseconds\tdetail\n' > "$STATUS"
fi
FAILED=0

# step NAME COMMAND...: run it, log to WORK/NAME.log, append one status line (unless --only leaves it out).
step() {
    local name="$1"; shift
    if [ -n "$ONLY" ] && [ "$name" != setup ] && [[ "$ONLY" != *",$name,"* ]]; then
        return
    fi
    local started=$SECONDS
    echo "== $name: $*" >&2
    if "$@" > "$WORK/$name.log" 2>&1; then
        printf '%s\tok\t%d\t\n' "$name" $((SECONDS - started)) >> "$STATUS"
    else
        local rc=$?
        local detail
        detail="$(grep -v '^\s*$' "$WORK/$name.log" | tail -n 1 | tr '\t' ' ' | cut -c1-300)"
        if [ "$rc" -eq 3 ]; then
            printf '%s\tskipped\t%d\t%s\n' "$name" $((SECONDS - started)) "$detail" >> "$STATUS"
        else
            printf '%s\tfailed (exit %d)\t%d\t%s\n' "$name" "$rc" $((SECONDS - started)) "$detail" >> "$STATUS"
            FAILED=1
        fi
    fi
    tail -n 5 "$WORK/$name.log" >&2
}

setup() {
    "$PYTHON" -c "import torch" || { echo "no torch in $PYTHON: this suite uses the machine's PyTorch"; return 1; }
    if [ "$DRY_RUN" -eq 1 ]; then  # the dry run uses the environment as it is (the test suite's)
        "$PYTHON" -c "import emseg_rt.bench, emseg_rt.runtime"
        return
    fi
    if [ -n "$WHEELS" ]; then
        "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" \
            $(find "$WHEELS" -name '*.whl' -printf '%p ') || return 1
    fi
    "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . || return 1
    "$PYTHON" -c "import emseg_rt.bench, emseg_rt.runtime" || { echo "emseg_rt imports fail: carry the missing wheels with --wheels"; return 1; }
}

if [ "$DRY_RUN" -eq 1 ]; then
    DEVICE=cpu
    TAG="dry-run-cpu"
    TABLE5=(--size tiny --device cpu --models scsam --backends torch-eager-fp32 --warmup 0 --iters 1)
    VOLUME=(--sizes 1 --overhead-sizes "" --plane 256 --model scsam-tiny --backend torch --batch 4 --device cpu)
    KERNELS=(--device cpu --clusters 4 --slice-pixels 128 --warmup 0 --iters 1)
    FUSED_KERNELS=(--device cpu --small --warmup 0 --iters 1)
else
    DEVICE=cuda
    TAG="$("$PYTHON" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))" 2>/dev/null || echo no-gpu)"
    TABLE5=(--size vit-h --device cuda --batch 1,4)
    VOLUME=(--sizes 1000 --overhead-sizes 1000 --plane 1024 --model scsam-vit-h --backend torch --batch 8 --device cuda)
    KERNELS=(--device cuda)
    FUSED_KERNELS=(--device cuda)
fi
if [ -n "$MODELS" ]; then
    TABLE5+=(--models "$MODELS")
fi

rtx_check() {
    "$PYTHON" -c "import tensorrt_rtx" 2>/dev/null || { echo "tensorrt_rtx is not installed here (carry its wheel with --wheels)"; return 3; }
    local target
    target="$("$PYTHON" -c "
import torch
major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
rtx = ['sm75', 'sm80', 'sm86', 'sm89', 'sm100', 'sm120']  # RTX targets, no Hopper (sm90)
want = major * 10 + minor
print(min(rtx, key=lambda t: (abs(int(t[2:]) - want), -int(t[2:]))))")"
    "$PYTHON" -m emseg_rt export scsam-tiny --out "$WORK/pkg" || return 1
    "$PYTHON" -m emseg_rt build "$WORK/pkg" --target "$target" || return 1
    "$PYTHON" -m emseg_rt phantom "$WORK/cell.zarr" --shape 2,256,256 --seed 1 || return 1
    "$PYTHON" -m emseg_rt segment "$WORK/cell.zarr" --model "$WORK/pkg" --backend tensorrt --out "$WORK/rtx.zarr"
}

step setup setup
step table5 "$PYTHON" benchmarks/table5.py "${TABLE5[@]}" --out-dir "$OUT"
step volume "$PYTHON" benchmarks/volume_throughput.py "${VOLUME[@]}" --workdir "$WORK/volume" \
    --out "$OUT/$TAG-volume_throughput"
kernels() {  # both kernel benchmarks; the second runs even when the first failed
    local failed=0
    "$PYTHON" benchmarks/nearest_centroid.py "${KERNELS[@]}" --out-dir "$OUT" || failed=1
    "$PYTHON" benchmarks/kernels.py "${FUSED_KERNELS[@]}" --out-dir "$OUT" || failed=1
    return $failed
}
step kernels kernels
gputests() {  # the dry run collects the same tests; on a CPU they are skipped
    "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/$TAG-gputests.txt" 2>&1
    local rc=$?
    tail -n 3 "$OUT/$TAG-gputests.txt"
    return $rc
}
step gputests gputests
if [ "$DRY_RUN" -eq 1 ]; then
    if [ -z "$ONLY" ] || [[ "$ONLY" == *",rtx,"* ]]; then
        printf 'rtx\tskipped\t0\tdry run: no GPU to load an engine on\n' >> "$STATUS"
    fi
else
    step rtx rtx_check
fi
echo "device $DEVICE ($TAG); results in $OUT; status:" >&2
cat "$STATUS" >&2
exit $FAILED
