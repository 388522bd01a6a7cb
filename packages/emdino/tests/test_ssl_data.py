"""Multi-crop augmentation, sources, the resumable sampler and collation."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emdino.ssl.augment import MultiCropAugment, random_resized_box
from emdino.ssl.config import AugmentConfig, CropsConfig, MaskConfig, load_config
from emdino.ssl.data import (
    ArraySource,
    CorpusSource,
    MultiCropDataset,
    StepBatchSampler,
    build_dataset,
    collate,
    to_unit,
)

needs_data = pytest.mark.skipif(
    not os.environ.get("EMSSL_DATA"), reason="EMSSL_DATA (real EM data) not set"
)


def _augment(n_local: int = 2) -> MultiCropAugment:
    return MultiCropAugment(
        CropsConfig(global_size=32, local_size=16, n_local=n_local),
        AugmentConfig(),
        MaskConfig(sample_probability=1.0, min_patches=1),
        patch_size=8,
        mean=0.5,
        std=0.25,
    )


def test_random_resized_box_stays_inside() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_box(40, 90, (0.05, 1.0), (0.75, 1.333), rng)
        assert top >= 0 and top + h <= 40 and left >= 0 and left + w <= 90 and h > 0 and w > 0
    with pytest.raises(ValueError):
        random_resized_box(0, 5, (0.1, 1), (1, 1), rng)


def test_multicrop_views_shapes_range_and_determinism() -> None:
    img = np.random.default_rng(0).random((50, 70), dtype=np.float32)
    aug = _augment()
    a = aug(img, np.random.default_rng(5))
    b = aug(img, np.random.default_rng(5))
    c = aug(img, np.random.default_rng(6))
    assert [v.shape for v in a["global_crops"]] == [(1, 32, 32)] * 2
    assert [v.shape for v in a["local_crops"]] == [(1, 16, 16)] * 2
    assert a["masks"].shape == (2, 16) and a["masks"].dtype == torch.bool
    assert a["masks"].any(1).all()  # sample_probability 1: every global view is masked
    for v in a["global_crops"] + a["local_crops"]:
        # Views are clipped to [0, 1] before normalisation with mean 0.5, std 0.25.
        assert v.min() >= -2.0 - 1e-6 and v.max() <= 2.0 + 1e-6
    for x, y in zip(
        a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"], strict=True
    ):
        assert torch.equal(x, y)
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])


def test_sampler_is_a_function_of_step_and_splits_over_ranks() -> None:
    whole = StepBatchSampler(10, 4, seed=3, total_steps=6)
    batches = list(whole)
    # The entry stream walks whole permutations: each pass covers every item once.
    stream = [e for b in batches for e, _, _ in b]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    # Resuming at step 4 yields the same batches.
    assert list(StepBatchSampler(10, 4, seed=3, start_step=4, total_steps=6)) == batches[4:]
    # Two ranks take the two halves of each global batch.
    r0 = list(StepBatchSampler(10, 4, seed=3, total_steps=6, rank=0, world=2))
    r1 = list(StepBatchSampler(10, 4, seed=3, total_steps=6, rank=1, world=2))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == batches
    with pytest.raises(ValueError):
        StepBatchSampler(10, 3, world=2)


def test_collate_is_view_major() -> None:
    aug = _augment(n_local=1)
    img = np.random.default_rng(1).random((40, 40), dtype=np.float32)
    samples = [aug(img, np.random.default_rng(i)) for i in range(3)]
    batch = collate(samples)
    assert batch["global_crops"].shape == (6, 1, 32, 32)
    assert batch["local_crops"].shape == (3, 1, 16, 16)
    assert torch.equal(batch["global_crops"][1], samples[1]["global_crops"][0])
    assert torch.equal(batch["global_crops"][4], samples[1]["global_crops"][1])
    assert torch.equal(batch["masks"][5], samples[2]["masks"][1])


def test_to_unit_and_area_weighting() -> None:
    assert to_unit(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    u16 = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out = to_unit(u16, (0, 100))
    assert out.min() == 0.0 and out.max() == 1.0
    big = ArraySource(np.zeros((2, 128, 128), np.uint8), "big")
    small = ArraySource(np.zeros((3, 20, 20), np.uint8), "small")
    ds = MultiCropDataset([big, small], _augment(), tile_size=64)
    # 128^2 / 64^2 = 4 entries per big image, at least 1 per small image.
    assert ds.summary() == {
        "big": {"images": 2, "entries": 8},
        "small": {"images": 3, "entries": 3},
    }
    item = ds[(0, 0, 0)]
    assert item["global_crops"][0].shape == (1, 32, 32)


def _write_corpus(root: Path, images: list[np.ndarray]) -> list[str]:
    keys = []
    root.mkdir(parents=True)
    for shard in range(2):
        with tarfile.open(root / f"shard-{shard:06d}.tar", "w") as tf:
            for i, im in enumerate(images[shard::2]):
                key = f"s{shard}_{i:04d}"
                keys.append(key)
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="PNG")
                for name, data in (
                    (f"{key}.png", buf.getvalue()),
                    (f"{key}.json", json.dumps({"key": key}).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return keys


def test_corpus_source_reads_shards_and_honours_manifest(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (24 + i, 30), dtype=np.uint8) for i in range(5)]
    keys = _write_corpus(tmp_path / "corpus", images)
    src = CorpusSource(tmp_path / "corpus")
    assert len(src) == 5
    by_key = dict(zip(src.keys, range(len(src)), strict=True))
    for k, im in zip(keys, images[0::2] + images[1::2], strict=True):
        np.testing.assert_array_equal(src.read(by_key[k]), im)
        assert src.shape(by_key[k]) == im.shape
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": keys[:2]}), tmp_path / "corpus" / "manifest.parquet")
    assert CorpusSource(tmp_path / "corpus").keys == sorted(keys[:2])
    with pytest.raises(FileNotFoundError):
        CorpusSource(tmp_path)


@needs_data
def test_dataset_sources_from_real_data() -> None:
    cfg = load_config(
        "tiny_test",
        [
            "data.sources=[{kind: dataset, name: lucchi_pp, split: val, slices: '0:2'},"
            " {kind: dataset, name: emdiffuse, split: denoise_crops, slices: '0:1'}]"
        ],
    )
    ds = build_dataset(cfg)
    summary = ds.summary()
    # 768 x 1024 at tile 64 -> 192 entries per slice; the uint16 crop (256^2) -> 16.
    assert summary == {
        "lucchi_pp/val": {"images": 2, "entries": 384},
        "emdiffuse/denoise_crops": {"images": 1, "entries": 16},
    }
    item = ds[(len(ds) - 1, 0, 0)]  # a uint16 image goes through the percentile window
    assert torch.isfinite(item["global_crops"][0]).all()
