#!/usr/bin/env bash
# Set up the EM-SSL workspace on a fresh machine: the Debian packages napari's tests need (when
# running as root), a virtual environment at .venv, and the four packages installed editable with
# their test extras, every pip install under tools/constraints.txt. Safe to re-run: it skips the
# pip step when nothing it depends on changed since the last successful run.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxcb-cursor0 libxkbcommon-x11-0
  libgl1 libegl1 libdbus-1-3 libfontconfig1 libglib2.0-0)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
elif ! command -v Xvfb >/dev/null; then
  echo "setup: not root, so Xvfb and the Qt xcb libraries were not installed; napari tests need:" >&2
  echo "       ${APT_PACKAGES[*]}" >&2
fi

# torch 2.14.1 wheels for CPython 3.11 are what the constraints pin; prefer that interpreter.
PY=${EMSSL_PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

# The CUDA build of torch alone is ~5.5 GB in the venv; fail early and clearly on a full disk
# rather than with pip's "[Errno 28]" half way through an install.
need_gb=${EMSSL_SETUP_NEED_GB:-9}
free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
if [ ! -f .venv/.emssl-setup-stamp ] && [ "$free_gb" -lt "$need_gb" ]; then
  echo "setup: only ${free_gb} GB free on $(df -P . | awk 'NR==2 {print $6}'); a fresh .venv needs ~${need_gb} GB" >&2
  exit 1
fi

stamp=.venv/.emssl-setup-stamp
want=$(cat tools/constraints.txt tools/requirements-dev.txt packages/*/pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing packages into .venv (torch first, then the workspace)"
  PIP=(.venv/bin/python -m pip install -q --no-cache-dir --disable-pip-version-check -c tools/constraints.txt)
  # torch and torchvision together first: pip then never reaches for another torch build.
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1 2> >(grep -v '^WARNING: Location' >&2)
  "${PIP[@]}" -r tools/requirements-dev.txt \
    -e 'packages/em5m[test]' -e 'packages/emdino[test]' \
    -e 'packages/omniem[test]' -e 'packages/napari-omniem[test]' 2> >(grep -v '^WARNING: Location' >&2)
  echo "$want" > "$stamp"
else
  echo "setup: .venv is up to date"
fi

# A separate venv with the real `webknossos` package writes WebKnossos test fixtures; it pins
# versions that must not leak into .venv (see the script).
bash tools/setup-webknossos-venv.sh >/dev/null
