#!/usr/bin/env bash
# Run here before a device call: fills .device/ (ignored by git), which the device tool's carry
# sends beside the working tree, with what the GPU machine lacks (no network, no Debian
# package, mvq not installed; see benchmarks/device_env.sh for how the scripts use it):
#   .device/fashion-mnist/  Fashion-MNIST's four .gz files (30 MB; the same bytes as here)
#   .device/site/           lpips and torch_fidelity from .venv (pure Python, < 1 MB)
#   .device/git/            this machine's git binary and HEAD's commit and trees (head.tar.gz)
# Then: run(command="bash benchmarks/device_checks.sh", carry=[".device"], timeout_s=560).
# Run it again right before the call when HEAD moved: the study's records name that commit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
FMNIST_SRC=${FMNIST_SRC:-/usr/share/datasets/fashion-mnist}
D=.device
rm -rf "$D"
mkdir -p "$D/fashion-mnist" "$D/site" "$D/git/bin"
cp "$FMNIST_SRC"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$D/fashion-mnist/"
for pkg in lpips torch_fidelity; do
  cp -r "$("$PY" -c "import $pkg, os; print(os.path.dirname($pkg.__file__))")" "$D/site/"
done
find "$D/site" -name __pycache__ -prune -exec rm -rf {} +
cp "$(command -v git)" "$D/git/bin/git"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# commits and trees only (no file contents, ~100 kB): enough for rev-parse, status, ls-files
git clone -q --depth 1 --filter=blob:none --no-checkout \
  --upload-pack='git -c uploadpack.allowFilter=true upload-pack' "file://$PWD" "$tmp/head"
tar czf "$D/git/head.tar.gz" -C "$tmp/head" .git
git rev-parse HEAD > "$D/git/HEAD_COMMIT"
echo "$D: $(du -sh "$D" | cut -f1) (HEAD $(git rev-parse --short HEAD)); the working tree that" \
  "travels: $(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)" \
  "bytes; together at most 64 MiB. Carry: [\".device\"]"
