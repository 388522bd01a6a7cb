"""EMPIAR connector against a 127.0.0.1 server laid out like EMPIAR (API JSON, Apache index
pages, files with Range support): resumed downloads, checksums, cache, DM4, retries."""

from __future__ import annotations

import json
from pathlib import Path

import em5m_tests_fixtures_sources as fx  # registered by conftest.py
import mrcfile
import numpy as np
import pytest
import tifffile

from em5m.errors import InvalidVolumeError, UnsupportedFormatError
from em5m.sources import (
    ByteBudgetExceeded,
    IntegrityError,
    SourceNotFoundError,
    SourceUnavailableError,
    UnsupportedSourceError,
    open_source,
)
from em5m.sources.dm4 import open_dm, read_dm

ACC, NUM = "EMPIAR-10999", "10999"
VOLUME = fx.volume_data((12, 40, 56), seed=5)
ENTRY = {
    ACC: {
        "title": "Test FIB-SEM volume of a HeLa cell",
        "release_date": "2023-05-01",
        "imagesets": [
            {
                "name": "FIB-SEM volume",
                "directory": "/data/fib",
                "category": "3D SEM",
                "data_format": "MRC",
                "pixel_width": "50.0",
                "pixel_height": "50.0",
                "image_width": "56",
                "image_height": "40",
            }
        ],
    }
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/10999/data/...``: an MRC volume (+ .md5), a DM4, a slice folder, a sub-folder."""
    root = tmp_path_factory.mktemp("empiar")
    data = root / NUM / "data"
    (data / "fib" / "slices").mkdir(parents=True)
    with mrcfile.new(data / "fib" / "volume.mrc") as mrc:
        mrc.set_data(VOLUME.astype(np.int8) // 2)
        mrc.voxel_size = (50.0, 50.0, 80.0)  # Angstrom, x y z
    for i in range(3):
        tifffile.imwrite(data / "fib" / "slices" / f"slice_{i:03d}.tif", VOLUME[i])
    fx.write_dm(data / "fib" / "overview.dm4", VOLUME[0].astype(np.uint16) * 3, [2.5, 2.5])
    (data / "fib" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def empiar(http_server, tree: Path, tmp_path: Path):
    http_server.json(f"/empiar/api/entry/{ACC}/", ENTRY)
    http_server.mount("/pub/empiar/world_availability", tree)
    opts = {
        **fx.FAST,
        "api_url": f"{http_server.url}/empiar/api/entry",
        "files_url": f"{http_server.url}/pub/empiar/world_availability",
        "cache_dir": str(tmp_path / "cache"),
    }
    return http_server, opts


def _mrc_url(server) -> str:
    return f"/pub/empiar/world_availability/{NUM}/data/fib/volume.mrc"


@pytest.mark.network
def test_interrupted_download_resumes_and_is_verified(empiar, tree: Path) -> None:
    server, opts = empiar
    mrc = tree / NUM / "data" / "fib" / "volume.mrc"
    server.rule(_mrc_url(server), drop_after=5000, times=1)  # first GET dies after 5000 bytes
    vol = open_source(f"empiar://{ACC}/fib/volume.mrc", options={**opts, "sha256": fx.sha256(mrc)})
    file_gets = [
        (p, {k.lower(): v for k, v in h.items()})
        for m, p, h in server.log
        if m == "GET" and p == _mrc_url(server)
    ]
    assert len(file_gets) == 2
    assert "range" not in file_gets[0][1]
    assert file_gets[1][1]["range"] == "bytes=5000-"  # resumed, not restarted
    np.testing.assert_array_equal(vol.compute(), VOLUME.astype(np.int8) // 2)
    assert vol.voxel_size == (8.0, 5.0, 5.0)  # from the MRC header (Angstrom -> nm)
    meta = vol.metadata
    assert meta["source"] == "empiar"
    assert meta["licence"].startswith("CC0")
    assert meta["empiar"]["title"] == ENTRY[ACC]["title"]
    assert meta["empiar"]["doi"] == f"10.6019/{ACC}"
    assert meta["empiar"]["imagesets"][0]["pixel_width"] == "50.0"
    local = Path(meta["local_path"])
    assert local.read_bytes() == mrc.read_bytes()
    assert not local.with_name(local.name + ".part").exists()
    # Second open: served from the cache, no new download.
    server.log.clear()
    again = open_source(f"empiar://{ACC}/fib/volume.mrc", options=opts)
    assert _mrc_url(server) not in server.paths()
    np.testing.assert_array_equal(again.compute(), vol.compute())


@pytest.mark.network
def test_partial_file_from_an_earlier_run_resumes(empiar, tree: Path, tmp_path: Path) -> None:
    server, opts = empiar
    mrc = (tree / NUM / "data" / "fib" / "volume.mrc").read_bytes()
    part = tmp_path / "cache" / ACC / "data" / "fib" / "volume.mrc.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(mrc[:1234])
    vol = open_source(f"empiar://{ACC}/fib/volume.mrc", options=opts)
    ranges = [h.get("Range") or h.get("range") for m, p, h in server.log if p == _mrc_url(server)]
    assert ranges == ["bytes=1234-"]
    assert Path(vol.metadata["local_path"]).read_bytes() == mrc


@pytest.mark.network
def test_checksum_mismatch_is_integrity_error(empiar, tmp_path: Path) -> None:
    server, opts = empiar
    with pytest.raises(IntegrityError, match="sha256"):
        open_source(f"empiar://{ACC}/fib/volume.mrc", options={**opts, "sha256": "0" * 64})
    assert not list((tmp_path / "cache").rglob("volume.mrc*"))  # bad bytes are not kept


@pytest.mark.network
def test_md5_sidecar_is_checked(empiar, tree: Path) -> None:
    server, opts = empiar
    sidecar = tree / NUM / "data" / "fib" / "volume.mrc.md5"
    sidecar.write_text("d41d8cd98f00b204e9800998ecf8427e  volume.mrc\n")  # wrong on purpose
    try:
        with pytest.raises(IntegrityError, match="md5"):
            open_source(f"empiar://{ACC}/fib/volume.mrc", options=opts)
    finally:
        sidecar.unlink()


@pytest.mark.network
def test_dm4_and_slice_directory(empiar) -> None:
    server, opts = empiar
    dm = open_source(f"empiar://{ACC}/fib/overview.dm4", options=opts)
    assert dm.metadata["format"] == "dm4"
    assert dm.axes == ("y", "x") and dm.voxel_size == (2.5, 2.5)
    np.testing.assert_array_equal(dm.compute(), VOLUME[0].astype(np.uint16) * 3)
    stack = open_source(f"empiar://{ACC}/fib/slices", options=opts)
    np.testing.assert_array_equal(stack.compute(), VOLUME[:3])


@pytest.mark.network
def test_directory_with_several_files_lists_them(empiar) -> None:
    server, opts = empiar
    with pytest.raises(UnsupportedSourceError) as err:
        open_source(f"empiar://{ACC}/fib", options=opts)
    assert "volume.mrc" in str(err.value) and "overview.dm4" in str(err.value)
    with pytest.raises(SourceNotFoundError, match="there: "):
        open_source(f"empiar://{ACC}/fib/missing.mrc", options=opts)
    with pytest.raises(SourceNotFoundError, match="HTTP 404"):
        open_source("empiar://EMPIAR-10001/x.mrc", options=opts)


@pytest.mark.network
def test_byte_budget_refuses_large_download(empiar, tmp_path: Path) -> None:
    server, opts = empiar
    with pytest.raises(ByteBudgetExceeded, match="max_bytes"):
        open_source(f"empiar://{ACC}/fib/volume.mrc", options={**opts, "max_bytes": 6000})
    assert not (tmp_path / "cache" / ACC / "data" / "fib" / "volume.mrc").exists()


@pytest.mark.network
def test_retries_after_two_503(empiar) -> None:
    server, opts = empiar
    rule = server.rule(f"/empiar/api/entry/{ACC}/", status=503, times=2)
    vol = open_source(f"empiar://{ACC}/fib/overview.dm4", options={**opts, "retries": 3})
    assert rule.hits == 3  # 503, 503, 200
    assert vol.shape == (40, 56)
    rule.hits = 0
    with pytest.raises(SourceUnavailableError, match=r"HTTP 503.*gave up after 2 attempt"):
        open_source(f"empiar://{ACC}/fib/overview.dm4", options={**opts, "retries": 2})


@pytest.mark.network
def test_unreachable_api(closed_port: int, tmp_path: Path) -> None:
    opts = {**fx.FAST, "api_url": f"http://127.0.0.1:{closed_port}/api", "cache_dir": str(tmp_path)}
    with pytest.raises(SourceUnavailableError, match="cannot connect") as err:
        open_source(f"empiar://{ACC}/x.mrc", options=opts)
    assert err.value.path == f"empiar://{ACC}/x.mrc"


def test_dm3_and_dm4_reader(tmp_path: Path) -> None:
    vol3d = fx.volume_data((3, 20, 30), seed=9).astype(np.float32) / 7
    for version in (3, 4):
        path = fx.write_dm(tmp_path / f"v.dm{version}", vol3d, [1.5, 1.5, 10.0], version=version)
        info = read_dm(path)
        assert info.shape == (3, 20, 30) and info.version == version
        vol = open_dm(path)
        assert vol.axes == ("z", "y", "x") and vol.voxel_size == (10.0, 1.5, 1.5)
        np.testing.assert_array_equal(vol.compute(), vol3d)
    truncated = tmp_path / "t.dm4"
    truncated.write_bytes((tmp_path / "v.dm4").read_bytes()[:3000])
    with pytest.raises(InvalidVolumeError, match="truncated"):
        read_dm(truncated)
    json_file = tmp_path / "x.dm4"
    json_file.write_text(json.dumps({"a": list(range(10))}))
    with pytest.raises(UnsupportedFormatError, match="not a DM3/DM4 file"):
        read_dm(json_file)
