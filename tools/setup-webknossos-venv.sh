#!/usr/bin/env bash
# Create (or reuse) a separate virtual environment with the real `webknossos` package, used only to
# WRITE test fixtures for em5m's WebKnossos connector (packages/em5m/tests/test_sources_webknossos.py).
#
# Why a separate venv: webknossos pins click/rich/typer/httpx/tensorstore versions that conflict with
# the workspace .venv, and it is AGPL-3.0; em5m reads WebKnossos datasets without it.
#
# Idempotent: does nothing when the venv already imports webknossos. The venv lives at
# .venv-webknossos/ (override with EMSSL_WK_VENV) and holds its own .gitignore ("*"), so git
# never sees it.
#
# Usage: bash tools/setup-webknossos-venv.sh        (prints the venv's python path on success)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EMSSL_WK_VENV:-.venv-webknossos}
# webknossos supports CPython >=3.10,<3.15; prefer the interpreter the workspace uses.
PY=${EMSSL_PYTHON:-$(command -v python3.11 || command -v python3)}
# Pinned so the fixtures (and their on-disk layout) do not change under the tests.
WK_SPEC=${EMSSL_WK_SPEC:-webknossos==4.3.3}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import webknossos" >/dev/null 2>&1; then
  echo "setup-webknossos-venv: $VENV is up to date" >&2
else
  echo "setup-webknossos-venv: creating $VENV with $($PY --version) and $WK_SPEC" >&2
  "$PY" -m venv "$VENV"
  printf '*\n' > "$VENV/.gitignore"
  "$VENV/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "$WK_SPEC"
  "$VENV/bin/python" -c "import webknossos"
fi
[ -f "$VENV/.gitignore" ] || printf '*\n' > "$VENV/.gitignore"
echo "$(cd "$VENV" && pwd)/bin/python"
