"""Building blocks of the curation: resampling, windows, planning, hashing, index, shards."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from em5m.catalog import DatasetEntry, Sampling
from em5m.curate import HammingIndex, candidate_pairs, dhash, greedy_keep
from em5m.curate.dedup import embedding_duplicates, greedy_resolve, hamming, plan_blocks
from em5m.curate.plan import choose_level, plan_dataset
from em5m.curate.sample import (
    Level,
    SampleOptions,
    VoxelMetadataError,
    read_unit_tiles,
    resolve_levels,
)
from em5m.curate.shards import ShardWriter, decode_png, encode_pngs, iter_shard
from em5m.curate.standardize import (
    area_weights,
    choose_window,
    resample_area,
    to_uint8,
)
from em5m.intensity import IntensityWindow
from em5m.intensity import to_uint8 as volume_to_uint8
from em5m.volume import Volume

RNG = np.random.default_rng(11)


def _dense(n_in, n_out):
    """Area weights straight from the definition (overlap of pixel and cell, over f)."""
    f = n_in / n_out
    j = np.arange(n_out)[:, None]
    i = np.arange(n_in)[None, :]
    return np.maximum(0.0, np.minimum((j + 1) * f, i + 1) - np.maximum(j * f, i)) / f


@pytest.mark.parametrize(
    "shape_in,shape_out",
    [
        ((358, 358), (224, 224)),
        ((448, 400), (224, 200)),
        ((179, 179), (224, 224)),
        ((30, 50), (7, 9)),
    ],
)
def test_resample_area_matches_the_definition_and_is_batch_exact(shape_in, shape_out):
    x = RNG.integers(0, 65535, (5, *shape_in)).astype(np.uint16)
    got = resample_area(x, shape_out)
    ref = _dense(shape_in[0], shape_out[0]) @ x.astype(float) @ _dense(shape_in[1], shape_out[1]).T
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-2)
    one_by_one = np.concatenate([resample_area(x[i : i + 1], shape_out) for i in range(5)])
    assert np.array_equal(got, one_by_one)  # bit-exact whatever the batch
    idx, w = area_weights(*shape_in[:1], shape_out[0])
    assert np.allclose(w.sum(axis=1), shape_in[0])  # weights sum to n_in (scaled by n_out)


def test_to_uint8_is_the_intensity_module_mapping():
    for dtype, lo, hi in [
        ("uint16", 0, 60000),
        ("int16", -3000, 3000),
        ("int8", -128, 127),
        ("float32", -1.5, 2.5),
    ]:
        x = RNG.uniform(lo, hi, (3, 40, 40)).astype(dtype)
        w = choose_window(x.astype(np.float32), dtype)
        assert w.source_dtype == dtype and w.low < w.high
        mine = to_uint8(x, w)
        theirs = volume_to_uint8(Volume.from_array(x), w).compute()
        assert np.array_equal(mine, theirs), dtype
        # robust: 0.5 / 99.5 percentiles clip about 1 % of pixels
        assert 0.002 < ((mine == 0) | (mine == 255)).mean() < 0.03
    u8 = RNG.integers(0, 255, (2, 8, 8), dtype=np.uint8)
    w = choose_window(u8, "uint8")
    assert (w.low, w.high) == (0.0, 255.0) and to_uint8(u8, w) is u8
    flat = choose_window(np.full((4, 4), 7.0), "float32")
    assert flat.high > flat.low  # a constant unit keeps a defined map


def _entry(**kw):
    base = dict(id="d", uri="/x", modality="FIB-SEM", species="mouse", licence="MIT", citation="c")
    return DatasetEntry(**{**base, **kw})


def test_levels_voxel_checks_and_level_choice():
    vol = Volume.from_array(
        np.zeros((4, 64, 64), np.uint8),
        voxel_size=(8, 4, 4),
        metadata={
            "levels": [
                {"shape": (4, 64, 64), "voxel_size": (8.0, 4.0, 4.0)},
                {"shape": (4, 32, 32), "voxel_size": (8.0, 8.0, 8.0)},
                {"shape": (4, 16, 16), "voxel_size": (8.0, 16.0, 16.0)},
            ]
        },
    )
    levels, origin, stack_2d = resolve_levels(_entry(), vol)
    assert origin == "source" and not stack_2d
    assert [lv.voxel for lv in levels] == [(8, 4, 4), (8, 8, 8), (8, 16, 16)]
    opts = SampleOptions()
    assert choose_level(levels, 8.0, opts).index == 1  # exact level: no resampling
    assert choose_level(levels, 12.0, opts).index == 1  # coarsest not coarser than target
    assert choose_level(levels, 40.0, opts).index == 2
    assert choose_level(levels, 3.3, opts).index == 0  # 1.21x up-sampling allowed
    assert choose_level(levels, 3.0, opts) is None  # 1.33x is too much
    override, origin, _ = resolve_levels(_entry(voxel_size_nm=[10, 5, 5]), vol)
    assert origin == "catalog" and override[1].voxel == (10.0, 10.0, 10.0)
    with pytest.raises(VoxelMetadataError, match="outside the plausible"):
        resolve_levels(_entry(voxel_size_nm=[40, 4000, 4000]), vol)
    with pytest.raises(VoxelMetadataError, match="square"):
        resolve_levels(_entry(voxel_size_nm=[40, 4, 12]), vol)
    with pytest.raises(VoxelMetadataError, match="no voxel size"):
        resolve_levels(_entry(), Volume.from_array(np.zeros((8, 8), np.uint8)))
    assert isinstance(Level(0, (1, 2, 2), (None, 1.0, 1.0), (1, 1, 1)), Level)


def test_plan_grid_axes_and_bounded_random_regions(tmp_path):
    import tifffile

    data = RNG.integers(0, 255, (40, 100, 120), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", data)
    slices = tmp_path / "slices"
    slices.mkdir()
    for i, plane in enumerate(data):
        Image.fromarray(plane).save(slices / f"{i}.png")
    uri = str(tmp_path / "v.tif")
    iso = _entry(uri=uri, voxel_size_nm=[9, 8, 8])  # z within 25 % of xy: three planes
    full = plan_dataset(
        iso,
        Sampling(tile_size=16, pixel_sizes_nm=[8.0], seed=0),
        dataset_index=0,
        options=SampleOptions(unit_tiles=20),
    )
    by_axis = {a: sum(u.n_tiles for u in full.units if u.axis == a) for a in ("xy", "xz", "yz")}
    assert by_axis == {"xy": 40 * 6 * 7, "xz": 100 * 2 * 7, "yz": 120 * 2 * 6}
    assert max(u.n_tiles for u in full.units) <= 20
    # A small TIFF is one storage block: a byte budget of one volume covers every unit.
    one = plan_dataset(
        iso,
        Sampling(tile_size=16, pixel_sizes_nm=[8.0], max_bytes=data.nbytes + 10),
        dataset_index=0,
        options=SampleOptions(unit_tiles=20),
    )
    assert len(one.units) == len(full.units)
    # One PNG per slice = one block per slice: slabs group slices up to ~unit_tiles.
    stack = plan_dataset(
        _entry(uri=str(slices), voxel_size_nm=[40, 8, 8]),
        Sampling(tile_size=16, pixel_sizes_nm=[8.0]),
        dataset_index=0,
        options=SampleOptions(unit_tiles=100),
    )
    assert {u.axis for u in stack.units} == {"xy"}  # 40 nm z: anisotropic
    assert [len(u.slices) for u in stack.units] == [2] * 20  # 42 tiles per slice
    assert [u.bytes_read for u in stack.units] == [2 * 100 * 120] * 20
    # Bounded sampling: whole random regions (units), deterministic for a seed.
    small = Sampling(tile_size=16, pixel_sizes_nm=[8.0], max_tiles=300, seed=3)
    a = plan_dataset(
        _entry(uri=str(slices), voxel_size_nm=[40, 8, 8]),
        small,
        dataset_index=0,
        options=SampleOptions(unit_tiles=40),
    )
    b = plan_dataset(
        _entry(uri=str(slices), voxel_size_nm=[40, 8, 8]),
        small,
        dataset_index=0,
        options=SampleOptions(unit_tiles=40),
    )
    assert [u.key for u in a.units] == [u.key for u in b.units]
    assert sum(u.n_tiles for u in a.units) == 294  # 7 random slices of 42 tiles
    assert [u.key for u in a.units] != [u.key for u in stack.units[:7]]
    assert any("random subset" in n for n in a.notes)
    cap = Sampling(tile_size=16, pixel_sizes_nm=[8.0], max_bytes=3 * 100 * 120 + 10)
    c = plan_dataset(
        _entry(uri=str(slices), voxel_size_nm=[40, 8, 8]),
        cap,
        dataset_index=0,
        options=SampleOptions(unit_tiles=40),
    )
    assert len({u.slices for u in c.units}) == 3 and len(c.units) == 6  # 3 files read
    # Tiles are exactly the grid cells of the stored array.
    u = full.units[0]
    t = read_unit_tiles(u)
    s, r, c0 = int(t.slice_index[3]), int(t.row0[3]), int(t.col0[3])
    assert np.array_equal(t.tiles[3], data[s, r : r + 16, c0 : c0 + 16])


def test_dhash_is_stable_and_separates_content():
    tiles = RNG.integers(0, 255, (6, 224, 224), dtype=np.uint8)
    h = dhash(tiles)
    assert h.dtype == np.uint64 and len(set(h.tolist())) == 6
    assert np.array_equal(h, np.concatenate([dhash(t[None]) for t in tiles]))
    assert (hamming(h[:3], h[3:]) > 16).all()  # unrelated tiles are far apart


@pytest.mark.parametrize("k", [0, 3, 8])
def test_hamming_index_equals_brute_force(k):
    base = RNG.integers(0, 2**63, 600, dtype=np.int64).astype(np.uint64)
    flips = np.zeros(300, np.uint64)
    for i in range(300):
        for b in RNG.choice(64, RNG.integers(0, k + 3), replace=False):
            flips[i] |= np.uint64(1) << np.uint64(b)
    h = np.concatenate([base, base[:300] ^ flips, base[:5]])  # near and exact duplicates
    i, j = candidate_pairs(h, k)
    d = hamming(h[:, None], h[None, :])
    bi, bj = np.nonzero(np.triu(d <= k, 1))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(
        zip(bi.tolist(), bj.tolist(), strict=True)
    )
    for m in (k + 1, max(1, k // 3 + 1)):  # exact-lookup and radius-probing layouts
        qi, ids, dist = HammingIndex(h, k, n_blocks=m).query(h[:50])
        assert (dist <= k).all() and len(qi) == int((d[:50] <= k).sum())


def test_block_plan_prefers_long_blocks_for_many_hashes():
    assert plan_blocks(1_000_000, 8) == 3 and plan_blocks(100, 3) == 4


def test_greedy_keeps_first_exemplar_in_order():
    h = np.array([0b0, 0b1, 0b11, 0b111, 0b0, 7 << 40], np.uint64)
    keep, dup = greedy_keep(h, 1)
    assert keep.tolist() == [True, False, True, False, False, True]
    assert dup.tolist() == [-1, 0, -1, 2, 0, -1]
    keep2, dup2 = greedy_resolve(6, np.array([0, 2, 0]), np.array([1, 3, 4]))
    assert keep2.tolist() == keep.tolist() and dup2.tolist() == dup.tolist()


def test_embedding_dedup_by_cosine():
    e = RNG.normal(size=(50, 16)).astype(np.float32)
    e = np.concatenate([e, e[:10] + RNG.normal(scale=0.01, size=(10, 16))])
    keep, dup = embedding_duplicates(e, 0.99, block=16)
    assert keep[:50].all() and not keep[50:].any()
    assert dup[50:].tolist() == list(range(10))


def test_png_encoder_round_trips_and_any_reader_decodes_it():
    for t in (
        RNG.integers(0, 256, (3, 37, 53), dtype=np.uint8),
        np.zeros((1, 16, 16), np.uint8),
        np.full((1, 9, 4), 255, np.uint8),
    ):
        for level in (None, 1, 6):
            for tile, png in zip(t, encode_pngs(t, level=level), strict=True):
                assert np.array_equal(decode_png(png), tile)
                assert Image.open(io.BytesIO(png)).mode == "L"


def test_shards_are_deterministic_and_roll_over(tmp_path):
    tiles = RNG.integers(0, 256, (5, 16, 16), dtype=np.uint8)
    pngs = encode_pngs(tiles)
    for d in ("a", "b"):
        with ShardWriter(tmp_path / d, maxcount=2) as w:
            for i, png in enumerate(pngs):
                w.add(f"t{i}", png, {"i": i})
    assert w.shards == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    for name in w.shards:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    items = list(iter_shard(tmp_path / "a" / "shard-000001.tar"))
    assert [(k, m) for k, _, m in items] == [("t2", {"i": 2}), ("t3", {"i": 3})]
    assert np.array_equal(decode_png(items[0][1]), tiles[2])
    with pytest.raises(ValueError, match="must not contain"):
        ShardWriter(tmp_path / "c").add("a.b", pngs[0], {})


def test_window_object_is_recorded_as_is():
    w = IntensityWindow(1.0, 2.0, (0.5, 99.5), "uint16")
    assert w.as_dict() == {
        "low": 1.0,
        "high": 2.0,
        "percentiles": (0.5, 99.5),
        "source_dtype": "uint16",
    }
