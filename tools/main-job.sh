#!/usr/bin/env bash
# Set up the workspace and run the main job (tools/main_job.py) with the bundled defaults, offline.
# Arguments go to the job, e.g. `bash tools/main-job.sh --input my.tif --voxel-size 30,5,5`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if [ -z "${EMSSL_DATA:-}" ] && [ -d ../shared/data ]; then
  export EMSSL_DATA=$(cd ../shared/data && pwd)
fi
exec .venv/bin/python tools/main_job.py "$@"
