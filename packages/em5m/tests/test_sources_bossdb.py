"""BossDB connector: channel metadata from a 127.0.0.1 API, a precomputed volume written with
tensorstore served as the public bucket, and the intern fallback's error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import em5m_tests_fixtures_sources as fx  # registered by conftest.py
import numpy as np
import pytest

from em5m.sources import SourceNotFoundError, UnsupportedSourceError, open_source
from em5m.sources.bossdb import boss_levels, parse_uri

DATA = fx.volume_data((6, 64, 48), seed=3)
CHANNEL = "/v1/collection/testcoll/experiment/testexp/channel/em"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("boss") / "bossdb-open-data"
    fx.write_precomputed(root / "testcoll" / "em", DATA, [[4, 4, 40], [8, 8, 40]])
    return root


@pytest.fixture
def boss(http_server, bucket: Path):
    http_server.json(
        CHANNEL,
        {
            "name": "em",
            "description": "test EM channel",
            "type": "image",
            "datatype": "uint8",
            "base_resolution": 0,
            "storage_type": "cloudvol",
            "bucket": "bossdb-open-data",
            "cv_path": "testcoll/em",
        },
    )
    http_server.mount("/bossdb-open-data", bucket)
    return http_server


def _options(server) -> dict:
    return {"api_url": server.url, "bucket_url": f"{server.url}/{{bucket}}"}


@pytest.mark.network
@pytest.mark.parametrize(
    ("suffix", "pixel", "level"), [("", None, 0), ("", 7.0, 1), ("/1", None, 1), ("/0", 100.0, 0)]
)
def test_cloudvol_channel_as_precomputed(boss, suffix: str, pixel, level: int) -> None:
    vol = open_source(
        f"bossdb://testcoll/testexp/em{suffix}", pixel_size_nm=pixel, options=_options(boss)
    )
    expected = DATA[:, :: 2**level, :: 2**level]
    assert vol.axes == ("z", "y", "x")
    # per-scale resolution from the info: z stays 40 nm (anisotropic down-sampling)
    assert vol.voxel_size == ((40.0, 4.0, 4.0) if level == 0 else (40.0, 8.0, 8.0))
    assert [lv["voxel_size"] for lv in vol.metadata["levels"]] == [
        (40.0, 4.0, 4.0),
        (40.0, 8.0, 8.0),
    ]
    assert vol.metadata["source"] == "bossdb"
    assert vol.metadata["level"] == level
    assert vol.metadata["bossdb_channel"]["storage_type"] == "cloudvol"
    np.testing.assert_array_equal(vol.compute(), expected)
    headers = {k.lower(): v for k, v in boss.log[0][2].items()}
    assert headers["authorization"] == "Token public"  # anonymous BossDB access


@pytest.mark.network
def test_token_and_missing_channel(boss, monkeypatch) -> None:
    monkeypatch.setenv("BOSSDB_TOKEN", "abc")
    open_source("bossdb://testcoll/testexp/em", options=_options(boss))
    assert {k.lower(): v for k, v in boss.log[0][2].items()}["authorization"] == "Token abc"
    with pytest.raises(SourceNotFoundError, match="HTTP 404"):
        open_source("bossdb://testcoll/testexp/nope", options=_options(boss))


@pytest.mark.network
def test_boss_served_channel_needs_intern(http_server) -> None:
    if importlib.util.find_spec("intern") is not None:
        pytest.skip("intern is installed; this test checks the message when it is not")
    http_server.json(CHANNEL, {"name": "em", "storage_type": "spdb", "datatype": "uint8"})
    with pytest.raises(UnsupportedSourceError, match=r"pip install 'em5m\[bossdb\]'"):
        open_source("bossdb://testcoll/testexp/em", options={"api_url": http_server.url})


def test_anisotropic_and_isotropic_levels() -> None:
    frame = {
        "x_start": 0,
        "x_stop": 1001,
        "y_start": 0,
        "y_stop": 600,
        "z_start": 10,
        "z_stop": 60,
        "x_voxel_size": 0.004,
        "y_voxel_size": 0.004,
        "z_voxel_size": 0.04,
        "voxel_unit": "micrometers",
    }
    aniso = boss_levels(frame, {"num_hierarchy_levels": 3, "hierarchy_method": "anisotropic"})
    assert [lv["voxel_size"] for lv in aniso] == [
        {"z": 40.0, "y": 4.0, "x": 4.0},
        {"z": 40.0, "y": 8.0, "x": 8.0},
        {"z": 40.0, "y": 16.0, "x": 16.0},
    ]
    assert [lv["shape"] for lv in aniso] == [(50, 600, 1001), (50, 300, 501), (50, 150, 251)]
    iso = boss_levels(frame, {"num_hierarchy_levels": 2, "hierarchy_method": "isotropic"})
    assert iso[1]["voxel_size"] == {"z": 80.0, "y": 8.0, "x": 8.0}
    assert iso[1]["shape"] == (25, 300, 501)


def test_uri_parsing() -> None:
    assert parse_uri("bossdb://kasthuri2015/em/cc_cleaned") == (
        "kasthuri2015",
        "em",
        "cc_cleaned",
        None,
    )
    with pytest.raises(UnsupportedSourceError):
        parse_uri("bossdb://only/two")
