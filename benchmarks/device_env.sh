# Sourced by benchmarks/device_checks.sh and device_study.sh (from the repository root): the
# environment they need on a lent GPU machine, which runs a copy of the working tree with its
# own python3, no network and no mvq installed. It uses what benchmarks/device_prepare.sh put
# in .device/ here (the device tool's carry sends it); anywhere else it changes nothing.
#   - PYTHONPATH: src/ (mvq) and .device/site (lpips, torch_fidelity: mvq eval imports them);
#   - Fashion-MNIST: when mvq finds none, .device/fashion-mnist/*.gz (or $FMNIST_DIR) linked
#     into mvq's user cache, $XDG_CACHE_HOME/mvq/fashion_mnist, where it looks by default;
#   - git: when the copy has no repository, or one at another HEAD than .device/git/HEAD_COMMIT,
#     .device/git/head.tar.gz (a shallow clone of HEAD)
#     becomes .git, with .device/git/bin/git when the machine has no git: sweep records name
#     the commit (and +dirty for uncommitted changes) as they do here.
ROOT=${ROOT:-$PWD}
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[[ -d $ROOT/.device/site ]] && export PYTHONPATH="$PYTHONPATH:$ROOT/.device/site"

cache=${XDG_CACHE_HOME:-$HOME/.cache}/mvq/fashion_mnist
if ! ls /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte* \
    "$cache"/t10k-images-idx3-ubyte* > /dev/null 2>&1 && ! "$PY" -c \
    "from mvq.data import build_dataset as b; b('fashion_mnist', None, 'val')" 2> /dev/null; then
  fmnist=${FMNIST_DIR:-$ROOT/.device/fashion-mnist}
  if [[ -d $fmnist ]]; then
    mkdir -p "$cache" && ln -sf "$fmnist"/*.gz "$cache/"
    echo "device_env: Fashion-MNIST from $fmnist, linked into $cache"
  else
    echo "device_env: no Fashion-MNIST (run benchmarks/device_prepare.sh and carry .device)"
  fi
fi

# The tool may send a .git from the session's start: a HEAD other than the one prepared would
# name the wrong commit in the records (seen on the first GPU run), so that one is set aside.
prepared=$(cat "$ROOT/.device/git/HEAD_COMMIT" 2> /dev/null)
sent=$(git -C "$ROOT" rev-parse HEAD 2> /dev/null)
if [[ -n $prepared && -n $sent && $sent != "$prepared" ]]; then
  echo "device_env: the copy's .git is at ${sent:0:7}, prepared ${prepared:0:7}: using the prepared"
  mv "$ROOT/.git" "$ROOT/.git.sent"
fi
if ! git -C "$ROOT" rev-parse HEAD > /dev/null 2>&1 && [[ -f $ROOT/.device/git/head.tar.gz ]]; then
  command -v git > /dev/null || export PATH="$ROOT/.device/git/bin:$PATH"
  # a copied tree: another owner, and file modes the copy may not keep
  export GIT_CONFIG_COUNT=2 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*' \
    GIT_CONFIG_KEY_1=core.fileMode GIT_CONFIG_VALUE_1=false
  if [[ ! -e $ROOT/.git ]]; then
    tar xzf "$ROOT/.device/git/head.tar.gz" -C "$ROOT" && git -C "$ROOT" reset -q
  fi
  echo "device_env: git $(git -C "$ROOT" rev-parse --short HEAD 2>&1 | head -1)"
fi
