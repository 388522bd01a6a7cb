"""em5m.datasets on the real EM data of the shared data folder (EMSSL_DATA).

These tests need the data: without it they fail with a message saying where to get it (CI sets
EMSSL_DATA). Label semantics are checked against image content (membranes and mitochondria are
dark in EM), which also proves images and labels are paired slice for slice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from em5m import EMDataError, InvalidVolumeError, Volume
from em5m import datasets as ds

BUILTIN = {
    # name: (folder, voxel size (z, y, x) from the data README or None where "not stated")
    "isbi2012": ("isbi2012", (50.0, 4.0, 4.0)),
    "lucchi_pp": ("lucchi_pp", (5.0, 5.0, 5.0)),
    "drosophila_vnc": ("drosophila_vnc_sstem", (50.0, 4.6, 4.6)),
    "flyem_medulla": ("flyem_fibsem_medulla", (10.0, 10.0, 10.0)),
    "gala": ("gala_fibsem", None),
    "emdiffuse": ("emdiffuse_demo", None),
    "omniem_examples": ("omniem_examples", None),
}
# Lucchi++ (260 MB loaded) has its own module-scoped fixtures; every other split is small.
SMALL_SPLITS = [
    (name, split) for name in BUILTIN if name != "lucchi_pp" for split in ds.info(name).split_names
]


@pytest.fixture(scope="module")
def root() -> Path:
    found = ds.data_root()
    if found is None or not found.is_dir():
        pytest.fail(
            f"real EM data not found (EMSSL_DATA={os.environ.get('EMSSL_DATA')!r}, no "
            "../shared/data beside the checkout). Point EMSSL_DATA at the shared data folder "
            "(see docs/em5m/datasets.md); these tests must not be skipped."
        )
    return found


def _dark_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean intensity outside ``mask`` minus inside: > 0 when the structure is darker."""
    inside = image[mask]  # sums, not image[~mask]: no full-size copy of a 100 MB volume
    outside_sum = int(image.sum(dtype=np.int64)) - int(inside.sum(dtype=np.int64))
    return outside_sum / (image.size - inside.size) - float(inside.mean())


# --- registry --------------------------------------------------------------------------------


def test_registry_lists_every_dataset_with_its_readme_facts():
    assert ds.list_datasets() == sorted(BUILTIN)
    for name, (folder, voxel) in BUILTIN.items():
        inf = ds.info(name)
        assert inf.folder == folder
        assert inf.voxel_size == voxel
        assert inf.licence and inf.citation and inf.source.page
        assert inf.files, f"{name} pins no files"
        assert all(len(h) == 64 for h in inf.files.values())
        for split in inf.splits:
            assert len(split.shape) == 3 and split.dtype in ("uint8", "uint16")
        json.dumps(inf.describe())  # the CLI prints it
    assert ds.info("drosophila_vnc_sstem") is ds.info("drosophila_vnc")  # folder name alias
    assert ds.info("omniem_examples").split("axonem_h").voxel_size == (30.0, 8.0, 8.0)
    assert ds.info("omniem_examples").split("gly").voxel_size is None


def test_unknown_names_splits_and_options_are_refused_clearly():
    with pytest.raises(EMDataError, match="lucchi: unknown dataset; known: drosophila_vnc"):
        ds.info("lucchi")
    with pytest.raises(ValueError, match=r"no split 'test'.*'train', 'val', 'all'"):
        ds.load("lucchi_pp", split="test")
    with pytest.raises(ValueError, match="pass split= one of"):
        ds.load("isbi2012")  # two labelled splits and an unlabelled one: no silent default
    with pytest.raises(TypeError, match="membrane_orientations"):
        ds.load("gala", split="train", membrane_orientations=True)
    assert ds.info("lucchi_pp").split(None).name == "all"
    assert ds.info("flyem_medulla").split(None).name == "all"


@pytest.mark.parametrize("name", list(BUILTIN))
def test_shared_data_matches_the_pinned_checksums(root: Path, name: str):
    folder = ds.fetch(name, download_missing=False, verify=True)
    assert folder == root / BUILTIN[name][0]


# --- every split -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "split"), SMALL_SPLITS)
def test_every_split_loads_with_paired_arrays(root: Path, name: str, split: str):
    d = ds.load(name, split=split)
    spec = ds.info(name).split(split)
    assert d.image.shape == spec.shape and d.image.dtype == np.dtype(spec.dtype)
    assert d.axes == ("z", "y", "x") and d.voxel_size == spec.voxel_size
    assert len(d.slice_names) == d.n_slices and len(set(d.slice_names)) == d.n_slices
    assert all(Path(p).is_file() and root in Path(p).parents for p in d.source_files)
    assert d.image[0].std() > 5 and d.image[-1].std() > 5, "an EM image is not flat"
    if spec.labelled:
        assert d.labels is not None and set(d.labels) == {lab.name for lab in d.info.labels}
        for arr in d.labels.values():
            assert arr.shape == d.image.shape
    else:
        assert d.labels is None
    if spec.is_volume:
        vol = d.image_volume()
        assert isinstance(vol, Volume) and vol.shape == spec.shape
        assert vol.voxel_size == spec.voxel_size
    elif d.n_slices > 1:
        with pytest.raises(ValueError, match="independent 2D images"):
            d.image_volume()
        assert d.image_volume(index=1).axes == ("y", "x")
    else:
        assert d.image_volume().shape == spec.shape[1:]


# --- Lucchi++ --------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def lucchi_train(root: Path) -> dict:
    """Facts about Lucchi++ train, computed once; its 208 MB of arrays are not kept."""
    d = ds.load("lucchi_pp", split="train")
    mito = d.labels["mitochondria"]
    return {
        "slice_names": d.slice_names,
        "mito_dtype": str(mito.dtype),
        "mito_fraction": float(mito.mean()),
        "contrast": _dark_contrast(d.image, mito),
    }


@pytest.fixture(scope="class")
def lucchi_val(root: Path) -> ds.EMDataset:
    return ds.load("lucchi_pp", split="val")


class TestLucchi:
    """Class-scoped fixtures: Lucchi++ is loaded once and released after these tests."""

    def test_splits_are_disjoint_and_cover_the_165_slices(self, root, lucchi_train, lucchi_val):
        files = sorted(p.stem for p in (root / "lucchi_pp/train/images").glob("*.png"))
        assert len(files) == 165
        assert len(lucchi_train["slice_names"]) == 132 and lucchi_val.n_slices == 33
        assert not set(lucchi_train["slice_names"]) & set(lucchi_val.slice_names)
        assert list(lucchi_train["slice_names"] + lucchi_val.slice_names) == files
        assert lucchi_val.slice_names[0] == "0132"  # val = the last 33 slices
        assert lucchi_val.image.shape == (33, 768, 1024)
        assert lucchi_val.voxel_size == (5.0, 5.0, 5.0)

    def test_mitochondria_fraction_and_darkness(self, lucchi_train, lucchi_val):
        mito = lucchi_val.labels["mitochondria"]
        assert mito.dtype == np.bool_ and lucchi_train["mito_dtype"] == "bool"
        assert 0.03 < mito.mean() < 0.15 and 0.03 < lucchi_train["mito_fraction"] < 0.15
        assert _dark_contrast(lucchi_val.image, mito) > 10  # mitochondria are darker
        assert lucchi_train["contrast"] > 10

    def test_labels_pair_with_their_own_slices(self, lucchi_val):
        img, mito = lucchi_val.image, lucchi_val.labels["mitochondria"]
        n = len(img)
        paired = np.mean([_dark_contrast(img[i], mito[i]) for i in range(n)])
        shifted = np.mean([_dark_contrast(img[i], mito[(i + 16) % n]) for i in range(n)])
        assert paired > 1.2 * shifted  # 80 nm apart the mitochondria have moved


# --- ISBI 2012 -------------------------------------------------------------------------------


def test_isbi_splits_are_numeric_order_disjoint_and_complete():
    train = ds.load("isbi2012", split="train")
    val = ds.load("isbi2012", split="val")
    full = ds.load("isbi2012", split="all_labelled")
    assert train.slice_names == tuple(f"train/{i}" for i in range(25))  # 0, 1, 2, not 0, 1, 10
    assert val.slice_names == tuple(f"train/{i}" for i in range(25, 30))
    assert train.slice_names + val.slice_names == full.slice_names
    np.testing.assert_array_equal(np.concatenate([train.image, val.image]), full.image)
    test = ds.info("isbi2012").split("test")
    assert test.shape[0] == 30 and not test.labelled


def test_isbi_membrane_semantics_and_pairing():
    d = ds.load("isbi2012", split="all_labelled")
    membrane, interior = d.labels["membrane"], d.labels["cell_interior"]
    assert membrane.dtype == bool and np.array_equal(interior, ~membrane)
    assert 0.15 < membrane.mean() < 0.35
    assert d.image[membrane].mean() + 20 < d.image[interior].mean()
    paired = [_dark_contrast(d.image[i], membrane[i]) for i in range(30)]
    shifted = [_dark_contrast(d.image[i], membrane[(i + 1) % 30]) for i in range(30)]
    assert min(paired) > 2 * max(shifted)  # 50 nm sections: the next one's membranes are elsewhere


# --- Drosophila VNC --------------------------------------------------------------------------


def test_vnc_classes_names_and_intensities():
    d = ds.load("drosophila_vnc")  # default split: all 20 sections
    assert d.split == "all" and d.n_slices == 20
    classes = d.labels["classes"]
    assert d.class_names == (
        "membrane",
        "mitochondrion",
        "synapse",
        "glia_extracellular",
        "intracellular",
    )
    counts = np.bincount(classes.ravel(), minlength=len(d.class_names))
    assert len(counts) == 5 and (counts > 0).all(), counts
    mito, intra = d.class_names.index("mitochondrion"), d.class_names.index("intracellular")
    assert d.image[classes == mito].mean() < d.image[classes == intra].mean()
    # the binary masks are separate annotations, but mitochondria and synapses agree closely
    assert (d.labels["mitochondria"] == (classes == mito)).mean() > 0.99
    assert d.labels["synapses"].dtype == bool and d.labels["membranes"].any()


def test_vnc_membrane_orientations_refine_the_membrane_class():
    five = ds.load("drosophila_vnc", split="val")
    nine = ds.load("drosophila_vnc", split="val", membrane_orientations=True)
    assert len(nine.class_names) == 9 and nine.class_names[4] == "membrane_junction"
    assert (np.bincount(nine.labels["classes"].ravel(), minlength=9) > 0).all()
    np.testing.assert_array_equal(nine.labels["classes"] <= 4, five.labels["classes"] == 0)


def test_vnc_train_val_split_the_twenty_sections():
    inf = ds.info("drosophila_vnc")
    assert [inf.split(s).shape[0] for s in ("train", "val", "all")] == [16, 4, 20]
    val = ds.load("drosophila_vnc", split="val")
    assert val.slice_names == ("16", "17", "18", "19")


# --- FlyEM medulla ---------------------------------------------------------------------------


@pytest.fixture(scope="class")
def flyem(root: Path) -> ds.EMDataset:
    return ds.load("flyem_medulla")


class TestFlyEM:
    """Class-scoped fixture: the 140 MB of FlyEM arrays are released after these tests."""

    def test_neurons_come_from_the_supervoxel_table(self, flyem):
        neurons, supervoxels = flyem.labels["neurons"], flyem.labels["supervoxels"]
        n_neurons = len(np.unique(neurons))
        assert n_neurons == 526  # data README
        assert len(np.unique(supervoxels)) > 10 * n_neurons
        assert (neurons == 0).mean() < 1e-3  # dense

    def test_neuron_boundaries_are_dark_in_the_matching_slices(self, flyem):
        # Aligns the PNG stack with the HDF5 stack: a transposed or shifted label volume would
        # put its boundaries on random grey values.
        lab = flyem.labels["neurons"]
        edge = np.zeros(lab.shape, dtype=bool)
        edge[:, :, 1:] |= lab[:, :, 1:] != lab[:, :, :-1]
        edge[:, 1:, :] |= lab[:, 1:, :] != lab[:, :-1, :]
        assert _dark_contrast(flyem.image, edge) > 20


# --- gala ------------------------------------------------------------------------------------


def test_gala_dense_neurons_with_zero_boundary():
    for split in ("train", "test"):
        d = ds.load("gala", split=split, boundary_probability=True, watershed=True)
        neurons = d.labels["neurons"]
        assert d.voxel_size is None  # not stated: never guessed
        assert len(np.unique(neurons)) > 50
        assert 0.02 < (neurons == 0).mean() < 0.2  # thin boundaries, everything else labelled
        boundary = neurons == 0
        assert d.image[boundary].mean() + 30 < d.image[~boundary].mean()
        p1 = d.extras["boundary_probability"]
        assert p1.dtype == np.float32 and p1[boundary].mean() > 0.9 > p1[~boundary].mean()
        assert d.extras["watershed"].shape == neurons.shape
    assert ds.load("gala", split="train").extras == {}


# --- EMDiffuse and OmniEM examples -----------------------------------------------------------


def test_emdiffuse_crops_are_uint16_in_grid_order():
    crops = ds.load("emdiffuse", split="denoise_crops")
    assert crops.image.dtype == np.uint16 and crops.labels is None and not crops.is_volume
    assert crops.slice_names == tuple(f"{r}_{c}" for r in range(7) for c in range(7))
    assert crops.image.max() > 255  # real 16-bit content, not 8-bit data in a wide type
    for split in ("microns", "mouse_liver"):
        assert ds.load("emdiffuse", split=split).image.dtype == np.uint8


def test_omniem_examples_shapes_and_voxel_sizes():
    mito = ds.load("omniem_examples", split="mitoem_h")
    axon = ds.load("omniem_examples", split="axonem_h")
    gly = ds.load("omniem_examples", split="gly")
    assert mito.image_volume().shape == (224, 224)
    assert mito.image_volume().voxel_size == (8.0, 8.0)
    assert axon.image_volume().shape == (16, 256, 256)
    assert gly.image.shape == (1, 168, 336) and gly.image_volume().voxel_size is None


# --- broken data is named --------------------------------------------------------------------


def test_a_stray_label_value_names_the_file(root: Path, tmp_path: Path, monkeypatch):
    # A linked copy of ISBI 2012 in which one label slice holds a value the README does not
    # define: loading must fail naming that file instead of building a wrong mask.
    src, dst = root / "isbi2012", tmp_path / "data" / "isbi2012"
    for rel in ds.info("isbi2012").files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src / rel, dst / rel)
    bad = dst / "train/label/27.png"
    bad.unlink()
    label = np.asarray(Image.open(src / "train/label/27.png")).copy()
    label[:10, :10] = 128
    Image.fromarray(label).save(bad)
    monkeypatch.setenv("EMSSL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("EM5M_HOME", str(tmp_path / "home"))
    assert ds.load("isbi2012", split="train").n_slices == 25  # other slices still fine
    with pytest.raises(InvalidVolumeError, match=r"27\.png: unexpected label values \[128\]"):
        ds.load("isbi2012", split="val")


def test_verify_detects_a_modified_file(root: Path, tmp_path: Path, monkeypatch):
    dst = tmp_path / "data" / "omniem_examples"
    dst.mkdir(parents=True)
    for rel in ds.info("omniem_examples").files:
        shutil.copyfile(root / "omniem_examples" / rel, dst / rel)  # not copy2: drop read-only
    target = dst / "gly-z=0.tif"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setenv("EMSSL_DATA", str(tmp_path / "data"))
    assert ds.fetch("omniem_examples", download_missing=False) == dst  # presence is enough
    with pytest.raises(EMDataError, match=r"gly-z=0\.tif: sha256 .* differs from the pinned"):
        ds.fetch("omniem_examples", verify=True)
