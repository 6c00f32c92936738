#!/usr/bin/env bash
# The whole GPU check in one command, for the day a CUDA machine is lent (PyTorch preinstalled, no
# network): build the extension with CUDA, run the CUDA tests (skips are failures), the operator
# benchmarks at the paper's and large sizes, the archive benchmark, a 200-step training run and the
# data-parallel/ensemble scaling benchmark. Every step has a time limit; the script never stops at
# a failing step, and it finishes within GPU_CHECK_SECONDS (default 450 s) in all.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# Writes OUT_DIR/summary.txt (one line per step: rc, seconds) and OUT_DIR/gpu_check.tar.gz (every
# log and result file: build, tests, benchmarks/results/<gpu>.json|md, archive, training). Commit
# the results it produced under benchmarks/results/, naming the device. Missing Python packages
# (soundfile, cffi, ...) can travel as wheels in ./.whl (see README, "Benchmarks"): they are
# installed into a private folder first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$(mkdir -p "${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR}" && cd "$1" && pwd)
WORK="$OUT_DIR/gpu_check"
mkdir -p "$WORK"
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_SECONDS:-450}
T0=$(date +%s)
export PYTHONUNBUFFERED=1 FASTASD_REQUIRE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

# step NAME LIMIT_S CMD...: run CMD with at most LIMIT_S seconds (less if the total runs out),
# output into WORK/NAME.log, one summary line.
step() {
  local name=$1 limit=$2; shift 2
  local left=$(( TOTAL - ($(date +%s) - T0) ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then
    echo "$name: not run (time budget spent)" | tee -a "$OUT_DIR/summary.txt"; return
  fi
  local start; start=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc, $(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$OUT_DIR/summary.txt"
}

: >"$OUT_DIR/summary.txt"
{ date -u; nvidia-smi || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; } \
  >"$WORK/environment.log" 2>&1

if [ -d .whl ]; then
  step wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/fastasd-site .whl/*.whl
  export PYTHONPATH=/tmp/fastasd-site${PYTHONPATH:+:$PYTHONPATH}
fi

# 1. Build with CUDA for sm_90 (fails loudly if the CUDA part cannot be built).
step build 240 env FASTASD_FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e .
step info 30 "$PY" -m fastasd info

# 2. CUDA tests: operators against the float64 references, the inference path, distributed training.
step tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/ops tests/test_inference.py tests/test_distributed.py \
  --junitxml="$WORK/tests.xml"

# 3. Operator and pipeline benchmarks (ours vs reference eager and compiled, with the floors).
step bench_ops 150 "$PY" benchmarks/run.py --device cuda --sizes paper,target,large --out-dir "$WORK"

# 4. Archive scoring: 1,000 10-s clips from a zip, 8 decode workers, bf16.
step bench_archive 60 "$PY" benchmarks/bench_archive.py --device cuda --workers 8 --count 1000 --bf16 --tag cuda

# 5. A 200-step training run of the paper's configuration (10-s clips, batch 64) on one GPU,
#    then the ensemble / data-parallel scaling benchmark.
DATA="$WORK/synth"
step synth 60 "$PY" -m fastasd synth "$DATA" --machine-types fan,pump --sections 2 --train-source 310 \
  --train-target 10 --test 4 --clip-seconds 10
# 1,280 clips at batch 64 = 20 steps per epoch x 10 epochs = 200 steps.
step train_200_steps 90 "$PY" -m fastasd train "$DATA" --out "$WORK/model" --preset paper --no-progress
# The same run through torchrun's data-parallel path (NCCL, DDP, SyncBatchNorm on one GPU).
step train_ddp_1gpu 90 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m fastasd train "$DATA" \
  --out "$WORK/model_ddp" --preset paper --no-progress --data-parallel
step bench_distributed 60 "$PY" benchmarks/bench_distributed.py --device cuda --procs 1 --clip-seconds 10 \
  --batch-size 64 --clips 2048 --steps 60 --tag gpu

cp -f benchmarks/results/archive_cuda.* benchmarks/results/distributed_gpu.* "$WORK/" 2>/dev/null || true
echo "total: $(( $(date +%s) - T0 )) s" | tee -a "$OUT_DIR/summary.txt"
tar -czf "$OUT_DIR/gpu_check.tar.gz" -C "$OUT_DIR" gpu_check summary.txt
