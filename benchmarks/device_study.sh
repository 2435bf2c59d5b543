#!/usr/bin/env bash
# A sweep's pending cells on a lent GPU machine for MINUTES, several at once, brought back as
# one archive (issue 30). First run on an H200 on 2026-12-04 (results/device/README.md).
#
#   bash benchmarks/device_study.sh SWEEP_FILE MINUTES
#     JOBS=4        cells at once (the machine's 16 CPUs split between them; one GPU shared)
#     CELLS="2 7"   these cells, in this order (default: every pending cell, by index), e.g.
#                   CELLS="$(awk '$1 == "grid" {print $2}' results/fmnist/queue.txt)"
#     MIN_START=2   start no cell with fewer minutes than this left
#     THREADS=N     CPU threads per cell (default: the CPUs / JOBS)
#     SWEEP_OUT=DIR the sweep's --out (default: the file's out)
#     OUT=DIR       where the archive and logs go (default results/device/; the tool's $OUT)
#     DEVICE=cpu    the dry run: GPUs hidden (CUDA_VISIBLE_DEVICES=), tests/test_device_scripts.py
#
# Each cell runs as `mvq sweep SWEEP_FILE --cell I` (--device as the file says: the study's
# files name none, so `auto` takes the GPU): the same stages, specs and files as on a CPU; what
# differs is what records the machine: the device (eval.json's meta), paths, times and the text
# of a failed weights download. Once the minutes are up the running cells are interrupted as
# by Ctrl-C (they stay unfinished and are not brought back).
# In OUT: study.tar.gz (the finished cells' committed files: what the sweep folder's .gitignore
# lets through, no weights; with manifest.json), study_logs.tar.gz (each job's and each started
# cell's stage logs) and study.log. Before the call, here: bash benchmarks/device_prepare.sh;
# the call: run(command="bash benchmarks/device_study.sh results/fmnist/grid.yaml 5",
# carry=[".device"], timeout_s=...: MINUTES plus ~2 minutes for the interrupt and packing).
# Afterwards, here:
#   .venv/bin/python benchmarks/device_study.py unpack study.tar.gz SWEEP_FILE
#   .venv/bin/mvq sweep SWEEP_FILE --collect
set -uo pipefail
sweep=${1:?usage: device_study.sh SWEEP_FILE MINUTES}
minutes=${2:?usage: device_study.sh SWEEP_FILE MINUTES}
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-results/device}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/study.log") 2>&1
# shellcheck source=benchmarks/device_env.sh
source benchmarks/device_env.sh
[[ ${DEVICE:-cuda} == cpu ]] && export CUDA_VISIBLE_DEVICES=
# Without a network mvq eval lists LPIPS and FID as unavailable after trying their download, as
# the CPU cells did; where that try would hang instead of failing at once, skip it.
timeout 10 "$PY" -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" \
  > /dev/null 2>&1
if (($? == 124)); then
  export MVQ_OFFLINE=1
  echo "device_study: name lookups hang here: MVQ_OFFLINE=1 (eval says so for LPIPS and FID)"
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_study.XXXXXX")
out=()
[[ -n ${SWEEP_OUT:-} ]] && out=(--out "$SWEEP_OUT")
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda:', torch.cuda.is_available() \
  and torch.cuda.get_device_name(0))"

"$PY" benchmarks/device_study.py run "$sweep" --minutes "$minutes" --jobs "${JOBS:-4}" \
  --min-start "${MIN_START:-2}" ${CELLS:+--cells "$CELLS"} ${THREADS:+--threads "$THREADS"} \
  "${out[@]}" --work "$WORK"
ran=$?
"$PY" benchmarks/device_study.py pack "$sweep" "${out[@]}" --record "$WORK/run.json" \
  --archive "$OUT/study.tar.gz" --logs "$OUT/study_logs.tar.gz" --job-logs "$WORK/logs"
packed=$?
ls -l "$OUT"
exit $((ran || packed))
