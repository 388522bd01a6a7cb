#!/usr/bin/env bash
# Set up the workspace (tools/setup.sh) and run every check CI runs: ruff, the import-layering
# contracts, the docs build (--strict) and the test suite (without tests marked slow).
# Extra arguments go to pytest, e.g. `bash tools/test.sh packages/em5m -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash tools/setup.sh

# Real EM data for the tests: EMSSL_DATA, else the shared folder beside the checkout.
if [ -z "${EMSSL_DATA:-}" ] && [ -d ../shared/data ]; then
  EMSSL_DATA=$(cd ../shared/data && pwd)
fi
export EMSSL_DATA=${EMSSL_DATA:?set EMSSL_DATA to the real EM data folder (see README)}
echo "test: EMSSL_DATA=$EMSSL_DATA"

echo "test: ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "test: import layering"
.venv/bin/lint-imports
echo "test: docs (mkdocs --strict)"
docs_out=$(mktemp -d)
.venv/bin/mkdocs build --strict --quiet -d "$docs_out"
rm -rf "$docs_out"
echo "test: pytest"
set +e
.venv/bin/python -m pytest -m "not slow" "$@"
rc=$?
set -e
echo "test: finished in $(( $(date +%s) - start )) s (pytest exit $rc)"
exit $rc
