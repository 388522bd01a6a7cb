"""Procedural EM phantoms with ground truth (numpy/scipy only).

A phantom is neural-tissue-like: cells with membranes, mitochondria with double membranes and
cristae, synaptic vesicle clusters with postsynaptic densities, ER sheets and textured cytoplasm,
rendered with SEM (FIB-SEM) or TEM contrast, a PSF, thick sections and Poisson-Gaussian noise.
All sizes are physical (nm); everything is a deterministic function of the seed and of position,
so any block renders on its own and agrees with its neighbours.

Examples:
    >>> from em5m.synth import phantom
    >>> p = phantom((4, 64, 64), voxel_size=(20, 5, 5), seed=7)
    >>> p.image.shape, p.cells.dtype, p.axes
    ((4, 64, 64), dtype('int32'), ('z', 'y', 'x'))
"""

from __future__ import annotations

from em5m.synth.contrast import MODALITIES, SEM, TEM, Contrast
from em5m.synth.geometry import Tissue, World
from em5m.synth.noise import NoiseModel
from em5m.synth.render import (
    FIELDS,
    Phantom,
    phantom,
    phantom_block,
    phantom_dask,
    phantom_volume,
)

__all__ = [
    "FIELDS",
    "MODALITIES",
    "SEM",
    "TEM",
    "Contrast",
    "NoiseModel",
    "Phantom",
    "Tissue",
    "World",
    "phantom",
    "phantom_block",
    "phantom_dask",
    "phantom_volume",
]
