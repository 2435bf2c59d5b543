#!/usr/bin/env bash
# The GPU checks of issue 11 ("Honest numbers"), prepared as one run for a lent GPU machine.
#
# Runs, from the repository root, with that machine's own python3 (torch, numpy, safetensors
# and tqdm are all the benchmarks import; nothing is installed):
#   1. benchmarks/mh_dropout.py on the GPU: the per-instance J = 2048 step against the
#      all-in-graph reference (median of REPEATS interleaved rounds), peak memory J = 2048 / 16,
#      MVQ / VQ at J = 256;
#   2. benchmarks/train_step.py on the GPU: a training step's images/s for MVQVAE (J = 256) and
#      VQ-VAE-2, fp32 and bf16, eager and torch.compile, at B = 256 (BATCHES: a list).
# Each log goes to $OUT (the device tool's folder that comes back), or results/device here.
#
#   bash benchmarks/device_checks.sh                       # on the GPU machine
#   DEVICE=cpu JS=16 REPEATS=1 STEPS=4 BATCHES=8 bash benchmarks/device_checks.sh  # dry run
#
# Budget: on this project's 2-core CPU the dry run above takes ~3.5 minutes, 2.5 of them
# compiling; on a GPU machine expect ~6 (each compiled setting compiles for about a minute):
# run it with the device tool's 10-minute limit, mh_dropout.py first as the figure that matters.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/device}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
JS=${JS:-16,256,2048}
REPEATS=${REPEATS:-5}
STEPS=${STEPS:-30}
BATCHES=${BATCHES:-256}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

{ date -u; uname -m; nvidia-smi -L 2>/dev/null || echo "no nvidia-smi";
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/machine.txt"
cat "$OUT/machine.txt"

failed=()  # a check that fails is named at the end; the others still run (one device call)
"$PY" benchmarks/mh_dropout.py --device "$DEVICE" --js "$JS" --repeats "$REPEATS" \
  2>&1 | tee "$OUT/mh_dropout.log" || failed+=(mh_dropout)

for b in ${BATCHES//,/ }; do
  for model in mvqvae_fmnist_s4_k16 vqvae2_fmnist_s4_k16; do
    "$PY" benchmarks/train_step.py --device "$DEVICE" --model "$model" --batch-size "$b" \
      --steps "$STEPS" --precisions fp32,bf16 --compile 2>&1 | tee "$OUT/train_step_${model}_b$b.log" \
      || failed+=("train_step_${model}_b$b")
  done
done
if ((${#failed[@]})); then
  echo "failed: ${failed[*]} (logs in $OUT)"
  exit 1
fi
