#!/usr/bin/env bash
# GPU stack evidence in one call on a lent H100/H200 (the device tool), from the project root.
#
#   ../shared/gpu/fetch-wheels.sh   (bitsandbytes, torchao, optimum-quanto, kernels into .whl/, ~47 MB), then
#   through the device tool with carry [".whl"]:  bash scripts/gpu_check.sh
#
# Default phases (GPU_CHECK_PHASES=quant,perf700,timer), one call under 8 minutes:
#   quant    parity, generation, storage, cache and batching checks of the embedded model in bf16
#   perf700  real weight bytes and decode speed of a 0.7 B random-weight Llama against sdpa + dynamic cache
#   timer    the plugin's timer against a hand-written CUDA-event loop (within 3 %, CV <= 2 %)
# Every suite appends its Markdown matrix to $OUT/summary.md. Everything lands under $OUT (at most 8 files:
# gpu_check.log, summary.md, report-*.json, pytest-*.txt, bench-700m.json, timer.json).
# Dry run on a CPU machine: GPU_CHECK_DEVICE=cpu.
set -uo pipefail
OUT=${OUT:-$PWD/.out}
mkdir -p "$OUT"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG=$OUT/gpu_check.log
: > "$LOG"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

say "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true
  $PY -m pip list 2>/dev/null | grep -iE "^(torch|transformers|tokenizers|safetensors|huggingface.hub|pytest|pytest-benchmark|triton|accelerate|numpy) " ; } >> "$LOG" 2>&1

# Carried wheels. Optional backends (bitsandbytes, torchao, optimum-quanto, kernels: ../shared/gpu/fetch-wheels.sh)
# go on top of the machine's packages; a carried Transformers (CI's version, fetched apart: it does not fit in
# one call beside bitsandbytes) is used for the "ci" phase only.
SITE=/tmp/infer-site
BACKENDS=""
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl >> "$LOG" 2>&1
  BACKENDS="$SITE:"
  PYTHONPATH="$SITE:$PWD" $PY -c "
import importlib
for m in ('bitsandbytes', 'torchao', 'optimum.quanto', 'kernels', 'transformers'):
    try:
        print('carried/installed', m, getattr(importlib.import_module(m), '__version__', '?'))
    except Exception as e:
        print('cannot import', m, type(e).__name__, str(e)[:200])
" >> "$LOG" 2>&1
fi
export GITHUB_STEP_SUMMARY=$OUT/summary.md  # every suite appends its matrix here

suite() {  # name pythonpath-prefix timeout args...
  local name=$1 prefix=$2 limit=$3; shift 3
  say "suite $name: $*"
  PYTHONPATH="${prefix}$PWD" timeout -s INT -k 20 "$limit" $PY -m pytest -p pytest_infer -p no:cacheprovider -p no:randomly \
    --infer-device "$DEVICE" --infer-report "$OUT/report-$name.json" -rsxX -q "$@" > "$OUT/pytest-$name.txt" 2>&1
  say "suite $name: exit $? ($(tail -1 "$OUT/pytest-$name.txt"))"
}

PHASES=${GPU_CHECK_PHASES:-quant,perf700,timer}
has() { [[ ",$PHASES," == *",$1,"* ]]; }

if has quant; then
  # the embedded model in bf16: quantization, caches and continuous batching: parity, storage, cache checks
  suite quant "$BACKENDS" "${GPU_CHECK_QUANT_LIMIT:-200}" --infer-suite parity,generation --infer-dtype bfloat16 \
    --infer-technique "${GPU_CHECK_TECHNIQUES:-quantization,caching,batching,parallelism}"
fi
if has timer; then
  say "timer validation"
  TIMER_ARGS=()
  [ "$DEVICE" = cpu ] && TIMER_ARGS=(--device cpu --tiny --dtype float32 --rounds 4)
  PYTHONPATH="${BACKENDS}$PWD" timeout "${GPU_CHECK_TIMER_LIMIT:-120}" $PY scripts/timer_validation.py --out "$OUT/timer.json" "${TIMER_ARGS[@]}" >> "$LOG" 2>&1
  say "timer: exit $?"
fi

if has perf700; then
  # a 0.7 B random-weight Llama: real weight bytes and decode speed against sdpa + dynamic cache
  MODEL=$(PYTHONPATH="${BACKENDS}$PWD" $PY -m pytest_infer.runtime.architectures llama-700m /tmp/infer-models 2>>"$LOG" | tail -1)
  say "built $MODEL"
  suite perf700 "$BACKENDS" "${GPU_CHECK_PERF_LIMIT:-240}" --infer-model "$MODEL" --infer-suite parity,perf --infer-dtype bfloat16 \
    --infer-baseline sdpa --infer-perf-new-tokens 32 --infer-perf-rounds 3 -k "weight_storage or decode_speed" \
    --infer-technique "${GPU_CHECK_PERF_TECHNIQUES:-sdpa,static_compile_reduce_overhead,bnb_8bit,bnb_nf4,torchao_int8_weight_only,torchao_int4_weight_only,torchao_float8_weight_only,offloaded_cache}" \
    --benchmark-json "$OUT/bench-700m.json"
fi
# Earlier phases (first session): CI's Transformers from .whl-ci, the machine's own, the tiny perf suite, the bench.
if has ci && ls .whl-ci/transformers-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/infer-ci .whl-ci/*.whl >> "$LOG" 2>&1
  suite ci "/tmp/infer-ci:" 300 --infer-suite parity,generation --infer-dtype bfloat16,float16,float32
fi
if has machine; then
  suite machine "" 150 --infer-suite parity,generation --infer-dtype bfloat16 \
    --infer-technique eager,sdpa,sdpa_math,sdpa_flash,sdpa_efficient,sdpa_cudnn,paged\|sdpa
fi
if has perftiny; then
  suite perf-tiny "$BACKENDS" 210 --infer-suite generation,perf --infer-dtype bfloat16 --infer-baseline sdpa \
    --infer-technique "sdpa,static_cache,static_compile,static_compile_reduce_overhead,offloaded_cache" \
    --benchmark-json "$OUT/bench-tiny.json"
fi
if has bench; then
  say "bench"
  BENCH_ARGS=()
  [ "$DEVICE" = cpu ] && BENCH_ARGS=(--tiny --device cpu --new-tokens 16 --prompt-len 16 --rounds 2)
  PYTHONPATH="${BACKENDS}$PWD" timeout 240 $PY scripts/gpu_decode_bench.py --out "$OUT/bench.json" "${BENCH_ARGS[@]}" > "$OUT/bench.log" 2>&1
  say "bench: exit $?"
fi
ls -la "$OUT" >> "$LOG"
