"""Pretraining data: image sources, the multi-crop dataset, a resumable sampler, collation.

Sources are 2D images: slices of em5m reference datasets or of anything `em5m.open_volume` reads,
files matched by a glob, or the tiles of an em5m corpus (WebDataset tar shards ``shard-NNNNNN.tar``
holding ``<key>.png`` + ``<key>.json``; members are indexed once and read by byte offset, so
access is random and parallel across DataLoader workers).

Determinism: the sampler yields ``(entry, step, slot)`` items. ``entry`` comes from a seeded
permutation of the dataset per pass; all randomness of a sample (tile position, crops,
augmentations, masks) comes from ``numpy.random.default_rng([seed, step, slot])``. A step's global
batch is therefore a function of ``(seed, step)`` only: independent of the number of workers, of
how it is split over ranks (rank r takes slots ``r*b .. r*b+b-1``) and of interruptions, which
makes resumption exact.
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from emdino.ssl.augment import MultiCropAugment
from emdino.ssl.config import DataConfig, PretrainConfig, SourceConfig

# ---------------------------------------------------------------------------------------------
# Sources


class ImageSource:
    """A list of 2D grey images. Subclasses implement `__len__`, `shape` and `read`."""

    name: str = "source"

    def __len__(self) -> int:
        raise NotImplementedError

    def shape(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of image ``i`` without reading its pixels."""
        raise NotImplementedError

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as a 2D array of its stored dtype."""
        raise NotImplementedError


class ArraySource(ImageSource):
    """Images of an in-memory ``(z, y, x)`` array (a loaded reference dataset).

    Args:
        array: ``(z, y, x)`` or ``(y, x)`` array.
        name: for reports.
    """

    def __init__(self, array: np.ndarray, name: str = "array") -> None:
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or 0 in array.shape:
            raise ValueError(f"{name}: expected a non-empty (z, y, x) array, got {array.shape}")
        self.array = array
        self.name = name

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def shape(self, i: int) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[2])

    def read(self, i: int) -> np.ndarray:
        return np.asarray(self.array[i])


class VolumeSource(ImageSource):
    """The z slices of a lazy `em5m.Volume` (read one slice at a time).

    Args:
        volume: an ``em5m.Volume`` with axes ``yx``, ``zyx`` or ``czyx``/``cyx`` with one channel.
        indices: z indices to use (default all).
        name: for reports.
    """

    def __init__(self, volume: Any, indices: Sequence[int] | None = None, name: str = "") -> None:
        data = volume.data
        axes = tuple(volume.axes)
        if "c" in axes:
            if data.shape[0] != 1:
                raise ValueError(f"{volume.source}: {data.shape[0]} channels; expected grey")
            data, axes = data[0], axes[1:]
        if axes == ("y", "x"):
            data = data[None]
        elif axes != ("z", "y", "x"):
            raise ValueError(f"{volume.source}: unsupported axes {axes}")
        self.data = data
        n = int(data.shape[0])
        self.indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if not self.indices or not all(0 <= i < n for i in self.indices):
            raise ValueError(f"{volume.source}: slice indices out of range 0..{n - 1}")
        self.name = name or str(volume.source)

    def __len__(self) -> int:
        return len(self.indices)

    def shape(self, i: int) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    def read(self, i: int) -> np.ndarray:
        return np.asarray(self.data[self.indices[i]].compute())


@dataclass(frozen=True)
class _Member:
    shard: str
    offset: int
    size: int


class CorpusSource(ImageSource):
    """Tiles of an em5m corpus: ``shard-NNNNNN.tar`` files with ``<key>.png`` + ``<key>.json``.

    The tar headers are scanned once; tiles are then read by byte offset. If the folder holds a
    parquet manifest (``manifest.parquet`` or ``*.parquet``) with a ``key`` column, only the keys
    it lists are used (so a curator can drop tiles by editing the manifest).

    Args:
        root: the corpus folder.
        name: for reports.

    Raises:
        FileNotFoundError: no ``shard-*.tar`` in ``root``.
    """

    def __init__(self, root: str | Path, name: str = "") -> None:
        self.root = Path(root)
        shards = sorted(self.root.glob("shard-*.tar"))
        if not shards:
            raise FileNotFoundError(f"{self.root}: no shard-*.tar files (not an em5m corpus)")
        keys: dict[str, _Member] = {}
        for shard in shards:
            with tarfile.open(shard, "r:") as tf:
                for m in tf:
                    if m.isfile() and m.name.endswith(".png"):
                        keys[m.name[: -len(".png")]] = _Member(str(shard), m.offset_data, m.size)
        wanted = self._manifest_keys()
        if wanted is not None:
            keys = {k: v for k, v in keys.items() if k in wanted}
        if not keys:
            raise FileNotFoundError(f"{self.root}: the shards hold no (listed) .png tiles")
        self.keys = sorted(keys)
        self.members = [keys[k] for k in self.keys]
        self.name = name or self.root.name
        self._sizes: dict[int, tuple[int, int]] = {}

    def _manifest_keys(self) -> set[str] | None:
        candidates = [self.root / "manifest.parquet"] + sorted(self.root.glob("*.parquet"))
        for path in candidates:
            if path.is_file():
                import pyarrow.parquet as pq

                table = pq.read_table(path)
                if "key" in table.column_names:
                    return {str(k) for k in table.column("key").to_pylist()}
        return None

    def __len__(self) -> int:
        return len(self.members)

    def _bytes(self, i: int) -> bytes:
        m = self.members[i]
        with open(m.shard, "rb") as f:
            f.seek(m.offset)
            return f.read(m.size)

    def shape(self, i: int) -> tuple[int, int]:
        if i not in self._sizes:
            with Image.open(io.BytesIO(self._bytes(i))) as im:
                self._sizes[i] = (im.height, im.width)
        return self._sizes[i]

    def read(self, i: int) -> np.ndarray:
        with Image.open(io.BytesIO(self._bytes(i))) as im:
            if im.mode not in ("L", "I;16", "I"):
                im = im.convert("L")
            return np.asarray(im).copy()


def _parse_slices(spec: str | None, n: int) -> list[int]:
    if spec is None:
        return list(range(n))
    parts = [int(p) if p.strip() else None for p in spec.split(":")]
    if len(parts) == 1:
        return [range(n)[parts[0] or 0]]
    if len(parts) > 3:
        raise ValueError(f"bad slice spec {spec!r}")
    out = list(range(n))[slice(*parts)]
    if not out:
        raise ValueError(f"slice spec {spec!r} selects nothing of {n}")
    return out


def build_source(spec: SourceConfig) -> ImageSource:
    """One `ImageSource` from its configuration (reads reference datasets into memory).

    Raises:
        ValueError / FileNotFoundError / em5m errors: the source is unusable.
    """
    if spec.kind == "dataset":
        from em5m import datasets

        assert spec.name is not None
        info = datasets.info(spec.name)
        # Options that skip auxiliary label arrays: pretraining needs only the image.
        options = {"supervoxels": False} if "supervoxels" in info.options else {}
        ds = datasets.load(spec.name, split=spec.split, **options)
        idx = _parse_slices(spec.slices, ds.n_slices)
        return ArraySource(ds.image[idx], name=f"{ds.name}/{ds.split}")
    if spec.kind == "corpus":
        assert spec.uri is not None
        return CorpusSource(os.path.expandvars(spec.uri))
    import em5m

    assert spec.uri is not None
    uri = os.path.expandvars(spec.uri)
    if spec.kind == "volume":
        vol = em5m.open_volume(uri)
        src = VolumeSource(vol, name=uri)
        return VolumeSource(vol, _parse_slices(spec.slices, len(src)), name=uri)
    files = sorted(glob.glob(uri))
    if not files:
        raise FileNotFoundError(f"no files match {uri!r}")
    return _ConcatSource([VolumeSource(em5m.open_volume(f), name=f) for f in files], uri)


class _ConcatSource(ImageSource):
    def __init__(self, parts: list[ImageSource], name: str) -> None:
        self.parts = parts
        self.name = name
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def _locate(self, i: int) -> tuple[ImageSource, int]:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[k], i - int(self.offsets[k])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shape(self, i: int) -> tuple[int, int]:
        part, j = self._locate(i)
        return part.shape(j)

    def read(self, i: int) -> np.ndarray:
        part, j = self._locate(i)
        return part.read(j)


def to_unit(image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """A 2D image as float32 in [0, 1]: uint8 / 255; other dtypes through a percentile window.

    Examples:
        >>> to_unit(np.array([[0, 255]], np.uint8)).tolist()
        [[0.0, 1.0]]
    """
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == bool:
        return image.astype(np.float32)
    x = image.astype(np.float32)
    lo, hi = np.percentile(x, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Dataset, sampler, collation


class MultiCropDataset(Dataset):
    """Samples = a random tile of an image -> multi-crop views.

    Large images are split into ``round(weight * area / tile_size^2)`` entries (at least one), so
    images are drawn in proportion to their area.

    Args:
        sources: image sources.
        augment: the multi-crop transform.
        tile_size: side of the random tile cut before cropping (smaller images are used whole).
        seed: run seed (mixed into every sample's generator).
        weights: per-source multipliers of the number of entries.
        percentiles: window for non-uint8 images.
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        augment: MultiCropAugment,
        tile_size: int,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        percentiles: tuple[float, float] = (0.5, 99.5),
    ) -> None:
        if not sources:
            raise ValueError("no image sources")
        if tile_size < 1:
            raise ValueError("tile_size must be positive")
        weights = list(weights) if weights is not None else [1.0] * len(sources)
        if len(weights) != len(sources):
            raise ValueError("one weight per source")
        self.sources = list(sources)
        self.augment = augment
        self.tile_size = tile_size
        self.seed = seed
        self.percentiles = percentiles
        src_idx, img_idx = [], []
        for s, (source, w) in enumerate(zip(self.sources, weights, strict=True)):
            for i in range(len(source)):
                if isinstance(source, CorpusSource):
                    reps = max(1, round(w))  # tiles are already tile-sized; no header reads
                else:
                    h, wd = source.shape(i)
                    reps = max(1, round(w * h * wd / tile_size**2))
                src_idx += [s] * reps
                img_idx += [i] * reps
        self.entry_source = np.asarray(src_idx, dtype=np.int64)
        self.entry_image = np.asarray(img_idx, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.entry_source)

    def summary(self) -> dict[str, dict[str, int]]:
        """Images and entries per source, for the run log."""
        out = {}
        for s, src in enumerate(self.sources):
            out[src.name] = {
                "images": len(src),
                "entries": int((self.entry_source == s).sum()),
            }
        return out

    def __getitem__(self, item: tuple[int, int, int]) -> dict[str, Any]:
        entry, step, slot = item
        rng = np.random.default_rng([self.seed, step, slot])
        src = self.sources[int(self.entry_source[entry])]
        image = to_unit(src.read(int(self.entry_image[entry])), self.percentiles)
        h, w = image.shape
        t = self.tile_size
        if h > t:
            top = int(rng.integers(0, h - t + 1))
            image = image[top : top + t]
        if w > t:
            left = int(rng.integers(0, w - t + 1))
            image = image[:, left : left + t]
        return self.augment(image, rng)


class StepBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields this rank's part of each step's global batch, from ``start_step`` on.

    The stream of entries is the concatenation of seeded permutations (one per pass over the
    dataset); step ``s`` takes positions ``s*G .. s*G+G-1`` of it (``G`` = global batch), and
    rank ``r`` the slots ``r*b .. r*b+b-1`` of those (``b = G / world``).

    Args:
        n_items: dataset length.
        global_batch: images per step over all ranks.
        seed: permutation seed.
        start_step: first step to yield (resume).
        total_steps: stop before this step (None: endless).
        rank: this process's rank.
        world: number of ranks (must divide ``global_batch``).

    Examples:
        >>> s = StepBatchSampler(10, 4, seed=0, total_steps=2)
        >>> [len(b) for b in s], list(s)[1][0][1:]
        ([4, 4], (1, 0))
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        seed: int = 0,
        start_step: int = 0,
        total_steps: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if n_items < 1 or global_batch < 1:
            raise ValueError("n_items and global_batch must be positive")
        if world < 1 or not 0 <= rank < world or global_batch % world:
            raise ValueError(f"global batch {global_batch} cannot be split over {world} ranks")
        self.n = n_items
        self.global_batch = global_batch
        self.local_batch = global_batch // world
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.rank = rank
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch, 7]).permutation(self.n)
        return self._perms[epoch]

    def entry(self, position: int) -> int:
        """Dataset index at a position of the endless entry stream."""
        epoch, offset = divmod(position, self.n)
        return int(self._perm(epoch)[offset])

    def batch(self, step: int) -> list[tuple[int, int, int]]:
        """This rank's items of step ``step``."""
        first = self.rank * self.local_batch
        return [
            (self.entry(step * self.global_batch + slot), step, slot)
            for slot in range(first, first + self.local_batch)
        ]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("endless sampler")
        return max(0, self.total_steps - self.start_step)


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples view-major, as DINOv2: all samples' view 0, then all samples' view 1, ...

    Returns:
        ``global_crops`` ``(2B, 1, G, G)``, ``local_crops`` ``(nL*B, 1, L, L)`` (or None),
        ``masks`` ``(2B, N)`` bool, ``n_global``, ``n_local``, ``batch_size``.
    """
    if not samples:
        raise ValueError("empty batch")
    n_global = len(samples[0]["global_crops"])
    n_local = len(samples[0]["local_crops"])
    global_crops = torch.stack([s["global_crops"][v] for v in range(n_global) for s in samples])
    local_crops = (
        torch.stack([s["local_crops"][v] for v in range(n_local) for s in samples])
        if n_local
        else None
    )
    masks = torch.stack([s["masks"][v] for v in range(n_global) for s in samples])
    return {
        "global_crops": global_crops,
        "local_crops": local_crops,
        "masks": masks,
        "n_global": n_global,
        "n_local": n_local,
        "batch_size": len(samples),
    }


def build_dataset(cfg: PretrainConfig) -> MultiCropDataset:
    """The multi-crop dataset of a configuration (loads/opens every source).

    Raises:
        ValueError: no sources configured.
    """
    data: DataConfig = cfg.data
    if not data.sources:
        raise ValueError("data.sources is empty: configure at least one image source")
    augment = MultiCropAugment(
        cfg.crops, cfg.augment, cfg.mask, cfg.model.patch_size, data.mean, data.std
    )
    sources = [build_source(s) for s in data.sources]
    return MultiCropDataset(
        sources,
        augment,
        data.tile_size,
        seed=cfg.seed,
        weights=[s.weight for s in data.sources],
        percentiles=data.percentiles,
    )


def build_loader(
    dataset: MultiCropDataset,
    cfg: PretrainConfig,
    start_step: int = 0,
    rank: int = 0,
    world: int = 1,
    total_steps: int | None = None,
) -> DataLoader:
    """A DataLoader yielding collated batches of steps ``start_step ..``."""
    sampler = StepBatchSampler(
        len(dataset),
        cfg.optim.batch_size,
        seed=cfg.seed,
        start_step=start_step,
        total_steps=cfg.optim.total_steps if total_steps is None else total_steps,
        rank=rank,
        world=world,
    )
    workers = cfg.data.workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=cfg.data.prefetch_factor if workers else None,
        persistent_workers=False,
        # Its own generator: creating the iterator must not consume the global torch RNG
        # (stochastic depth), or a resumed run would drift from an uninterrupted one.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
