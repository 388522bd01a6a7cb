"""The shipped starter catalog validates and every entry names a source em5m can open."""

from __future__ import annotations

from em5m.catalog import load_catalog
from em5m.catalogs import catalog_path
from em5m.sources import bossdb, connector_for, empiar, openorganelle, webknossos


def test_starter_catalog_validates_strictly() -> None:
    catalog = load_catalog(catalog_path("starter"), strict=True)
    assert catalog.rejected == []
    kinds = {d.uri.split("://", 1)[0] for d in catalog.datasets}
    assert {"openorganelle", "webknossos", "bossdb", "empiar"} <= kinds
    for entry in catalog.datasets:
        assert entry.licence.strip() and entry.citation.strip()


def test_every_starter_uri_parses_for_its_connector() -> None:
    for entry in load_catalog(catalog_path("starter"), strict=True).datasets:
        opener = connector_for(entry.uri)
        scheme = entry.uri.split("://", 1)[0]
        if scheme == "empiar":
            accession, _, path = empiar.parse_uri(entry.uri)
            assert accession.startswith("EMPIAR-") and path.endswith(empiar.VOLUME_EXTENSIONS)
        elif scheme == "bossdb":
            assert len(bossdb.parse_uri(entry.uri)) == 4
        elif scheme == "webknossos":
            ref = webknossos.parse_remote(entry.uri, webknossos.DEFAULT_SERVER)
            assert ref.organization and ref.name
        elif scheme == "openorganelle":
            dataset_id = entry.uri.split("://", 1)[1].split("/", 1)[0]
            assert dataset_id.startswith("jrc_")
            assert openorganelle.candidates(dataset_id, None)[0].endswith("fibsem-uint8")
        else:
            assert opener.__name__ == "open_store_url"
