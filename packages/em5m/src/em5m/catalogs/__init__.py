"""Catalogs shipped with em5m (YAML package data).

- ``starter.yaml``: real public EM datasets on OpenOrganelle, WebKnossos, BossDB and EMPIAR, with
  licences and citations (unverified facts are marked in comments). See docs/em5m/sources.md.

Examples:
    >>> from em5m.catalog import load_catalog
    >>> cat = load_catalog(catalog_path("starter"))
    >>> sorted({d.uri.split("://")[0] for d in cat.datasets})
    ['bossdb', 'empiar', 'openorganelle', 'precomputed', 'webknossos']
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["catalog_path"]


def catalog_path(name: str = "starter") -> Path:
    """Path of a shipped catalog (``"starter"`` -> ``.../em5m/catalogs/starter.yaml``).

    Raises:
        FileNotFoundError: no such catalog ships with em5m.
    """
    path = Path(str(files(__package__).joinpath(f"{name}.yaml")))
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no catalog {name!r}; shipped: {', '.join(shipped)}")
    return path
