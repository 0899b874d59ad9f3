#!/usr/bin/env bash
# The GPU check of README "Install on accelerators": on a machine with an NVIDIA GPU and this
# repository, from the repository root,
#
#     bash experiments/gpu_benchmark.sh
#
# installs requirements.txt and the CUDA jax wheel matching its jax pin into a venv, then times
# `python -m cyclegan_jax.benchmark` (each run its own process, results printed as they come):
#   - the paper's recipe (256 px, resnet_9blocks, configs/monet.py on synthetic images) at batch 1
#     and 8, float32 and bfloat16 (config.compute_dtype), and its generator inference;
#   - 8 members of that recipe in bfloat16 in one program (config.ensemble.seed=0,...,7), against
#     the single bfloat16 run above (issue 14's target: >= 4x the member-steps/s);
#   - configs/default.py alone and as 16 members (and with config.steps_per_call, if the config
#     has that field);
#   - if torch imports and OFFICIAL_REPO points at a checkout of the official
#     pytorch-CycleGAN-and-pix2pix code, its train step at 256 px, batch 1
#     (experiments/official_step.py; torch is not installed by this script).
# Each result is appended to $OUT_DIR/results.jsonl and a markdown table of all is printed at
# the end ($OUT_DIR/table.md); each run's full output is in $OUT_DIR/logs/. Sized for about 10
# minutes on one H200 with a cold pip cache, most of it pip and compilation (an estimate: no GPU
# was at hand when it was written; TIME_BUDGET bounds it, and the most wanted runs come first).
#
# Settings (environment variables):
#   VENV=.venv            venv to create or reuse (SKIP_INSTALL=1: use the active Python as is)
#   PYTHON                the interpreter (default: python on the PATH, else python3)
#   PROBE_TIMEOUT=180     seconds allowed for the first import of jax and its device query
#                         (and for the import of torch)
#   JAX_CUDA=cuda12       jax extra: cuda12 (NVIDIA driver >= 525) or cuda13 (driver >= 580)
#   STEPS=10 WARMUP=3     timed and untimed steps per run
#   RUN_TIMEOUT=420       seconds allowed per run (a run past it is recorded as failed)
#   TIME_BUDGET=0         seconds after which no further run starts (0: no limit)
#   OUT_DIR=runs/gpu_benchmark/<date-time>
#   OFFICIAL_REPO=        checkout of the official code (optional)
#   ALLOW_CPU=0           1: run even when jax finds no GPU (a dry run of this script)
#   RECIPE=configs/monet.py SMALL=configs/default.py   the two configs (tiny ones for a dry run)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
JAX_CUDA=${JAX_CUDA:-cuda12}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
RUN_TIMEOUT=${RUN_TIMEOUT:-420}
TIME_BUDGET=${TIME_BUDGET:-0}
OUT_DIR=${OUT_DIR:-runs/gpu_benchmark/$(date +%Y%m%d-%H%M%S)}
OFFICIAL_REPO=${OFFICIAL_REPO:-}
ALLOW_CPU=${ALLOW_CPU:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-180}
RECIPE=${RECIPE:-configs/monet.py}
SMALL=${SMALL:-configs/default.py}

jax_pin=$(sed -n 's/^jax==\([^ #]*\).*/\1/p' requirements.txt)
[[ -n $jax_pin ]] || { echo "no jax==<version> line in requirements.txt" >&2; exit 1; }

if [[ $SKIP_INSTALL != 1 ]]; then
  [[ -d $VENV ]] || python3 -m venv "$VENV"
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  echo "== pip install -r requirements.txt jax[$JAX_CUDA]==$jax_pin"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -r requirements.txt "jax[$JAX_CUDA]==$jax_pin"
fi

PYTHON=${PYTHON:-$(command -v python || command -v python3)}
mkdir -p "$OUT_DIR/logs"
JSONL=$OUT_DIR/results.jsonl
: >"$JSONL"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
# A GPU runtime that hangs while starting is reported, not waited on.
echo "== $PYTHON: import jax, list its devices"
if ! probe=$(timeout "$PROBE_TIMEOUT" "$PYTHON" -c \
  'import jax; print(jax.default_backend(), "jax", jax.__version__, jax.devices())' 2>&1); then
  echo "$probe" | tail -n 5
  echo "importing jax and listing its devices failed or took over PROBE_TIMEOUT=$PROBE_TIMEOUT s" >&2
  exit 1
fi
echo "$probe" | tail -n 1
platform=$(echo "$probe" | tail -n 1 | cut -d' ' -f1)
if [[ $platform != gpu && $ALLOW_CPU != 1 ]]; then
  echo "jax finds no GPU (backend: $platform); check the driver and JAX_CUDA, or set ALLOW_CPU=1" >&2
  exit 1
fi

# run LABEL COMMAND...: runs one measurement, keeps its log, records and prints its result line.
run() {
  local label=$1
  shift
  local log=$OUT_DIR/logs/$label.log
  if ((TIME_BUDGET > 0 && SECONDS >= TIME_BUDGET)); then
    echo "== $label skipped: TIME_BUDGET=$TIME_BUDGET s spent"
    return
  fi
  echo "== $label: $*"
  local started=$SECONDS
  if timeout "$RUN_TIMEOUT" "$@" >"$log" 2>&1; then
    :
  else
    echo "   failed (exit $?); last lines of $log:"
    tail -n 5 "$log" | sed 's/^/   /'
  fi
  grep -E '^(benchmark|official): ' "$log" | tail -n 1 || true
  "$PYTHON" experiments/gpu_results.py record --label="$label" --jsonl="$JSONL" --log="$log" \
    >/dev/null
  echo "   ($((SECONDS - started)) s)"
}

bench() {
  local label=$1
  shift
  run "$label" "$PYTHON" -m cyclegan_jax.benchmark --steps="$STEPS" --warmup="$WARMUP" "$@"
}

seeds() { seq -s, 0 $(($1 - 1)); }

# The most wanted figures first, so that a run cut short still answers them.
bench 256px_b1_float32 --config="$RECIPE" --config.batch_size=1 --config.compute_dtype=float32
bench 256px_b1_bfloat16 --config="$RECIPE" --config.batch_size=1 --config.compute_dtype=bfloat16
bench 256px_b1_bfloat16_x8 --config="$RECIPE" --config.batch_size=1 \
  --config.compute_dtype=bfloat16 --config.ensemble.seed="$(seeds 8)"
if [[ -n $OFFICIAL_REPO ]] && timeout "$PROBE_TIMEOUT" "$PYTHON" -c 'import torch' 2>/dev/null; then
  crop=$("$PYTHON" -c "import runpy; print(runpy.run_path('$RECIPE')['get_config']().data.crop_size)")
  run official_256px_b1_float32 "$PYTHON" experiments/official_step.py \
    --official_repo="$OFFICIAL_REPO" --device=cuda --crop_size="$crop" --batch_size=1 \
    --steps="$STEPS" --warmup="$WARMUP"
else
  echo "== official step skipped (needs torch importable here and OFFICIAL_REPO set)"
fi
bench 256px_b8_bfloat16 --config="$RECIPE" --config.batch_size=8 --config.compute_dtype=bfloat16
bench 256px_b8_float32 --config="$RECIPE" --config.batch_size=8 --config.compute_dtype=float32
bench default_float32 --config="$SMALL"
bench default_float32_x16 --config="$SMALL" --config.ensemble.seed="$(seeds 16)"
bench 256px_G_inference_b1_float32 --config="$RECIPE" --config.batch_size=1 --inference
bench 256px_G_inference_b1_bfloat16 --config="$RECIPE" --config.batch_size=1 \
  --config.compute_dtype=bfloat16 --inference
if "$PYTHON" -c "from cyclegan_jax import config_lib; assert 'steps_per_call' in config_lib.base_config()" \
  2>/dev/null; then
  bench default_float32_steps_per_call8 --config="$SMALL" --config.steps_per_call=8
fi

echo
"$PYTHON" experiments/gpu_results.py table "$JSONL" | tee "$OUT_DIR/table.md"
echo
echo "results: $JSONL, table: $OUT_DIR/table.md, logs: $OUT_DIR/logs/"
