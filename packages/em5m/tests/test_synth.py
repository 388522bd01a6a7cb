"""Tests for em5m.synth: the procedural EM phantom and its ground truth."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from scipy.stats import chi2, poisson

from em5m import Volume
from em5m.synth import FIELDS, NoiseModel, Tissue, phantom, phantom_block, phantom_dask
from em5m.synth import phantom_volume as lazy_volume

DTYPES = {
    "image": np.uint8,
    "clean": np.float32,
    "membranes": np.bool_,
    "mitochondria": np.bool_,
    "cells": np.int32,
    "mito_instances": np.int32,
}


def _assert_same(a, b, fields=FIELDS, region=...):
    for f in fields:
        x, y = getattr(a, f)[region], getattr(b, f)
        assert np.array_equal(x, y), f"{f} differs in {(x != y).sum()} voxels"


# -- determinism, shapes, dtypes ----------------------------------------------------------------


def test_same_seed_same_arrays_other_seed_other_tissue():
    a = phantom((96, 96), voxel_size=(8, 8), seed=3)
    b = phantom((96, 96), voxel_size=(8, 8), seed=3)
    c = phantom((96, 96), voxel_size=(8, 8), seed=4)
    _assert_same(a, b)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.cells, c.cells)


@pytest.mark.parametrize(
    ("shape", "voxel", "axes"),
    [((40, 56), (6, 6), ("y", "x")), ((3, 32, 40), (30, 6, 6), ("z", "y", "x"))],
)
def test_shapes_dtypes_axes(shape, voxel, axes):
    p = phantom(shape, voxel_size=voxel, seed=1, modality="tem")
    for f, dt in DTYPES.items():
        arr = getattr(p, f)
        assert arr.shape == shape, f
        assert arr.dtype == dt, f
    assert p.axes == axes
    assert p.voxel_size == tuple(float(v) for v in voxel)
    assert p.origin == (0,) * len(shape) and p.shape == shape
    assert p.clean.min() >= 0.0 and p.clean.max() <= 1.0
    assert np.array_equal(p.mitochondria, p.mito_instances > 0)
    v = p.to_volume()
    assert isinstance(v, Volume)
    assert v.axes == axes and v.shape == shape and v.voxel_size == p.voxel_size
    assert np.array_equal(v.compute(), p.image)


def test_scalar_voxel_size_and_noise_free_image_is_quantized_clean():
    p = phantom((32, 48), voxel_size=7, noise=None, seed=2)
    assert p.voxel_size == (7.0, 7.0)
    assert np.array_equal(p.image, np.rint(p.clean * 255).astype(np.uint8))


# -- ground truth -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tissue3d():
    """A noise-free 1 x 3 x 3 µm volume in both modalities (same geometry)."""
    kw = dict(voxel_size=(25, 25, 25), seed=11, noise=None)
    return {m: phantom((40, 120, 120), modality=m, **kw) for m in ("sem", "tem")}


def test_ground_truth_is_identical_across_modalities(tissue3d):
    _assert_same(tissue3d["sem"], tissue3d["tem"], ("membranes", "cells", "mito_instances"))
    assert not np.array_equal(tissue3d["sem"].clean, tissue3d["tem"].clean)


@pytest.mark.parametrize("modality", ["sem", "tem"])
def test_membranes_and_mitochondria_are_darker_than_cytoplasm(tissue3d, modality):
    p = tissue3d[modality]
    cyto = ~p.membranes & ~p.mitochondria
    assert p.clean[p.membranes].mean() < p.clean[cyto].mean() - 0.1
    assert p.clean[p.mitochondria].mean() < p.clean[cyto].mean() - 0.05


def test_mitochondria_fraction_and_containment(tissue3d):
    p = tissue3d["sem"]
    assert 0.02 <= p.mitochondria.mean() <= 0.2
    ids = np.unique(p.mito_instances[p.mito_instances > 0])
    assert len(ids) >= 3
    for i in ids:
        hosts = np.unique(p.cells[p.mito_instances == i])
        assert len(hosts) == 1, f"mitochondrion {i} spans cells {hosts}"
    assert not (p.mitochondria & p.membranes).any()


def test_cells_cover_the_volume_and_membranes_separate_them(tissue3d):
    p = tissue3d["sem"]
    assert (p.cells > 0).all()
    assert len(np.unique(p.cells)) >= 10
    assert 0.01 < p.membranes.mean() < 0.3
    # Neighbouring voxels of different cells are never both off the membrane (closed membranes).
    for axis in (1, 2):
        a = np.moveaxis(p.cells, axis, 0)
        m = np.moveaxis(p.membranes, axis, 0)
        touching = (a[1:] != a[:-1]) & ~m[1:] & ~m[:-1]
        assert not touching.any()


def test_same_tissue_at_two_resolutions():
    fine = phantom((128, 128), voxel_size=(4, 4), seed=5, noise=None)
    coarse = phantom((64, 64), voxel_size=(8, 8), seed=5, noise=None)
    assert (fine.cells[1::2, 1::2] == coarse.cells).mean() > 0.9
    # Both see the same image content: correlation of the clean images after 2x binning.
    binned = fine.clean.reshape(64, 2, 64, 2).mean((1, 3))
    assert np.corrcoef(binned.ravel(), coarse.clean.ravel())[0, 1] > 0.7


def test_tissue_options_change_the_tissue():
    base = phantom((64, 64), voxel_size=(20, 20), seed=1, noise=None)
    none = phantom((64, 64), voxel_size=(20, 20), seed=1, noise=None, mito_fraction=0.0)
    big = phantom(
        (64, 64), voxel_size=(20, 20), seed=1, noise=None, tissue=Tissue(cell_diameter=3000)
    )
    assert not none.mitochondria.any()
    assert len(np.unique(big.cells)) < len(np.unique(base.cells))


# -- image formation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "photons", "read"), [(0.4, 50.0, 0.03), (0.8, 200.0, 0.01)])
def test_poisson_gaussian_variance(level, photons, read):
    nm = NoiseModel(photons=photons, read_noise=read)
    flat = np.full((256, 256), level, np.float32)
    noisy = nm.apply(flat, seed=7)
    expected = nm.gain * level + nm.read_var
    assert abs(noisy.mean() - level) < 0.005
    assert noisy.var() == pytest.approx(expected, rel=0.05)
    assert nm.variance(level) == pytest.approx(expected)


@pytest.mark.parametrize("lam", [0.7, 4.0, 15.0, 60.0])
def test_shot_noise_is_poisson(lam):
    flat = np.full((128, 256), lam / 100.0, np.float32)
    counts = np.rint(NoiseModel(photons=100.0, read_noise=0.0).apply(flat, seed=3) * 100)
    counts = counts.astype(int).ravel()
    expected = poisson.pmf(np.arange(counts.max() + 1), lam) * counts.size
    observed = np.bincount(counts)
    use = expected > 5
    stat = ((observed[use] - expected[use]) ** 2 / expected[use]).sum()
    assert chi2.sf(stat, use.sum() - 1) > 1e-3


def test_noise_is_a_function_of_position():
    flat = np.full((6, 40, 50), 0.5, np.float32)
    nm = NoiseModel()
    whole = nm.apply(flat, seed=1)
    part = nm.apply(flat[2:5, 10:30, 7:50], seed=1, origin=(2, 10, 7))
    assert np.array_equal(whole[2:5, 10:30, 7:50], part)
    assert not np.array_equal(whole, nm.apply(flat, seed=2))


def test_thick_sections_average_fine_slices():
    kw = dict(seed=9, noise=None)  # the default SEM PSF blurs along z too
    thin = phantom((10, 48, 48), voxel_size=(8, 8, 8), **kw)
    thick = phantom((2, 48, 48), voxel_size=(40, 8, 8), **kw)
    np.testing.assert_allclose(thick.clean, thin.clean.reshape(2, 5, 48, 48).mean(1), atol=1e-5)


def test_adjacent_sections_decorrelate_as_z_voxels_grow():
    def adjacent_corr(vz):
        p = phantom((6, 64, 64), voxel_size=(vz, 8, 8), seed=4, noise=None)
        c = p.clean.reshape(6, -1)
        return np.mean([np.corrcoef(c[k], c[k + 1])[0, 1] for k in range(5)])

    assert adjacent_corr(8) > adjacent_corr(60) + 0.1


def test_psf_blurs():
    sharp = phantom((64, 64), voxel_size=(5, 5), seed=6, noise=None, psf_sigma=0)
    soft = phantom((64, 64), voxel_size=(5, 5), seed=6, noise=None, psf_sigma=15)
    assert (
        np.abs(np.diff(soft.clean, axis=1)).mean()
        < 0.7 * np.abs(np.diff(sharp.clean, axis=1)).mean()
    )


# -- blockwise rendering ------------------------------------------------------------------------

BLOCK_KW = dict(voxel_size=(20, 6, 6), seed=5, modality="sem")  # thick sections, PSF, noise


@pytest.fixture(scope="module")
def whole3d():
    return phantom((8, 120, 120), **BLOCK_KW)


@pytest.mark.parametrize(
    "block",
    [
        (slice(2, 7), slice(17, 101), slice(50, 120)),
        ((0, 1), (0, 9), (111, 120)),
        (slice(7, 8), slice(60, 120), slice(0, 45)),
    ],
)
def test_block_equals_whole(whole3d, block):
    part = phantom_block((8, 120, 120), block, **BLOCK_KW)
    region = tuple(slice(*b) if isinstance(b, tuple) else b for b in block)
    assert part.origin == tuple(s.start for s in region)
    _assert_same(whole3d, part, region=region)


def test_dask_chunks_assemble_to_whole(whole3d):
    arrays = phantom_dask((8, 120, 120), chunks=(3, 50, 70), fields=FIELDS, **BLOCK_KW)
    assert arrays["image"].chunks == ((3, 3, 2), (50, 50, 20), (70, 50))
    computed = dask.compute(*arrays.values())
    for f, arr in zip(arrays, computed, strict=True):
        assert arr.dtype == DTYPES[f]
        assert np.array_equal(arr, getattr(whole3d, f)), f


def test_lazy_volume_2d():
    kw = dict(voxel_size=(4, 4), seed=2, modality="tem", section_thickness=40)
    vol = lazy_volume((100, 90), chunks=(64, 64), **kw)
    assert vol.axes == ("y", "x") and vol.voxel_size == (4.0, 4.0)
    assert vol.data.chunks == ((64, 36), (64, 26))
    assert np.array_equal(vol.compute(), phantom((100, 90), **kw).image)


# -- argument validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shape=(0, 32)),
        dict(shape=(32,)),
        dict(shape=(2, 2, 32, 32)),
        dict(shape=(32.5, 32)),
        dict(shape=32),
        dict(voxel_size=(0, 5)),
        dict(voxel_size=(-4, 5)),
        dict(voxel_size=(5, float("nan"))),
        dict(voxel_size=(5, 5, 5)),
        dict(modality="xray"),
        dict(seed=-1),
        dict(noise="poisson"),
        dict(psf_sigma=(-1, 1)),
        dict(z_samples=0),
        dict(cell_diameter=-1.0),
        dict(mito_width=(600.0, 300.0)),
        dict(not_an_option=1),
    ],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = dict(shape=(32, 32), voxel_size=(5, 5)) | kwargs
    with pytest.raises(ValueError):
        phantom(args.pop("shape"), **args)


def test_bad_blocks_and_noise_models_raise_value_error():
    with pytest.raises(ValueError):
        phantom_block((16, 16), (slice(0, 20), slice(0, 16)), voxel_size=(5, 5))
    with pytest.raises(ValueError):
        phantom_block((16, 16), (slice(4, 4), slice(0, 16)), voxel_size=(5, 5))
    with pytest.raises(ValueError):
        phantom_block((16, 16), (slice(0, 16, 2), slice(0, 16)), voxel_size=(5, 5))
    with pytest.raises(ValueError):
        phantom_dask((16, 16), fields=("nope",), voxel_size=(5, 5))
    with pytest.raises(ValueError):
        NoiseModel(photons=0)
    with pytest.raises(ValueError):
        NoiseModel(read_noise=-0.1)
