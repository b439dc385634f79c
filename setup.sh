#!/usr/bin/env bash
# Set up sa-jax in ./.venv. `bash setup.sh` installs the package; `bash setup.sh test` adds the
# CPU PyTorch references the parity tests compare against. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip"
"$PIP" install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  "$PIP" install -q -c constraints.txt -e '.[test]'
  "$PIP" install -q -c constraints.txt --no-deps -r requirements-reference.txt
else
  "$PIP" install -q -c constraints.txt -e .
fi
echo "sa-jax is set up in .venv ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
