"""Multi-crop for EM: random resized crops + grey-level augmentations, per-sample deterministic.

Every random choice comes from the numpy ``Generator`` passed in, so a sample's views depend only
on its seed (never on worker or rank). Per view, in order: random resized crop (area fraction and
aspect ratio drawn as torchvision's ``RandomResizedCrop``), flips and a 90-degree rotation,
brightness/contrast jitter, gamma, Gaussian blur, additive Gaussian noise, solarization (global
view 2 only), clipping to [0, 1], then normalisation with the configured mean/std.
No colour jitter: EM is grey.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from emdino.ssl.config import AugmentConfig, CropsConfig, MaskConfig
from emdino.ssl.masking import BlockMaskGenerator, sample_mask


def random_resized_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering a random area fraction and aspect ratio.

    Same rule as ``torchvision.transforms.RandomResizedCrop.get_params`` (10 tries, then a
    centred crop with the aspect ratio clamped), with numpy's generator.

    Examples:
        >>> random_resized_box(100, 100, (0.5, 0.5), (1.0, 1.0), np.random.default_rng(0))[2:]
        (71, 71)
    """
    if height < 1 or width < 1:
        raise ValueError(f"empty image {height}x{width}")
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    pad = min(radius, img.shape[-1] - 1, img.shape[-2] - 1)
    if pad < radius:  # image smaller than the kernel: shrink the kernel symmetrically
        k = k[radius - pad : radius + pad + 1]
        k = k / k.sum()
    t = img[None]  # (1, 1, H, W)
    t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
    t = F.conv2d(t, k.view(1, 1, 1, -1))
    t = F.conv2d(t, k.view(1, 1, -1, 1))
    return t[0]


class MultiCropAugment:
    """Turns one grey image into the global and local views (and iBOT masks) of a sample.

    Args:
        crops: crop sizes, scales and counts.
        augment: grey-level augmentation parameters.
        mask: iBOT mask parameters.
        patch_size: ViT patch size (the mask grid is ``global_size / patch_size``).
        mean: normalisation mean of the [0, 1] image.
        std: normalisation std.

    Examples:
        >>> from emdino.ssl.config import AugmentConfig, CropsConfig, MaskConfig
        >>> aug = MultiCropAugment(CropsConfig(global_size=32, local_size=16, n_local=2),
        ...                        AugmentConfig(), MaskConfig(), patch_size=8)
        >>> out = aug(np.random.default_rng(0).random((64, 64), dtype=np.float32),
        ...           np.random.default_rng(1))
        >>> [tuple(v.shape) for v in out["global_crops"]], out["masks"].shape
        ([(1, 32, 32), (1, 32, 32)], torch.Size([2, 16]))
    """

    def __init__(
        self,
        crops: CropsConfig,
        augment: AugmentConfig,
        mask: MaskConfig,
        patch_size: int,
        mean: float = 0.595446,
        std: float = 0.211906,
    ) -> None:
        if std <= 0:
            raise ValueError("std must be > 0")
        if crops.global_size % patch_size:
            raise ValueError("global_size must be a multiple of patch_size")
        self.crops = crops
        self.aug = augment
        self.mask = mask
        self.mean = mean
        self.std = std
        g = crops.global_size // patch_size
        self.mask_gen = BlockMaskGenerator((g, g), min_patches=mask.min_patches)

    def view(
        self,
        image: torch.Tensor,
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """One augmented, normalised ``(1, size, size)`` view of a ``(1, H, W)`` [0, 1] image."""
        a = self.aug
        top, left, h, w = random_resized_box(
            image.shape[-2], image.shape[-1], scale, self.crops.ratio, rng
        )
        v = image[:, top : top + h, left : left + w]
        v = F.interpolate(
            v[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if a.flip and rng.uniform() < 0.5:
            v = v.flip(-1)
        if a.rot90:
            v = torch.rot90(v, int(rng.integers(0, 4)), dims=(-2, -1))
        if rng.uniform() < a.jitter_p:
            b = rng.uniform(1 - a.brightness, 1 + a.brightness)
            c = rng.uniform(1 - a.contrast, 1 + a.contrast)
            if rng.uniform() < 0.5:  # random order, as ColorJitter
                v = v * b
                v = (v - v.mean()) * c + v.mean()
            else:
                v = (v - v.mean()) * c + v.mean()
                v = v * b
            v = v.clamp(0, 1)
        if rng.uniform() < a.gamma_p:
            v = v.clamp(0, 1) ** rng.uniform(*a.gamma)
        if rng.uniform() < blur_p:
            v = _gaussian_blur(v, rng.uniform(*a.blur_sigma))
        if rng.uniform() < a.noise_p:
            std = rng.uniform(*a.noise_std)
            noise = rng.standard_normal(v.shape, dtype=np.float32)
            v = v + std * torch.from_numpy(noise)
        v = v.clamp(0, 1)
        if rng.uniform() < solarize_p:
            v = torch.where(v >= 0.5, 1 - v, v)
        return ((v - self.mean) / self.std).contiguous()

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
        """Views of one image.

        Args:
            image: 2D float array in [0, 1].
            rng: the sample's generator.

        Returns:
            ``global_crops`` (list of 2 ``(1, G, G)``), ``local_crops`` (list of ``(1, L, L)``),
            ``masks`` (``(2, (G/p)^2)`` bool, one per global view).
        """
        if image.ndim != 2:
            raise ValueError(f"expected a 2D image, got shape {image.shape}")
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        c, a = self.crops, self.aug
        global_crops = [
            self.view(img, c.global_size, c.global_scale, a.blur_p[0], 0.0, rng),
            self.view(img, c.global_size, c.global_scale, a.blur_p[1], a.solarize_p, rng),
        ]
        local_crops = [
            self.view(img, c.local_size, c.local_scale, a.blur_p[2], 0.0, rng)
            for _ in range(c.n_local)
        ]
        masks = np.stack(
            [
                sample_mask(self.mask_gen, rng, self.mask.sample_probability, self.mask.ratio)
                for _ in range(c.n_global)
            ]
        )
        return {
            "global_crops": global_crops,
            "local_crops": local_crops,
            "masks": torch.from_numpy(masks),
        }
