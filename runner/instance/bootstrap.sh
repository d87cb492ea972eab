#!/bin/sh
# bootstrap.sh [PYTHON] - make sure this machine has a Python that can run the worker; write its path
# to python.path. Idempotent: a second run finds python.path ready and does nothing.
#   PYTHON given: use it; if it lacks the worker's packages, build a venv on it (keeping its site
#   packages, e.g. a CUDA torch) and pip install requirements.txt into that.
#   none given: the first ready one of the Deep Learning AMI's /opt/pytorch, conda's pytorch env,
#   python3; otherwise a venv on the first of them that exists.
set -u
cd "$(dirname "$0")"
ready() { "$1" -c 'import sys; assert sys.version_info >= (3, 10); import torch, torchvision, transformers, accelerate, bitsandbytes, PIL; from importlib.util import find_spec as f; assert f("openai") and f("tenacity")' >/dev/null 2>&1; }
found() { command -v "$1" 2>/dev/null; }
if [ -f python.path ] && ready "$(cat python.path)"; then
  echo "bootstrap: ready, $(cat python.path)"; exit 0
fi
if [ -n "${1:-}" ]; then
  base=$(found "$1") || { echo "bootstrap: python $1 not found on $(hostname)" >&2; exit 2; }
  candidates=$base
else
  candidates="/opt/pytorch/bin/python3 /opt/conda/envs/pytorch/bin/python3 python3"
  base=
fi
for py in $candidates; do
  p=$(found "$py") || continue
  [ -n "$base" ] || base=$p
  if ready "$p"; then echo "$p" > python.path; echo "bootstrap: ready, $p"; exit 0; fi
done
[ -n "$base" ] || { echo "bootstrap: no python3 on $(hostname)" >&2; exit 2; }
venv=${GPUBUDGET_VENV:-../../venv}
echo "bootstrap: building $venv on $base"
"$base" -m venv --system-site-packages "$venv" || { echo "bootstrap: cannot create a venv with $base" >&2; exit 3; }
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1
"$venv/bin/python" -m pip install -q -r requirements.txt || { echo "bootstrap: pip install -r requirements.txt failed" >&2; exit 4; }
ready "$venv/bin/python" || { echo "bootstrap: $venv/bin/python still cannot import the worker's packages" >&2; exit 5; }
cd "$venv" && echo "$(pwd)/bin/python" > "$OLDPWD/python.path"
echo "bootstrap: ready, $(cat "$OLDPWD/python.path")"
