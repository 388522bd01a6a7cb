"""Training samples: random crops of em5m reference datasets through MONAI dictionary transforms.

Each sample is a dict ``{"image": [1, h, w] float32 in [0, 1], "target": ...}`` plus ``"mask"``
for blind-spot denoising (the pixels whose value the network must predict without seeing it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai import transforms as mt

from omniem.train.config import AugmentConfig, DataConfig, parse_slices


@dataclass
class SplitArrays:
    """Images ``[N, H, W]`` uint8 and targets (labels ``[N, H, W]`` int64, or None)."""

    images: np.ndarray
    labels: np.ndarray | None
    names: list[str]
    voxel_size: tuple[float, ...] | None


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    lo, hi = np.percentile(img, (0.1, 99.9))
    return (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255 + 0.5).astype(np.uint8)


def load_split(
    cfg: DataConfig, split: str, slices: str, *, with_labels: bool, bin_shifts: int = 1
) -> SplitArrays:
    """Read a split of ``cfg.dataset`` (em5m reference datasets) and select its slices.

    ``bin_shifts > 1`` (with ``cfg.bin > 1``) bins every slice at several grid offsets
    (`bin_images_shifted`); the training loop asks for it on the training split only.
    """
    import em5m.datasets

    ds = em5m.datasets.load(cfg.dataset, split=split)
    idx = parse_slices(slices, ds.image.shape[0])
    if not idx:
        raise ValueError(f"{cfg.dataset}/{split}: slice selection {slices!r} selects nothing")
    images = _to_uint8(np.asarray(ds.image)[idx])
    voxel_size = ds.voxel_size
    if cfg.bin > 1:
        if with_labels:
            raise ValueError(f"data.bin={cfg.bin}: binning is for restoration data, not labels")
        images = bin_images_shifted(images, cfg.bin, bin_shifts)
        if voxel_size is not None:  # in-plane axes (the last two) grow by the bin factor
            voxel_size = (*voxel_size[:-2], *(v * cfg.bin for v in voxel_size[-2:]))
    labels = None
    if with_labels:
        if not ds.labels or cfg.label_key not in ds.labels:
            have = sorted(ds.labels) if ds.labels else []
            raise ValueError(
                f"{cfg.dataset}/{split} has no label {cfg.label_key!r}; labels: {have}"
            )
        raw = np.asarray(ds.labels[cfg.label_key])[idx]
        if cfg.label_map:
            lut = np.zeros(int(raw.max()) + 1, dtype=np.int64)
            for k, v in cfg.label_map.items():
                if k < lut.size:
                    lut[k] = v
            labels = lut[raw]
        else:
            labels = raw.astype(np.int64)
    names = [str(ds.slice_names[i]) for i in idx] if ds.slice_names else [str(i) for i in idx]
    if cfg.bin > 1 and bin_shifts > 1:  # one binned copy per grid offset, in order
        offs = _offsets(cfg.bin, bin_shifts)
        names = [f"{n}@{dy},{dx}" for dy in offs for dx in offs for n in names]
    return SplitArrays(images, labels, names, voxel_size)


def bin_images(images: np.ndarray, factor: int) -> np.ndarray:
    """Area-bin ``[N, H, W]`` uint8 images by ``factor`` (mean of each block, rounded; ragged
    edges cropped).

    Examples:
        >>> bin_images(np.arange(16, dtype=np.uint8).reshape(1, 4, 4), 2)[0].tolist()
        [[2, 4], [10, 12]]
    """
    n, h, w = images.shape
    hb, wb = h // factor, w // factor
    if hb < 1 or wb < 1:
        raise ValueError(f"images {h} x {w} are smaller than the bin factor {factor}")
    a = images[:, : hb * factor, : wb * factor].reshape(n, hb, factor, wb, factor)
    return np.rint(a.mean(axis=(2, 4), dtype=np.float64)).astype(np.uint8)


def _offsets(factor: int, shifts: int) -> list[int]:
    return [k * factor // shifts for k in range(shifts)]


def bin_images_shifted(images: np.ndarray, factor: int, shifts: int = 1) -> np.ndarray:
    """`bin_images` at ``shifts`` grid offsets per axis (``k * factor // shifts``), stacked.

    Every copy is binned from the same ``H - max offset`` by ``W - max offset`` window, so all
    have one shape; copies are ordered by (y offset, x offset), images within each.

    Examples:
        >>> a = np.arange(36, dtype=np.uint8).reshape(1, 6, 6)
        >>> bin_images_shifted(a, 2, 2).shape  # offsets 0 and 1 on each axis: 4 copies of 1
        (4, 2, 2)
        >>> bin_images_shifted(a, 2, 2)[3].tolist()  # offset (1, 1)
        [[10, 12], [22, 24]]
        >>> bin_images_shifted(a, 2, 3)
        Traceback (most recent call last):
        ...
        ValueError: bin_shifts must be between 1 and the bin factor 2, got 3
    """
    if not 1 <= shifts <= factor:
        raise ValueError(f"bin_shifts must be between 1 and the bin factor {factor}, got {shifts}")
    if shifts == 1:
        return bin_images(images, factor)
    offs = _offsets(factor, shifts)
    h, w = images.shape[1] - offs[-1], images.shape[2] - offs[-1]
    return np.concatenate(
        [bin_images(images[:, dy : dy + h, dx : dx + w], factor) for dy in offs for dx in offs]
    )


def augmentations(aug: AugmentConfig, keys: list[str], label_keys: list[str]) -> mt.Compose:
    """MONAI dictionary transforms: flips, 90-degree rotations, gamma, intensity, elastic."""
    ts: list[Any] = []
    if aug.flip:
        ts += [
            mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
        ]
    if aug.rot90:
        ts.append(mt.RandRotate90d(keys, prob=0.75, max_k=3))
    if aug.elastic_p > 0:
        modes = ["nearest" if k in label_keys else "bilinear" for k in keys]
        ts.append(
            mt.Rand2DElasticd(
                keys,
                spacing=(32, 32),
                magnitude_range=(1, 3),
                prob=aug.elastic_p,
                mode=modes,
                padding_mode="reflection",
            )
        )
    if aug.gamma_p > 0:
        ts.append(mt.RandAdjustContrastd(["image"], prob=aug.gamma_p, gamma=aug.gamma))
    if aug.intensity_p > 0:
        ts.append(mt.RandScaleIntensityd(["image"], factors=aug.contrast, prob=aug.intensity_p))
        ts.append(mt.RandShiftIntensityd(["image"], offsets=aug.brightness, prob=aug.intensity_p))
    return mt.Compose(ts)


class CropSampler(torch.utils.data.IterableDataset):
    """Endless random training samples of one split.

    Segmentation: a ``pos_fraction`` of crops is centred on a foreground pixel (MONAI's
    ``RandCropByPosNegLabeld`` with precomputed, sub-sampled indices), the rest anywhere.
    Restoration targets are made from the crop (`omniem.degrade`).
    """

    def __init__(
        self,
        arrays: SplitArrays,
        data: DataConfig,
        aug: AugmentConfig,
        *,
        task: str,
        output_scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.arrays, self.data, self.task, self.seed = arrays, data, task, seed
        crop = data.crop
        h, w = arrays.images.shape[-2:]
        if h < crop or w < crop:
            raise ValueError(f"{data.dataset}: images {h}x{w} are smaller than the crop {crop}")
        self.label_keys = ["label"] if arrays.labels is not None else []
        keys = ["image", *self.label_keys]
        self.aug = augmentations(aug, keys, self.label_keys)
        self.fg_bg: list[tuple[np.ndarray, np.ndarray]] = []
        if arrays.labels is not None:
            for lab in arrays.labels:
                flat = lab.reshape(-1)
                fg = np.flatnonzero(flat > 0)[::7]
                bg = np.flatnonzero(flat == 0)[::97]
                self.fg_bg.append((fg, bg))
            self.cropper = mt.RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=(crop, crop),
                pos=data.pos_fraction,
                neg=1.0 - data.pos_fraction,
                num_samples=1,
                fg_indices_key="fg",
                bg_indices_key="bg",
                allow_smaller=False,
            )
        else:
            self.cropper = mt.RandSpatialCropd(keys, roi_size=(crop, crop), random_size=False)
        self.output_scale = output_scale

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = _worker_rng(self.seed)
        self.seed_transforms(rng)
        while True:
            yield self.sample(rng)

    def seed_transforms(self, rng: np.random.Generator) -> None:
        self.cropper.set_random_state(seed=int(rng.integers(2**31)))
        self.aug.set_random_state(seed=int(rng.integers(2**31)))

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        a = self.arrays
        i = int(rng.integers(len(a.images)))
        d: dict[str, Any] = {
            "image": torch.from_numpy(a.images[i][None].astype(np.float32) / 255.0)
        }
        if a.labels is not None:
            d["label"] = torch.from_numpy(a.labels[i][None])
            fg, bg = self.fg_bg[i]
            if fg.size == 0:
                fg = bg
            d["fg"], d["bg"] = fg, bg
            d = self.cropper(d)[0]
            d.pop("fg", None)
            d.pop("bg", None)
        else:
            d = self.cropper(d)
        d = self.aug(d)
        out = {"image": torch.as_tensor(d["image"]).float().clamp(0, 1)}
        if "label" in d:
            out["target"] = torch.as_tensor(d["label"]).long()
        if self.task == "restoration":
            out.update(self.restoration_pair(out["image"], rng))
        return out

    def restoration_pair(
        self, clean: torch.Tensor, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        from omniem import degrade

        c = clean[0].numpy()
        kind = self.data.target
        if kind == "noise":
            level = self.data.noise_levels[int(rng.integers(len(self.data.noise_levels)))]
            noisy = degrade.poisson_gaussian(c, **degrade.NOISE_LEVELS[level], rng=rng)
            return {"image": torch.from_numpy(noisy[None]).float(), "target": clean}
        if kind == "downsample":
            small = degrade.downsample2x(c)
            return {"image": torch.from_numpy(small[None]).float(), "target": clean}
        # blind spot (Noise2Void): replace a few pixels by a random neighbour, predict the original
        x = c.copy()
        h, w = x.shape
        n = max(1, int(self.data.blind_spot_fraction * h * w))
        ys, xs = rng.integers(h, size=n), rng.integers(w, size=n)
        dy, dx = rng.integers(-2, 3, size=n), rng.integers(-2, 3, size=n)
        same = (dy == 0) & (dx == 0)
        dx[same] = 1
        x[ys, xs] = c[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
        mask = np.zeros_like(c, dtype=np.float32)
        mask[ys, xs] = 1.0
        return {
            "image": torch.from_numpy(x[None]).float(),
            "target": clean,
            "mask": torch.from_numpy(mask[None]),
        }


def _worker_rng(seed: int) -> np.random.Generator:
    info = torch.utils.data.get_worker_info()
    wid = info.id if info else 0
    return np.random.default_rng([seed, wid, int(torch.initial_seed()) % 2**31])


class MixedSampler(torch.utils.data.IterableDataset):
    """Supervised denoising samples mixed with blind-spot samples of real noisy images.

    Each sample comes from one of ``self_supervised`` (chosen uniformly) with probability
    ``fraction``, else from ``supervised``. Every sample carries a ``"mask"`` (all ones for the
    supervised ones) so that batches collate and the loss weighs each sample equally.
    """

    def __init__(
        self,
        supervised: CropSampler,
        self_supervised: list[CropSampler],
        fraction: float,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not self_supervised:
            raise ValueError("MixedSampler needs at least one self-supervised sampler")
        self.supervised, self.self_supervised = supervised, self_supervised
        self.fraction, self.seed = fraction, seed

    def __iter__(self):  # type: ignore[no-untyped-def]
        rng = _worker_rng(self.seed)
        for s in (self.supervised, *self.self_supervised):
            s.seed_transforms(rng)
        while True:
            yield self.sample(rng)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if rng.random() < self.fraction:
            blind = self.self_supervised[int(rng.integers(len(self.self_supervised)))]
            return blind.sample(rng)
        out = self.supervised.sample(rng)
        out["mask"] = torch.ones_like(out["target"])
        return out


def training_sampler(
    arrays: SplitArrays,
    data: DataConfig,
    aug: AugmentConfig,
    *,
    task: str,
    output_scale: float = 1.0,
    seed: int = 0,
) -> CropSampler | MixedSampler:
    """The training sampler of a run: ``CropSampler`` over ``arrays``, mixed with blind-spot
    samplers over ``data.self_supervised`` when that is set."""
    main = CropSampler(arrays, data, aug, task=task, output_scale=output_scale, seed=seed)
    if not data.self_supervised:
        return main
    blind = []
    for name, split in data.self_supervised:
        d = data.model_copy(update={"dataset": name, "target": "blind_spot", "bin": 1})
        blind.append(CropSampler(load_split(d, split, "all", with_labels=False), d, aug, task=task))
    return MixedSampler(main, blind, data.self_supervised_fraction, seed=seed)


def loader(
    sampler: torch.utils.data.IterableDataset, batch_size: int, workers: int
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        sampler, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0
    )
