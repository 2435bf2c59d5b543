#!/usr/bin/env bash
# The front door on this machine (issue 28): `make install` and `make demo` from fresh clones
# with empty caches (XDG_CACHE_HOME, and so pip's and mvq's caches, empty; the torch wheels and
# Fashion-MNIST where the machine keeps them), for this checkout's HEAD and for a baseline
# commit measured in the same run on the same machine, then benchmarks/tokenizers.py at HEAD.
#
#   bash benchmarks/front_door.sh [BASELINE_REV|none]     # from the repository root, idle machine
#
# BASELINE_REV defaults to adc026c, the last commit before issue 28's changes (the classifier
# trained on every new machine, NCHW training); commit first: the clones are of commits. Run it alone: another job on the 2 cores slows
# both. It takes twice a demo plus the installs (about 10 minutes on a Zen 5 EPYC, 2026-12-05).
# Prints each run's stage table as it goes and, last, one JSON line: per commit the install, job
# and total seconds (and the job's own stage times where it prints them), the target (360 s all
# in), the CPU with its widest vector extension and the tokenizer benchmark's gemm fractions.
# The logs stay in the /tmp/front_door.* folder it names; the clones and caches are removed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
baseline=${1:-adc026c}
head=$(git -C "$repo" rev-parse --short HEAD)
work=$(mktemp -d /tmp/front_door.XXXXXX)
trap 'rm -rf "$work"/baseline "$work"/head "$work"/cache_*; echo "logs: $work" >&2' EXIT

measure() {  # measure NAME REV: fresh clone at REV, empty caches, install then demo, timed
  local name=$1 rev=$2 dir="$work/$1"
  git clone -q "$repo" "$dir"
  git -C "$dir" checkout -q "$rev"
  mkdir -p "$work/cache_$name"
  local t0 t1 t2
  t0=$(date +%s.%N)
  (cd "$dir" && XDG_CACHE_HOME="$work/cache_$name" make install) >"$work/$name.install.log" 2>&1 ||
    { tail -n 30 "$work/$name.install.log" >&2; echo "make install failed at $rev" >&2; exit 1; }
  t1=$(date +%s.%N)
  (cd "$dir" && XDG_CACHE_HOME="$work/cache_$name" make demo) >"$work/$name.demo.log" 2>&1 ||
    { tail -n 30 "$work/$name.demo.log" >&2; echo "make demo failed at $rev" >&2; exit 1; }
  t2=$(date +%s.%N)
  awk -v n="$name" -v r="$rev" -v a="$t0" -v b="$t1" -v c="$t2" \
    'BEGIN { printf "%s %s %.1f %.1f\n", n, r, b - a, c - b }' | tee -a "$work/times.txt" >&2
  sed -n '/^Stage times on /,/^| total/p' "$work/$name.demo.log" >&2
}

[ "$baseline" = none ] || measure baseline "$baseline"
measure head "$head"
(cd "$work/head" && OMP_NUM_THREADS=2 .venv/bin/python benchmarks/tokenizers.py) \
  >"$work/tokenizers.log" 2>&1
"$work/head/.venv/bin/python" - "$work" <<'EOF'
import json, re, sys
from pathlib import Path

from mvq.experiments.demo import cpu_model

work = Path(sys.argv[1])
out = {"cpu": cpu_model(), "target_total_s": 360}
for line in (work / "times.txt").read_text().splitlines():
    name, rev, install, demo = line.split()
    log = (work / f"{name}.demo.log").read_text()
    table = log.split("Stage times on ")[1] if "Stage times on " in log else ""
    stages = {m[1]: float(m[2]) for m in re.finditer(r"^\| ([^|]+?) \| ([0-9.]+) \|$", table, re.M)}
    out[name] = {
        "rev": rev,
        "install_s": round(float(install), 1),
        "demo_s": round(float(demo), 1),  # make demo: the job, and whatever it installs first
        "total_s": round(float(install) + float(demo), 1),
        "stages_s": stages,
    }
bench = (work / "tokenizers.log").read_text().strip().splitlines()[-1]
out |= {k: v for k, v in json.loads(bench).items() if k.startswith("gemm_fraction") or k == "gemm_gflops"}
if "baseline" in out:
    out["head_over_baseline_total"] = round(out["head"]["total_s"] / out["baseline"]["total_s"], 3)
print(json.dumps(out))
EOF
