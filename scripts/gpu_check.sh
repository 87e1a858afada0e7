#!/usr/bin/env bash
# GPU stack evidence in one call on a lent H100/H200 (the device tool), from the project root.
#
#   ../shared/gpu/ fetch step (here): pip download transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0
#     into .whl/ (see docs/stacks/README.md), then, through the device tool with carry [".whl"]:
#   bash scripts/gpu_check.sh
#
# It runs the parity and generation suites on cuda (bf16, fp16, fp32) with the Transformers version CI
# uses (carried wheels, when they import next to the machine's own packages) and, for compatibility,
# with the machine's own Transformers; then the speed/memory bench on a ~0.7 B random-weight Llama.
# Everything lands under $OUT (at most 8 files). Dry run on a CPU machine: GPU_CHECK_DEVICE=cpu.
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

# Transformers of CI, in its own folder: used when it imports beside the machine's packages.
SITE=/tmp/infer-site
CI_TF=""
if ls .whl/transformers-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl >> "$LOG" 2>&1
  if PYTHONPATH="$SITE:$PWD" $PY -c "import transformers, tokenizers; print('carried transformers', transformers.__version__)" >> "$LOG" 2>&1; then
    CI_TF="$SITE:"
  else
    say "carried transformers does not import here; only the machine's own is used"
  fi
fi

suite() {  # name pythonpath-prefix timeout args...
  local name=$1 prefix=$2 limit=$3; shift 3
  say "suite $name: $*"
  PYTHONPATH="${prefix}$PWD" timeout -s INT -k 20 "$limit" $PY -m pytest -p pytest_infer -p no:cacheprovider -p no:randomly \
    --infer-device "$DEVICE" --infer-report "$OUT/report-$name.json" -rsxX -q "$@" > "$OUT/pytest-$name.txt" 2>&1
  say "suite $name: exit $? ($(tail -1 "$OUT/pytest-$name.txt"))"
}

PHASES=${GPU_CHECK_PHASES:-parity,perf,bench}
has() { [[ ",$PHASES," == *",$1,"* ]]; }

if has parity; then
  if [ -n "$CI_TF" ]; then
    suite ci "$CI_TF" 300 --infer-suite parity,generation --infer-dtype bfloat16,float16,float32
  fi
  suite machine "" 150 --infer-suite parity,generation --infer-dtype bfloat16 \
    --infer-technique eager,sdpa,sdpa_math,sdpa_flash,sdpa_efficient,sdpa_cudnn,paged\|sdpa
fi

if has perf || has perftiny; then
  # the embedded model: compilation and caching techniques, parity and speed against sdpa + dynamic cache
  suite perf-tiny "$CI_TF" 210 --infer-suite generation,perf --infer-dtype bfloat16 --infer-baseline sdpa \
    --infer-technique "${GPU_CHECK_TECHNIQUES:-sdpa,static_cache,static_compile,static_compile_reduce_overhead,offloaded_cache}" \
    --benchmark-json "$OUT/bench-tiny.json"
fi
if has perf; then
  # a 0.7 B random-weight Llama for realistic ratios (speed only: random weights have no parity to check)
  MODEL=$(PYTHONPATH="${CI_TF}$PWD" $PY -m pytest_infer.architectures llama-700m /tmp/infer-models 2>>"$LOG" | tail -1)
  say "built $MODEL"
  suite perf-700m "$CI_TF" 200 --infer-model "$MODEL" --infer-suite perf --infer-dtype bfloat16 --infer-baseline sdpa \
    --infer-perf-new-tokens 64 --infer-technique sdpa,static_compile_reduce_overhead,offloaded_cache
fi

if has bench; then
  say "bench"
  BENCH_ARGS=()
  [ "$DEVICE" = cpu ] && BENCH_ARGS=(--tiny --device cpu --new-tokens 16 --prompt-len 16 --rounds 2)
  PYTHONPATH="${CI_TF}$PWD" timeout 240 $PY scripts/gpu_decode_bench.py --out "$OUT/bench.json" "${BENCH_ARGS[@]}" > "$OUT/bench.log" 2>&1
  say "bench: exit $?"
fi
ls -la "$OUT" >> "$LOG"
