"""Which packages CI must test for a change: those touched, and every layer above them.

The layers are em5m <- emdino <- omniem <- napari-omniem: a change to em5m retests all four, a
change to napari-omniem only itself. A change outside packages/ (tools, root config, CI) retests
everything. Prints a JSON list for a GitHub Actions matrix.

Usage: python tools/ci/affected_packages.py BASE_REF   (compares BASE_REF...HEAD)
       python tools/ci/affected_packages.py --files path ...
"""

from __future__ import annotations

import json
import subprocess
import sys

LAYERS = ["em5m", "emdino", "omniem", "napari-omniem"]
DOCS_ONLY = ("docs/", "README.md")


def affected(changed: list[str]) -> list[str]:
    lowest = len(LAYERS)
    for path in changed:
        if path.startswith(DOCS_ONLY):
            continue
        parts = path.split("/")
        if parts[0] == "packages" and len(parts) > 1 and parts[1] in LAYERS:
            lowest = min(lowest, LAYERS.index(parts[1]))
        else:
            return list(LAYERS)
    return LAYERS[lowest:]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--files"]:
        changed = argv[1:]
    else:
        base = argv[0] if argv else "origin/main"
        diff = subprocess.run(
            ["git", "diff", "--name-only", f"{base}...HEAD"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        changed = diff.stdout.split()
    print(json.dumps(affected(changed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
