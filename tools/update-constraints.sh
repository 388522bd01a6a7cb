#!/usr/bin/env bash
# Regenerate tools/constraints.txt from the working .venv after a dependency change, so that every
# install (setup, CI, clean-venv packaging tests, docs) resolves to the same versions.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Pins for every install in this workspace (tools/setup.sh, CI, docs): pip install -c tools/constraints.txt ..."
  echo "# torch and torchvision are pinned as a pair: any other torch pulls gigabytes or breaks torchvision."
  echo "# Regenerate with tools/update-constraints.sh after changing a dependency."
  .venv/bin/python -m pip freeze --exclude-editable --disable-pip-version-check | grep -v -e '^-e' -e ' @ ' | LC_ALL=C sort -f
} > tools/constraints.txt.new
grep -q '^torch==2.14.1$' tools/constraints.txt.new && grep -q '^torchvision==0.29.1$' tools/constraints.txt.new
mv tools/constraints.txt.new tools/constraints.txt
