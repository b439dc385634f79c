#!/usr/bin/env bash
# Set up sa-jax in ./.venv. `bash setup.sh` installs the package; `bash setup.sh test` adds the
# CPU PyTorch references the parity tests compare against; `bash setup.sh tpu` (and `test`) adds libtpu in
# .tpu/ for TPU compiles without a TPU (`--plan --topology`). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip"
"$PIP" install -q --upgrade pip
# libtpu, for `--plan --topology` (TPU compiles on this CPU), goes into .tpu/ and not into the environment:
# importable, it would make every JAX process probe for a TPU. It is the build jax[tpu] pins for this jax.
install_libtpu() {
  local req
  req=$(.venv/bin/python -c 'from importlib.metadata import requires
print(next(r.split(";")[0].strip() for r in requires("jax") if r.startswith("libtpu")))')
  [ -f .tpu/libtpu/libtpu.so ] && .venv/bin/python -c "import sys; sys.path.insert(0, '.tpu')
from importlib.metadata import version; from packaging.requirements import Requirement
sys.exit(0 if Requirement('$req').specifier.contains(version('libtpu')) else 1)" 2>/dev/null && return 0
  "$PIP" install -q --no-deps --upgrade --target .tpu "$req" \
    || echo "libtpu ($req) could not be installed: TPU topology plans and their tests are skipped"
}
if [ "${1:-}" = "tpu" ]; then
  "$PIP" install -q -c constraints.txt -e '.[ui]'
  install_libtpu
elif [ "${1:-}" = "test" ]; then
  "$PIP" install -q -c constraints.txt -e '.[test,ui]'
  "$PIP" install -q -c constraints.txt --no-deps -r requirements-reference.txt
  install_libtpu
  # The web UI's browser tests drive Debian's chromium (Playwright's own browser download is not reachable).
  if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the browser tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "chromium could not be installed: tests/test_ui_browser.py will be skipped"
  fi
else
  "$PIP" install -q -c constraints.txt -e '.[ui]'
fi
echo "sa-jax is set up in .venv ($(.venv/bin/python -c 'import jax; print("jax", jax.__version__)'))"
