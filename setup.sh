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
  "$PIP" install -q -c constraints.txt -e '.[test,ui]'
  "$PIP" install -q -c constraints.txt --no-deps -r requirements-reference.txt
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
