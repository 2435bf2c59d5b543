#!/usr/bin/env bash
# The GPU acceptance run (issue 30): one prepared run proving training, sampling and evaluation
# on CUDA in at most BUDGET_S = 480 s of one GPU, with logs and a summary JSON. First run on an
# H200 with torch 2.11 on 2026-12-04 (results/device/README.md).
#
# Parts (PARTS, default all; the first four at once, then the benchmarks one by one, alone):
#   tests         pytest -m device with MVQ_TEST_DEVICE=$DEVICE (quantizers, the MH-Dropout
#                 search against the CPU reference, priors, a GAN step with LPIPS, eval's
#                 features, exact resume), TF32 off and deterministic algorithms on;
#   e2e_mvqvae    mvq train MVQVAE (4+1, K = 16, J = 256) STEPS steps at batch BATCH with bf16
#                 and compile; a second run killed (SIGKILL) after its first checkpoint and
#                 resumed with --resume must end with the same weights (exact expected: both run
#                 with deterministic algorithms; tolerance rtol 1e-4, atol 1e-5); then encode,
#                 train-prior, sample and eval (the shipped fd_fmnist classifier);
#   e2e_mvqgan    MVQGAN at 64x64 (celeba64 networks, 1 channel: Fashion-MNIST resized), J = 2048,
#                 perceptual none (no VGG weights offline), bf16, GAN_STEPS steps, the
#                 discriminator from the middle on;
#   torchrun      torchrun --nproc_per_node=1 with NCCL: a group of one process (NCCL refuses two
#                 ranks on one GPU), an all-reduce, then mvq train in that group (DDP's gradient
#                 all-reduce itself needs two GPUs: not covered here);
#   bench_mh_dropout   benchmarks/mh_dropout.py --js 16,2048: speedup over the all-in-graph
#                      reference, peak memory J = 2048 / J = 16;
#   bench_train_step   benchmarks/train_step.py, MVQVAE at B = 256: images/s fp32, bf16, each
#                      eager and compiled;
#   bench_sampling     benchmarks/sampling.py against Table 6's GPU column (RTX 2080).
# A part that fails, times out or finds no time left is named at the end (exit 1); the others
# still run. Output in OUT (default results/device/; the device tool's $OUT there):
# summary.json (each part's status, wall time and its last JSON line, the machine), logs.tar.gz
# (one log per part) and device_checks.log (this script's output): three files.
#
# Data: the GPU machine has no network and no Debian package. Before the call, here:
#   bash benchmarks/device_prepare.sh     # .device/: Fashion-MNIST's 4 .gz files, lpips and
#                                         # torch_fidelity (absent there), git and HEAD
# then, with the device tool:  run(command="bash benchmarks/device_checks.sh",
#   carry=[".device"], timeout_s=560). benchmarks/device_env.sh links .device/fashion-mnist/*.gz
# into mvq's user cache ($XDG_CACHE_HOME/mvq/fashion_mnist) when mvq finds no Fashion-MNIST and
# puts .device/site on PYTHONPATH; the machine's own python3 runs everything (PYTHON to change).
# The speed benchmarks use synthetic tensors.
#
# Budget, measured on the H200 (2026-12-04): machine start ~35 s, outside the budget; the
# parallel parts 71-87 s, the benchmarks 33-65 s each: 283 s in all.
# Dry run on the CPU (tiny sizes, no compile; tests/test_device_scripts.py runs it):
#   DEVICE=cpu OUT=/tmp/dc bash benchmarks/device_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRIPT=$ROOT/benchmarks/device_checks.sh
export OUT=${OUT:-results/device} DEVICE=${DEVICE:-cuda} MVQ_OFFLINE=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8 TQDM_MININTERVAL=10
if [[ ${1:-} != --part ]]; then
  # shellcheck source=benchmarks/device_env.sh
  source benchmarks/device_env.sh  # PYTHONPATH, Fashion-MNIST, git (once; the parts inherit)
fi
export PY=${PY:-${PYTHON:-python3}}
HELP="$PY $ROOT/benchmarks/device_checks.py"
if [[ $DEVICE == cpu ]]; then  # the dry run: every command, tiny sizes, no compile
  : "${STEPS:=24}" "${BATCH:=16}" "${CKPT:=4}" "${COMPILE:=false}" "${PRIOR_STEPS:=4}"
  : "${N_SAMPLES:=32}" "${N_EVAL:=256}" "${GAN_STEPS:=3}" "${GAN_J:=16}" "${GAN_BATCH:=4}"
  : "${JS:=8}" "${REPEATS:=1}" "${TS_BATCH:=8}" "${TS_STEPS:=4}" "${TS_PRECISIONS:=fp32}"
  : "${SAMPLING:=--cases 1+1 --min-time 0.05 --no-naive --batch 4}" "${TESTS_COLLECT_ONLY:=1}"
  : "${TINY:=1}" "${BUDGET_S:=170}"
else
  : "${STEPS:=300}" "${BATCH:=256}" "${CKPT:=100}" "${COMPILE:=true}" "${PRIOR_STEPS:=300}"
  : "${N_SAMPLES:=512}" "${N_EVAL:=5000}" "${GAN_STEPS:=100}" "${GAN_J:=2048}" "${GAN_BATCH:=32}"
  : "${JS:=16,2048}" "${REPEATS:=5}" "${TS_BATCH:=256}" "${TS_STEPS:=30}"
  : "${TS_PRECISIONS:=fp32,bf16}" "${SAMPLING:=--min-time 1}" "${TESTS_COLLECT_ONLY:=0}"
  : "${TINY:=0}" "${BUDGET_S:=480}"
fi
export STEPS BATCH CKPT COMPILE PRIOR_STEPS N_SAMPLES N_EVAL GAN_STEPS GAN_J GAN_BATCH JS REPEATS
export TS_BATCH TS_STEPS TS_PRECISIONS SAMPLING TESTS_COLLECT_ONLY TINY BUDGET_S HELP ROOT
PARALLEL=(tests e2e_mvqvae e2e_mvqgan torchrun)
SERIAL=(bench_mh_dropout bench_train_step bench_sampling)
declare -A LIMIT=([tests]=240 [e2e_mvqvae]=300 [e2e_mvqgan]=240 [torchrun]=180
                  [bench_mh_dropout]=110 [bench_train_step]=150 [bench_sampling]=90)

tiny_tokenizer() {  # narrow networks for the CPU dry run (nothing on the GPU)
  ((TINY)) && printf -- '--set model_config.%s ' channels=16 res_channels=8 num_hypotheses=8
}

mvq() { "$PY" -m mvq.cli "$@"; }

# --- the parts (each runs as `device_checks.sh --part NAME`, in its own process group) ------

part_tests() {  # the dry run only collects them: CI runs them on the CPU anyway
  local pytest=("$PY" -m pytest -m device -p no:cacheprovider -o addopts= tests)
  if ((TESTS_COLLECT_ONLY)); then
    "${pytest[@]}" --collect-only -q | tee "$W/collected.txt" || return
    echo "{\"collected\": $(grep -c '::' "$W/collected.txt"), \"ok\": true}"
    return
  fi
  # a module that cannot be imported there (a package missing) fails the part, not the rest
  MVQ_TEST_DEVICE=$DEVICE "${pytest[@]}" -q -rs --continue-on-collection-errors \
    --junitxml="$W/tests.xml"
  local rc=$?
  "$PY" - "$W/tests.xml" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
s = root if root.tag == "testsuite" else root.find("testsuite")
counts = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
ok = counts["tests"] > counts["skipped"] and not counts["failures"] + counts["errors"]
print(json.dumps(counts | {"seconds": float(s.get("time", 0)), "ok": ok}))
EOF
  return "$rc"
}

part_e2e_mvqvae() {
  local cfg=configs/mvqvae_fmnist_s4_k16.yaml pid step
  local args=(train --config "$cfg" --max-steps "$STEPS" --batch-size "$BATCH"
    --set "train.device=$DEVICE" --set train.precision=bf16 --set "train.compile=$COMPILE"
    --set "train.ckpt_every=$CKPT" --set "train.log_every=$CKPT" --set train.val_batches=4
    --set "train.val_every=$STEPS" --set "train.sample_every=$STEPS" $(tiny_tokenizer))
  $HELP mvq "${args[@]}" --out "$W/full" > "$W/full.log" 2>&1 &
  local full=$!
  $HELP mvq "${args[@]}" --out "$W/cut" > "$W/cut.log" 2>&1 &
  pid=$!
  until [[ -f $W/cut/checkpoints/last.pt ]] || ! kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null; wait "$pid"
  if [[ ! -f $W/cut/checkpoints/last.pt ]]; then
    echo "the second run ended without a checkpoint:"; tail -n 20 "$W/cut.log"; return 1
  fi
  cp "$W/cut/checkpoints/last.pt" "$W/killed.pt"  # what the resume starts from
  echo "killed the second run after its first checkpoint"
  $HELP mvq "${args[@]}" --out "$W/cut" --resume || return
  wait "$full" || { cat "$W/full.log"; return 1; }
  tail -n 3 "$W/full.log"
  $HELP resume "$W/full" "$W/cut" --killed "$W/killed.pt" --steps "$STEPS" \
    --out "$W/resume.json" || return
  mvq encode --tokenizer "$W/full/model" --data fashion_mnist --out "$W/tokens" \
    --device "$DEVICE" || return
  local prior_tiny=()
  ((TINY)) && prior_tiny=(--set model_config.primary_layers=1 --set model_config.secondary_layers=1)
  mvq train-prior --tokens "$W/tokens" --config configs/priors/transformer_4p1.yaml \
    --out "$W/prior" --max-steps "$PRIOR_STEPS" --set "train.device=$DEVICE" \
    --set train.val_batches=4 "${prior_tiny[@]}" 2>&1 | tee "$W/train_prior.log" || return
  mvq sample --tokenizer "$W/full/model" --prior "$W/prior/model" -n "$N_SAMPLES" \
    --out "$W/samples" --device "$DEVICE" || return
  mvq eval --tokenizer "$W/full/model" -n "$N_EVAL" --out "$W/eval_rec" --device "$DEVICE" \
    --metrics mse,psnr,ssim,fd_fmnist,random_mask || return
  mvq eval --tokenizer "$W/full/model" --prior "$W/prior/model" -n "$N_EVAL" \
    --metrics fd_fmnist,f_scores,prior_nll --out "$W/eval_samples" --device "$DEVICE" || return
  $HELP e2e "$W"
}

part_e2e_mvqgan() {
  local tiny=()
  ((TINY)) && tiny=(--set model_config.channels=8 --set model_config.res_channels=4
                    --set model_config.disc_channels=8 --set model_config.disc_layers=2)
  mvq train --config configs/mvqgan_celeba64_s4_k256.yaml --out "$W/gan" \
    --max-steps "$GAN_STEPS" --batch-size "$GAN_BATCH" --set data.name=fashion_mnist \
    --set data.image_size=64 --set model_config.in_channels=1 \
    --set model_config.perceptual=none --set "model_config.num_hypotheses=$GAN_J" \
    --set "model_config.disc_start=$((GAN_STEPS / 2))" --set "train.device=$DEVICE" \
    --set train.precision=bf16 --set train.val_batches=2 --set "train.log_every=$GAN_STEPS" \
    --set "train.sample_every=$GAN_STEPS" --set "train.ckpt_every=$GAN_STEPS" "${tiny[@]}"
}

part_torchrun() {
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    "$ROOT/benchmarks/device_checks.py" torchrun train \
    --config configs/mvqvae_fmnist_s4_k16.yaml --out "$W/ddp" --max-steps 20 \
    --batch-size "$BATCH" --device "$DEVICE" --set train.val_batches=2 \
    --set train.log_every=10 $(tiny_tokenizer)
}

part_bench_mh_dropout() {
  "$PY" benchmarks/mh_dropout.py --device "$DEVICE" --js "$JS" --repeats "$REPEATS" \
    --threads "$(nproc)"
}

part_bench_train_step() {
  local compile=(--compile)
  [[ $COMPILE == true ]] || compile=()
  "$PY" benchmarks/train_step.py --device "$DEVICE" --model mvqvae_fmnist_s4_k16 \
    --batch-size "$TS_BATCH" --steps "$TS_STEPS" --precisions "$TS_PRECISIONS" "${compile[@]}"
}

part_bench_sampling() {
  # shellcheck disable=SC2086  # SAMPLING is a list of options
  "$PY" benchmarks/sampling.py --device "$DEVICE" --threads "$(nproc)" $SAMPLING
}

if [[ ${1:-} == --part ]]; then  # one part, called by the loop below
  W=$WORK/runs/$2
  mkdir -p "$W"
  "part_$2"
  exit
fi

# --- the run ---------------------------------------------------------------------------------

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/device_checks.XXXXXX")}
mkdir -p "$WORK/logs" "$WORK/parts"
exec > >(tee -a "$OUT/device_checks.log") 2>&1
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
IFS=' ' read -r -a ASKED <<< "${PARTS:-${PARALLEL[*]} ${SERIAL[*]}}"
for p in "${ASKED[@]}"; do
  [[ -n ${LIMIT[$p]:-} ]] || { echo "unknown part '$p'; parts: ${!LIMIT[*]}"; exit 2; }
done

"$PY" - "$WORK/meta.json" <<'EOF'
import json, os, platform, subprocess, sys, time
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if gpu else None
meta = {"device": os.environ["DEVICE"], "gpu": gpu, "nvidia_smi": smi and smi.stdout.strip(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "budget_s": int(os.environ["BUDGET_S"]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
print(json.dumps(meta))
open(sys.argv[1], "w").write(json.dumps(meta))
EOF

record() {  # record NAME STATUS SECONDS EXIT_CODE: a part's outcome, then the summary again
  printf '{"status": "%s", "wall_s": %s, "exit_code": %s, "limit_s": %s}\n' "$2" "$3" "$4" \
    "${LIMIT[$1]}" > "$WORK/parts/$1.json"
  $HELP summarize "$WORK" "$OUT" --meta "$WORK/meta.json" > /dev/null
}

launch() {  # launch NAME: start a part in its own session, with a watchdog at its time limit
  local name=$1 left=$((DEADLINE - $(date +%s)))
  local limit=$((left < ${LIMIT[$name]} ? left : ${LIMIT[$name]}))
  if ((limit < 15)); then
    echo "== $name: skipped, $left s of the budget left"
    record "$name" no_time_left 0 -1
    return 1
  fi
  echo "== $name: started (limit $limit s)"
  setsid bash "$SCRIPT" --part "$name" > "$WORK/logs/$name.log" 2>&1 &
  PID[$name]=$!
  T0[$name]=$(date +%s)
  # the watchdog: its own group (finish kills it whole) and no hold on this script's output
  setsid bash -c "sleep $limit; touch $WORK/parts/$name.timeout; kill -TERM -- -${PID[$name]}
    sleep 10; kill -KILL -- -${PID[$name]}" > /dev/null 2>&1 &
  DOG[$name]=$!
}

finish() {  # finish NAME: wait for a launched part and record how it ended
  local name=$1 rc status
  wait "${PID[$name]}"; rc=$?
  kill -- "-${DOG[$name]}" 2>/dev/null; wait "${DOG[$name]}" 2>/dev/null
  kill -KILL -- "-${PID[$name]}" 2>/dev/null  # what the part left running (after a failure)
  local took=$(($(date +%s) - T0[$name]))
  status=ok
  ((rc != 0)) && status=failed
  [[ -f $WORK/parts/$name.timeout ]] && status=timeout
  ((rc == 0)) && ! $HELP claims "$WORK/logs/$name.log" && status=failed  # its JSON says "ok": false
  record "$name" "$status" "$took" "$rc"
  echo "== $name: $status in $took s (exit $rc); last lines:"
  tail -n 4 "$WORK/logs/$name.log" | cut -c1-300
}

declare -A PID T0 DOG
wanted() { [[ " ${ASKED[*]} " == *" $1 "* ]]; }
for p in "${PARALLEL[@]}"; do wanted "$p" && launch "$p"; done
for p in "${PARALLEL[@]}"; do [[ -n ${PID[$p]:-} ]] && finish "$p"; done
for p in "${SERIAL[@]}"; do wanted "$p" && launch "$p" && finish "$p"; done

$HELP summarize "$WORK" "$OUT" --meta "$WORK/meta.json" > /dev/null
"$PY" - "$OUT/summary.json" "$(($(date +%s) - START))" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
keys = ("ok", "resume_exact", "resume_max_abs_diff", "collected", "tests", "failures",
        "errors", "skipped", "world_size", "steps", "train_images_per_s",
        "speedup_vs_all_in_graph_j2048", "mem_ratio_j2048_over_j16", "images_per_s_bf16",
        "images_per_s_bf16_compile", "min_speedup_vs_table6_b64_cached")
for name, p in s["parts"].items():
    r = p["result"]
    shown = ", ".join(f"{k}={r[k]}" for k in keys if k in r)
    print(f"{name:17s} {p['status']:12s} {p['wall_s']:>4} s  {shown}")
print(f"total {sys.argv[2]} s of a {s.get('budget_s')} s budget; summary: {sys.argv[1]}")
if s["failed"]:
    print(f"failed: {' '.join(s['failed'])} (their logs: logs.tar.gz beside the summary)")
sys.exit(1 if s["failed"] else 0)
EOF
