"""WebKnossos connector: a zarr3 dataset written by the real webknossos package (own venv), read
from disk and through a 127.0.0.1 server laid out like WEBKNOSSOS' API + Zarr streaming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import em5m_tests_fixtures_sources as fx  # registered by conftest.py
import numpy as np
import pytest

from em5m.sources import (
    SourceAuthError,
    SourceNotFoundError,
    UnsupportedSourceError,
    open_source,
)
from em5m.sources.webknossos import parse_layers, parse_voxel_size

wk_dataset = fx.wk_dataset

DATASET_ID = "65f0c0ffee0123456789abcd"
TOKEN = "secret-wk-token"


def _expected(wk_dataset: Path, mag: int) -> np.ndarray:
    """What webknossos wrote, as (z, y, x)."""
    xyz = np.load(wk_dataset.parent / f"expected_mag{mag}_xyz.npy")
    return xyz.transpose(2, 1, 0)


def test_local_dataset_mag1(wk_dataset: Path) -> None:
    vol = open_source(str(wk_dataset))
    expected = _expected(wk_dataset, 1)
    assert vol.axes == ("z", "y", "x")
    assert vol.shape == expected.shape == (10, 48, 64)
    assert vol.voxel_size == (35.0, 4.0, 4.0)
    meta = vol.metadata
    assert meta["source"] == "webknossos"
    assert meta["layer"] == "color" and meta["mag"] == "1"
    assert meta["bounding_box_mag1_xyz"] == {"top_left": [8, 16, 2], "size": [64, 48, 10]}
    assert [lv["mag"] for lv in meta["levels"]] == ["1", "2-2-1"]
    assert [lv["voxel_size"] for lv in meta["levels"]] == [(35.0, 4.0, 4.0), (35.0, 8.0, 8.0)]
    assert [lv["shape"] for lv in meta["levels"]] == [(10, 48, 64), (10, 24, 32)]
    np.testing.assert_array_equal(vol.compute(), expected)
    np.testing.assert_array_equal(vol.data[3, 10:20, 5:50].compute(), expected[3, 10:20, 5:50])


def test_local_dataset_mag_by_pixel_size(wk_dataset: Path) -> None:
    vol = open_source(f"file://{wk_dataset}", pixel_size_nm=8.0)
    assert vol.metadata["mag"] == "2-2-1"
    assert vol.voxel_size == (35.0, 8.0, 8.0)
    np.testing.assert_array_equal(vol.compute(), _expected(wk_dataset, 2))


def test_properties_parsing_legacy_and_wkw(tmp_path: Path, wk_dataset: Path) -> None:
    assert parse_voxel_size({"scale": [11.24, 11.24, 28]}, "u") == (11.24, 11.24, 28.0)
    assert parse_voxel_size({"scale": {"factor": [1, 1, 2], "unit": "micrometer"}}, "u") == (
        1000.0,
        1000.0,
        2000.0,
    )
    legacy = {
        "dataLayers": [
            {
                "name": "color",
                "category": "color",
                "dataFormat": "wkw",
                "boundingBox": {"topLeft": [0, 0, 0], "width": 8, "height": 8, "depth": 8},
                "wkwResolutions": [
                    {"resolution": 1, "cubeLength": 1024},
                    {"resolution": [2, 2, 1], "cubeLength": 1024},
                ],
            }
        ]
    }
    layer = parse_layers(legacy, "u")[0]
    assert [m.path for m in layer.mags] == ["color/1", "color/2-2-1"]
    iso = {"dataLayers": [{"name": "em", "dataFormat": "zarr3", "mags": [{"mag": [2, 2, 2]}]}]}
    mag = parse_layers(iso, "u")[0].mags[0]
    assert (mag.path, mag.alternatives) == ("em/2", ("em/2-2-2",))  # both namings are tried
    # A WKW dataset is refused with a message that says what to do.
    ds = tmp_path / "wkw_ds"
    shutil.copytree(wk_dataset, ds)
    props = json.loads((ds / "datasource-properties.json").read_text())
    props["dataLayers"][0]["dataFormat"] = "wkw"
    (ds / "datasource-properties.json").write_text(json.dumps(props))
    with pytest.raises(UnsupportedSourceError, match="only zarr, zarr3 and n5"):
        open_source(str(ds))
    with pytest.raises(SourceNotFoundError, match="layers: color"):
        open_source(str(wk_dataset), options={"layer": "segmentation"})


@pytest.fixture
def wk_server(http_server, wk_dataset: Path):
    """WEBKNOSSOS-like API and Zarr streaming for the fixture dataset (token required)."""
    http_server.json("/api/datasets/disambiguate/test_org/l4_test/toId", {"id": DATASET_ID})
    http_server.json(
        f"/api/datasets/{DATASET_ID}",
        {
            "id": DATASET_ID,
            "name": "l4_test",
            "isPublic": False,
            "description": "fixture written by webknossos",
            "dataStore": {"url": http_server.url},
        },
    )
    http_server.mount(f"/data/zarr/{DATASET_ID}", wk_dataset)
    http_server.rule("/data/zarr/", require=("X-Auth-Token", TOKEN))
    http_server.rule("/api/", require=("X-Auth-Token", TOKEN))
    return http_server


@pytest.mark.network
def test_remote_zarr_streaming(wk_server, wk_dataset: Path) -> None:
    vol = open_source(
        "webknossos://test_org/l4_test/color",
        pixel_size_nm=4,
        options={"server": wk_server.url},
        token=TOKEN,
    )
    np.testing.assert_array_equal(vol.compute(), _expected(wk_dataset, 1))
    assert vol.metadata["wk_dataset_id"] == DATASET_ID
    assert vol.metadata["store"] == f"{wk_server.url}/data/zarr/{DATASET_ID}/"
    assert vol.voxel_size == (35.0, 4.0, 4.0)
    gets = wk_server.paths()
    assert gets[:3] == [
        "/api/datasets/disambiguate/test_org/l4_test/toId",
        f"/api/datasets/{DATASET_ID}",
        f"/data/zarr/{DATASET_ID}/datasource-properties.json",
    ]
    sent = [{k.lower(): v for k, v in h.items()} for _, _, h in wk_server.log]
    assert all(h.get("x-auth-token") == TOKEN for h in sent)  # API and every chunk read


@pytest.mark.network
def test_remote_dataset_link_with_env_token(wk_server, wk_dataset: Path, monkeypatch) -> None:
    monkeypatch.setenv("WK_TOKEN", TOKEN)
    link = f"{wk_server.url}/datasets/l4_test-{DATASET_ID}/view"
    vol = open_source(link, options={"level": 1})
    assert vol.metadata["mag"] == "2-2-1"
    np.testing.assert_array_equal(vol.compute(), _expected(wk_dataset, 2))
    assert "/api/datasets/disambiguate" not in " ".join(wk_server.paths())


@pytest.mark.network
def test_remote_without_token_is_auth_error(wk_server) -> None:
    with pytest.raises(SourceAuthError) as err:
        open_source("webknossos://test_org/l4_test", options={"server": wk_server.url})
    assert "HTTP 401" in str(err.value)
    assert "token" in str(err.value)
    with pytest.raises(SourceAuthError) as err:
        open_source(
            "webknossos://test_org/l4_test", options={"server": wk_server.url}, token="wrong-token"
        )
    assert "wrong-token" not in str(err.value)
