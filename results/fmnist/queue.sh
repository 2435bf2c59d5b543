#!/usr/bin/env bash
# Runs the study's cells in priority order (results/fmnist/queue.txt: "<sweep> <cell>" per line),
# one `mvq sweep FILE --cell I` at a time per worker; start it once per worker. Workers claim
# lines with mkdir (atomic), so two never run the same cell; a finished cell is skipped by the
# sweep itself, so rerunning after an interruption resumes where it stopped.
#   results/fmnist/queue.sh CLAIMS_DIR THREADS [QUEUE_FILE]    (from the repository root)
# QUEUE_FILE (default: this folder's queue.txt) names sweeps relative to its own folder, e.g.
# results/leaderboard/queue.txt; MVQ_STUDY_OUT replaces that folder as the root of the outputs.
set -u
claims=${1:?claims folder}; threads=${2:-1}
queue=${3:-$(dirname "$0")/queue.txt}
mkdir -p "$claims"
here=$(cd "$(dirname "$queue")" && pwd)
py=${MVQ_PYTHON:-.venv/bin/python}
while read -r sweep cell; do
  [[ -z "$sweep" || "$sweep" == \#* ]] && continue
  mkdir "$claims/$sweep-$cell" 2>/dev/null || continue
  echo "== $(date -u +%FT%TZ) $sweep cell $cell (threads $threads)"
  OMP_NUM_THREADS=$threads "$py" -m mvq.cli sweep "$here/$sweep.yaml" --cell "$cell" \
    --threads "$threads" --out "${MVQ_STUDY_OUT:-$here}/$sweep" || echo "!! $sweep $cell failed: $?"
done < "$queue"
