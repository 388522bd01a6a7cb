"""The dataset catalog: validation, and bad entries that must not sink the whole catalog."""

from __future__ import annotations

import pytest

from em5m.catalog import (
    InvalidCatalogEntryError,
    MissingLicenceError,
    load_catalog,
    validate_entry,
)
from em5m.curate import REFERENCE_CATALOG
from em5m.errors import EMDataError

GOOD = "  - {id: %s, uri: /data/%s, modality: TEM, species: mouse, licence: MIT, citation: A}\n"


def _write(tmp_path, body: str, head: str = "version: 1\n"):
    path = tmp_path / "catalog.yaml"
    path.write_text(head + "datasets:\n" + body)
    return path


def test_entry_without_licence_is_recorded_and_the_rest_loads(tmp_path):
    body = (
        GOOD % ("a", "a")
        + "  - {id: nolic, uri: /data/b, modality: TEM, species: mouse, citation: B}\n"
        + "  - {id: blank, uri: /data/c, modality: TEM, species: mouse, licence: '  ',"
        " citation: C}\n" + GOOD % ("d", "d")
    )
    cat = load_catalog(_write(tmp_path, body))
    assert [d.id for d in cat.datasets] == ["a", "d"]
    assert [(r.index, r.id, r.error) for r in cat.rejected] == [
        (1, "nolic", "MissingLicenceError"),
        (2, "blank", "MissingLicenceError"),
    ]
    assert "licence" in cat.rejected[0].message
    err = cat.rejected[0].to_error()
    assert isinstance(err, MissingLicenceError) and isinstance(err, EMDataError)


def test_other_invalid_entries_and_repeated_ids(tmp_path):
    body = (
        GOOD % ("a", "a")
        + "  - {id: bad, uri: /x, modality: MRI, species: mouse, licence: MIT, citation: B}\n"
        + "  - {uri: /y, modality: TEM, species: mouse, licence: MIT, citation: C}\n"
        + GOOD % ("a", "again")
        + "  - just a string\n"
    )
    cat = load_catalog(_write(tmp_path, body))
    assert [d.id for d in cat.datasets] == ["a"]
    rejected = {r.index: r for r in cat.rejected}
    assert set(rejected) == {1, 2, 3, 4}
    assert all(r.error == "InvalidCatalogEntryError" for r in rejected.values())
    assert "modality" in rejected[1].message
    assert rejected[2].id is None and "id" in rejected[2].message
    assert "repeated" in rejected[3].message


def test_strict_mode_raises_the_first_rejection(tmp_path):
    body = GOOD % ("a", "a") + "  - {id: x, uri: /b, modality: TEM, species: m, citation: B}\n"
    with pytest.raises(MissingLicenceError, match=r"datasets\[1\] \(x\)"):
        load_catalog(_write(tmp_path, body), strict=True)


def test_top_level_problems_still_fail_the_file(tmp_path):
    with pytest.raises(EMDataError, match="version"):
        load_catalog(_write(tmp_path, GOOD % ("a", "a"), head="version: 2\n"))
    with pytest.raises(EMDataError, match="tile_size"):
        load_catalog(_write(tmp_path, GOOD % ("a", "a"), head="defaults: {tile_size: 3}\n"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {not: a list}\n")
    with pytest.raises(EMDataError, match="datasets"):
        load_catalog(bad)
    with pytest.raises(EMDataError, match="does not exist"):
        load_catalog(tmp_path / "missing.yaml")


def test_environment_variables_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("EM_TEST_ROOT", "/mnt/em")
    cat = load_catalog(_write(tmp_path, GOOD.replace("/data/", "${EM_TEST_ROOT}/") % ("a", "a")))
    assert cat.datasets[0].uri == "/mnt/em/a"
    monkeypatch.delenv("EM_TEST_ROOT")
    with pytest.raises(EMDataError, match="EM_TEST_ROOT"):
        load_catalog(tmp_path / "catalog.yaml")


def test_validate_entry_names_the_error():
    with pytest.raises(MissingLicenceError):
        validate_entry({"id": "a", "uri": "/x", "modality": "TEM", "species": "m", "citation": "c"})
    with pytest.raises(InvalidCatalogEntryError, match="voxel_size_nm"):
        validate_entry(
            {
                "id": "a",
                "uri": "/x",
                "modality": "TEM",
                "species": "m",
                "licence": "MIT",
                "citation": "c",
                "voxel_size_nm": [1, 2, 3, 4],
            }
        )


def test_sampling_merges_defaults(tmp_path):
    body = (
        "  - {id: a, uri: /a, modality: TEM, species: m, licence: MIT, citation: A,"
        " sampling: {max_tiles: 5, roi: [0, 10, 0, 20]}}\n"
    )
    cat = load_catalog(_write(tmp_path, body, head="defaults: {pixel_sizes_nm: [4, 8]}\n"))
    s = cat.sampling_for(cat.datasets[0])
    assert s.max_tiles == 5 and s.pixel_sizes_nm == [4, 8] and s.tile_size == 224
    assert s.roi == [0, 10, 0, 20]


def test_reference_catalog_lists_every_emssl_dataset(emssl_data, monkeypatch):
    monkeypatch.setenv("EMSSL_DATA", str(emssl_data))
    cat = load_catalog(str(REFERENCE_CATALOG))
    assert cat.rejected == []
    folders = {d.uri.split(str(emssl_data))[1].split("/")[1] for d in cat.datasets}
    on_disk = {p.name for p in emssl_data.iterdir() if p.is_dir()}
    assert folders == on_disk
    assert all(d.voxel_size_nm for d in cat.datasets)
