"""Phantom geometry in physical units (nm): cells, mitochondria, vesicles, ER, synapses.

The tissue is an infinite procedural world defined by a seed. Cells are a power (weighted
Voronoi) diagram of one jittered seed point per grid cube with wavy faces; organelles are objects
that each grid region of space generates from its own hashed random generator. Nothing depends on
which block of voxels is being rendered, so neighbouring blocks agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from itertools import product

import numpy as np

from em5m.synth.fields import (
    LatticeNoise,
    hash3,
    mix_int,
    noise1d,
    noise1d_bounds,
    region_rng,
    two_unit_floats,
)

# Purpose tags mixed into the seed so each random quantity has its own stream.
TAG_CELLS, TAG_WAVE, TAG_MITO, TAG_VESICLE, TAG_ER, TAG_ER_FIELD = range(1, 7)

_ID_OFFSET = 512  # cell grid indices in [-512, 512) map to positive int32 ids
_MITO_ID_OFFSET = 128
_MITO_PER_REGION = 64

#: Default distance (nm) from a membrane up to which cell tiles report exact distances; beyond it
#: consumers only learn "far from any membrane".
H_USE = 80.0
_POINT_CANDIDATES = 16
#: Mitochondria stay this far (nm) inside the cell boundary.
MITO_MARGIN = 30.0


def _check_range(name: str, value: tuple[float, float], lo: float = 0.0) -> tuple[float, float]:
    a, b = (float(v) for v in value)
    if not (math.isfinite(a) and math.isfinite(b) and lo <= a <= b):
        raise ValueError(f"{name} must be an ordered (min, max) pair >= {lo}, got {value}")
    return a, b


@dataclass(frozen=True)
class Tissue:
    """Physical parameters of the phantom tissue (lengths in nm, densities per µm³).

    Args:
        cell_diameter: mean cell (profile) diameter; cells are 1-3 µm in neuropil-like tissue.
        cell_size_variation: 0 gives similar cells, 1 strongly varied sizes (power weights).
        membrane_thickness: plasma membrane thickness (~8 nm); two cells meet with two membranes.
        extracellular_gap: space between the membranes of two neighbouring cells.
        membrane_waviness: typical (standard deviation, nm) smooth displacement of membranes
            from flat Voronoi faces.
        mito_fraction: target volume fraction of mitochondria (Lucchi++ has ~7 %).
        mito_width: range of mitochondrion diameters (~300-600 nm).
        mito_length: range of extra tube length beyond the round caps (0 = sphere).
        vesicle_clusters: synaptic vesicle clusters per µm³ (each with a synapse density).
        vesicle_diameter: mean vesicle outer diameter (~40 nm).
        er_density: ER patches per µm³.

    Examples:
        >>> Tissue(cell_diameter=2000.0).mito_width
        (300.0, 600.0)
    """

    cell_diameter: float = 1500.0
    cell_size_variation: float = 0.8
    membrane_thickness: float = 8.0
    extracellular_gap: float = 10.0
    membrane_waviness: float = 50.0
    mito_fraction: float = 0.06
    mito_width: tuple[float, float] = (300.0, 600.0)
    mito_length: tuple[float, float] = (0.0, 1200.0)
    vesicle_clusters: float = 1.0
    vesicle_diameter: float = 40.0
    er_density: float = 0.5

    def __post_init__(self) -> None:
        positive = ("cell_diameter", "membrane_thickness", "vesicle_diameter")
        for name in positive:
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be positive, got {v}")
        nonneg = ("extracellular_gap", "membrane_waviness", "mito_fraction", "vesicle_clusters",
                  "er_density")  # fmt: skip
        for name in nonneg:
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0, got {v}")
        if not 0 <= self.cell_size_variation <= 1:
            raise ValueError(f"cell_size_variation must be in [0, 1]: {self.cell_size_variation}")
        if self.mito_fraction > 0.5:
            raise ValueError(f"mito_fraction must be <= 0.5, got {self.mito_fraction}")
        if self.membrane_waviness > 0.1 * self.cell_diameter:
            raise ValueError("membrane_waviness must be <= 0.1 * cell_diameter")
        object.__setattr__(self, "mito_width", _check_range("mito_width", self.mito_width, 1.0))
        object.__setattr__(self, "mito_length", _check_range("mito_length", self.mito_length))


# --------------------------------------------------------------------------------------------
# Cells: power diagram of jittered grid seeds with wavy faces
# --------------------------------------------------------------------------------------------


@dataclass
class CellTile:
    """Cells on a grid: per-voxel local label, the label -> global id table, and the distance
    (nm) to the nearest cell face (accurate below the tile's ``h_use``)."""

    local: np.ndarray
    ids: np.ndarray
    dist: np.ndarray

    @property
    def global_ids(self) -> np.ndarray:
        return np.take(self.ids.astype(np.int32), self.local)


@dataclass(frozen=True)
class Cells:
    """The cell partition of space.

    One seed per grid cube of side ``spacing`` (jittered). A voxel ``p`` belongs to the seed with
    the smallest ``|p - s|^2 - w_s(p)``: a power diagram whose weights vary smoothly in space, as
    a sum of three per-cell 1-D noises (along z, y and x). That bends the faces by about
    ``waviness`` nm while keeping the partition continuous (no glitches at junctions) and every
    distance separable, hence cheap on grids.
    """

    key: int
    spacing: float
    weight: float
    waviness: float
    jitter: float = 0.9

    @property
    def amplitude(self) -> float:
        # Face shift = (w_a - w_b) / (2 |a - b|); three 1-D noises of std ~0.4 per cell give a
        # shift std of ~0.49 * amplitude / |a - b|, and |a - b| ~ spacing.
        return 2.0 * self.waviness * self.spacing

    @property
    def wave_spacing(self) -> float:
        return min(500.0, self.spacing / 2.5)

    def reach(self, h_cap: float) -> float:
        """Radius around a point that holds every seed that can own it or be a neighbour whose
        face is closer than ``h_cap``. Weights lie in ``[-3A, weight + 3A]``; the owner ``a``
        has ``|p-a|^2 <= 3 s^2 + weight + 6A`` (its own cube's seed bounds it) and a neighbour
        ``b`` needs ``|p-b|^2 - w_b < |p-a|^2 - w_a + 2 |a-b| h_cap``."""
        h = h_cap
        r1 = math.sqrt(3 * self.spacing**2 + self.weight + 6 * self.amplitude)
        return h + math.sqrt(h * h + r1 * r1 + 2 * r1 * h) + 1.0

    def seeds(
        self, ci: np.ndarray, cj: np.ndarray, ck: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seed position (..., 3) nm, base weight and int64 id of grid cubes ``(ci, cj, ck)``."""
        ci, cj, ck = np.broadcast_arrays(*(np.asarray(c, np.int64) for c in (ci, cj, ck)))
        h1 = hash3(self.key, ci, cj, ck)
        h2 = hash3(self.key ^ 0x5A5A5A5A5A5A5A5A, ci, cj, ck)
        u0, u1 = two_unit_floats(h1)
        u2, u3 = two_unit_floats(h2)
        cells = np.stack([ci, cj, ck], axis=-1).astype(np.float64)
        jit = np.stack([u0, u1, u2], axis=-1) - 0.5
        pos = (cells + 0.5 + self.jitter * jit) * self.spacing
        o, m = _ID_OFFSET, 2 * _ID_OFFSET
        ids = 1 + ((ci + o) * m + (cj + o)) * m + (ck + o)
        return pos, self.weight * u3, ids

    def wave(self, axis: int, ids: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """Weight term along ``axis`` of cells ``ids`` at ``coords`` (broadcast), nm^2."""
        key = mix_int(self.key, TAG_WAVE, axis)
        return self.amplitude * noise1d(key, ids, coords, self.wave_spacing)

    def gather(
        self, lo: np.ndarray, hi: np.ndarray, reach: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All seeds of grid cubes within ``reach`` of the box ``[lo, hi]`` (nm)."""
        c0 = np.floor((np.asarray(lo) - reach) / self.spacing).astype(np.int64)
        c1 = np.floor((np.asarray(hi) + reach) / self.spacing).astype(np.int64)
        ci, cj, ck = np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(c0, c1, strict=True)),
                                 indexing="ij")  # fmt: skip
        return self.seeds(ci.ravel(), cj.ravel(), ck.ravel())

    def tile(
        self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray, h_use: float = H_USE
    ) -> CellTile:
        """Cells on the grid ``zs x ys x xs`` (1-D world coordinates, nm); membrane distances are
        exact up to ``h_use`` nm (larger values only mean "at least that far")."""
        lo = np.array([zs[0], ys[0], xs[0]], np.float64)
        hi = np.array([zs[-1], ys[-1], xs[-1]], np.float64)
        pos, w, ids = self.gather(lo, hi, self.reach(h_use))
        # Bounds of each seed's power distance over the box pick the few seeds that matter: first
        # with the weight noise's global bound (+-3A), then with its bound over this box.
        amp3 = 3.0 * self.amplitude
        d2min = (np.maximum(np.maximum(lo - pos, pos - hi), 0.0) ** 2).sum(1) - w
        d2max = (np.maximum(np.abs(pos - lo), np.abs(pos - hi)) ** 2).sum(1) - w
        relevant = self._relevant(pos, d2min - amp3, d2max + amp3, h_use)
        pos, w, ids, d2min, d2max = (x[relevant] for x in (pos, w, ids, d2min, d2max))
        emin, emax = np.zeros(len(ids)), np.zeros(len(ids))
        for a in range(3):
            key = mix_int(self.key, TAG_WAVE, a)
            cmin, cmax = noise1d_bounds(key, ids, lo[a], hi[a], self.wave_spacing)
            emin += cmin
            emax += cmax
        amp = self.amplitude
        relevant = self._relevant(pos, d2min - amp * emax, d2max - amp * emin, h_use)
        order = np.flatnonzero(relevant)
        order = order[np.argsort(ids[order], kind="stable")]  # fixed order: ties resolve alike
        pos, w, ids = pos[order], w[order], ids[order]
        dmin, dmax = d2min[order] - amp * emax[order], d2max[order] - amp * emin[order]
        near = dmin <= dmax.min() + 1e-5 * abs(dmax.min()) + 16.0
        k = len(order)

        # Separable power distance: per-axis terms (squared offset + that axis' weight noise).
        col = ids[:, None]
        terms = [
            ((c[None, :] - pos[:, a, None]) ** 2 - self.wave(a, col, c[None, :])).T.astype(
                np.float32
            )
            for a, c in enumerate((zs, ys, xs))
        ]
        dz2, dy2, dx2 = terms  # (n_axis, k)
        wf = w.astype(np.float32)

        def power(i: int) -> np.ndarray:
            small = dz2[:, i, None, None] + dy2[None, :, i, None] - wf[i]
            return small + dx2[None, None, :, i]

        dist_sq: dict[int, np.ndarray] = {}
        local = None
        d1 = None
        for i in np.flatnonzero(near):
            d = dist_sq[i] = power(i)
            if d1 is None:
                d1, local = d.copy(), np.full(d.shape, i, dtype=np.intp)
            else:
                closer = d < d1
                np.copyto(d1, d, where=closer)
                local[closer] = i
        assert d1 is not None and local is not None

        # Distance to the face with each other cell b: (D_b - D_a) / (2 |a - b|).
        sep = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
        with np.errstate(divide="ignore"):
            inv = (0.5 / sep).astype(np.float32)
        np.fill_diagonal(inv, np.nan)  # a cell is not its own neighbour: NaN never compares less
        h = np.full(d1.shape, h_use, np.float32)
        # Now that owners are known, keep only neighbours that can come within h_use of them.
        owners = np.bincount(local.ravel(), minlength=k) > 0
        reach2 = 2.0 * h_use * sep[:, owners].max(1)
        needed = dmin <= float(d1.max()) + reach2 + 1e-5 * abs(float(d1.max())) + 16.0
        for b in np.flatnonzero(needed):
            d = dist_sq[b] if b in dist_sq else power(b)
            hb = d - d1
            hb *= np.take(inv[:, b], local)
            np.fmin(h, hb, out=h)
        return CellTile(local=local, ids=ids, dist=h)

    @staticmethod
    def _relevant(pos: np.ndarray, dmin: np.ndarray, dmax: np.ndarray, h_use: float) -> np.ndarray:
        """Seeds that may own a voxel of a box or have a face within ``h_use`` of one, given
        bounds ``dmin``/``dmax`` of their power distances over the box."""
        bound = dmax.min()
        tol = 1e-5 * abs(bound) + 16.0  # float32 rounding of per-voxel distances
        near = dmin <= bound + tol  # possible owners
        pair = np.sqrt(((pos[:, None, :] - pos[None, near, :]) ** 2).sum(-1))
        return dmin <= bound + 2.0 * h_use * pair.max(1) + tol

    def points(self, p: np.ndarray) -> dict[str, np.ndarray]:
        """Cell facts at ``(N, 3)`` points: ``id``, ``other`` (the cell across the nearest face),
        ``dist`` to that face (nm), ``own_pos`` / ``other_pos`` (seed positions)."""
        p = np.asarray(p, np.float64).reshape(-1, 3)
        # Owners lie within reach(0) (see :meth:`reach`); a rare far neighbour face may be missed,
        # which only makes object placement a little less picky.
        r = int(math.ceil(self.reach(0.0) / self.spacing))
        off = np.array(list(product(range(-r, r + 1), repeat=3)), np.int64)
        c = np.floor(p / self.spacing).astype(np.int64)[:, None, :] + off[None]
        pos, w, ids = self.seeds(c[..., 0], c[..., 1], c[..., 2])
        d = ((p[:, None, :] - pos) ** 2).sum(-1) - w
        # Only the closest few (before weight noise) are kept: the noise, bounded by 3A, hardly
        # ever lifts a farther seed to owner or nearest face. Placement only, never rendering.
        keep = np.argsort(d, axis=1)[:, :_POINT_CANDIDATES]
        pos = np.take_along_axis(pos, keep[..., None], axis=1)
        ids, d = (np.take_along_axis(x, keep, axis=1) for x in (ids, d))
        for a in range(3):
            d -= self.wave(a, ids, p[:, a, None])
        n = np.arange(len(p))
        a = np.argmin(d, axis=1)
        sep = np.sqrt(((pos - pos[n, a][:, None, :]) ** 2).sum(-1))
        with np.errstate(divide="ignore", invalid="ignore"):
            hb = (d - d[n, a][:, None]) / (2.0 * sep)
        hb[n, a] = np.inf
        b = np.argmin(hb, axis=1)
        return {
            "id": ids[n, a],
            "other": ids[n, b],
            "dist": hb[n, b],
            "own_pos": pos[n, a],
            "other_pos": pos[n, b],
        }


# --------------------------------------------------------------------------------------------
# Organelles
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mitochondrion:
    """A capsule (segment ``p0``-``p1`` swept by ``radius``) clipped to its host cell, with
    transverse lamellar cristae (``period``, ``phase`` and ``bend`` of the stripes)."""

    id: int
    host: int
    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    axis: tuple[float, float, float]
    radius: float
    period: float
    phase: float
    bend: float
    key: int

    @cached_property
    def frame(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Unit axis, two unit vectors across it, and the segment length."""
        axis = np.asarray(self.axis, np.float64)
        length = float(np.linalg.norm(np.subtract(self.p1, self.p0)))
        helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        e1 = _unit(np.cross(axis, helper))
        e2 = np.cross(axis, e1)
        return axis, e1, e2, length

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.minimum(self.p0, self.p1) - self.radius
        hi = np.maximum(self.p0, self.p1) + self.radius
        return lo, hi

    def sdf_points(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (nm) of ``(N, 3)`` points to the capsule (ignores host clipping)."""
        axis, _, _, length = self.frame
        q = np.asarray(p, np.float64) - np.asarray(self.p0)
        t = np.clip(q @ axis, 0.0, length)
        return np.linalg.norm(q - t[:, None] * axis, axis=1) - self.radius


@dataclass(frozen=True)
class VesicleCluster:
    """Synaptic vesicles (``centers`` (n, 3), ``radii``) near a membrane, and the synapse: a
    postsynaptic density of radius ``psd_radius`` around ``foot`` in cell ``post``."""

    host: int
    post: int
    foot: tuple[float, float, float]
    psd_radius: float
    centers: np.ndarray = field(compare=False)
    radii: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class ERPatch:
    """A region (sphere) where ER sheets run: zero sets of a smooth field inside the sphere,
    restricted to the cell ``host`` that holds the centre."""

    center: tuple[float, float, float]
    radius: float
    host: int


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    return _unit(rng.normal(size=3) + 1e-12)


# --------------------------------------------------------------------------------------------
# The world: seed + tissue -> cells and per-region organelles
# --------------------------------------------------------------------------------------------

_MITO_REGION = 2000.0
_VESICLE_REGION = 1500.0
_ER_REGION = 1500.0
_CLUSTER_REACH = 300.0  # clusters sit within this distance of a membrane
_CLUSTER_SPREAD = 80.0  # std of vesicle positions around the cluster centre


@dataclass(frozen=True)
class World:
    """The whole procedural tissue of one seed.

    Args:
        seed: integer seed; the same seed and tissue give the same world.
        tissue: physical parameters.

    Examples:
        >>> w = World(seed=0, tissue=Tissue())
        >>> w.cells.points(np.array([[500.0, 500.0, 500.0]]))["id"].dtype
        dtype('int64')
    """

    seed: int
    tissue: Tissue

    @cached_property
    def cells(self) -> Cells:
        t = self.tissue
        # A jittered grid of spacing s has one cell per s^3: equal-volume sphere diameter 1.24 s.
        s = t.cell_diameter / (6.0 / math.pi) ** (1.0 / 3.0)
        return Cells(
            key=mix_int(self.seed, TAG_CELLS),
            spacing=s,
            weight=t.cell_size_variation * 0.5 * s * s,
            waviness=t.membrane_waviness,
        )

    @cached_property
    def er_field(self) -> LatticeNoise:
        return LatticeNoise(mix_int(self.seed, TAG_ER_FIELD), spacing=260.0)

    def max_extent_um(self) -> float:
        """Largest world extent (µm) the integer ids can address."""
        return min(_ID_OFFSET * self.cells.spacing, _MITO_ID_OFFSET * _MITO_REGION) / 1000.0 - 20

    # -- mitochondria ---------------------------------------------------------------------------
    @property
    def mito_reach(self) -> float:
        return self.tissue.mito_length[1] / 2 + self.tissue.mito_width[1] / 2 + 1.0

    def mito_region(self, i: int, j: int, k: int) -> tuple[Mitochondrion, ...]:
        return _mito_region(self, i, j, k)

    def vesicle_region(self, i: int, j: int, k: int) -> tuple[VesicleCluster, ...]:
        return _vesicle_region(self, i, j, k)

    def er_region(self, i: int, j: int, k: int) -> tuple[ERPatch, ...]:
        return _er_region(self, i, j, k)

    def _regions(
        self, lo: np.ndarray, hi: np.ndarray, size: float, reach: float
    ) -> Iterator[tuple[int, ...]]:
        """Regions (cubes of side ``size``) whose objects, reaching ``reach`` nm beyond their
        region, can touch the box ``[lo, hi]``."""
        a = np.floor((np.asarray(lo) - reach) / size).astype(int)
        b = np.floor((np.asarray(hi) + reach) / size).astype(int)
        return product(*(range(x, y + 1) for x, y in zip(a, b, strict=True)))

    def mitochondria_near(self, lo: np.ndarray, hi: np.ndarray) -> list[Mitochondrion]:
        out = []
        for r in self._regions(lo, hi, _MITO_REGION, self.mito_reach):
            for m in self.mito_region(*r):
                blo, bhi = m.bbox()
                if np.all(blo <= hi) and np.all(bhi >= lo):
                    out.append(m)
        return out

    def vesicle_clusters_near(self, lo: np.ndarray, hi: np.ndarray) -> list[VesicleCluster]:
        reach = _CLUSTER_REACH + 5 * _CLUSTER_SPREAD + self.tissue.vesicle_diameter
        out = []
        for r in self._regions(lo, hi, _VESICLE_REGION, reach):
            for c in self.vesicle_region(*r):
                pts = np.vstack([c.centers, np.asarray(c.foot)[None]])
                pad = max(c.psd_radius, float(c.radii.max(initial=0.0)))
                if np.all(pts.min(0) - pad <= hi) and np.all(pts.max(0) + pad >= lo):
                    out.append(c)
        return out

    def er_patches_near(self, lo: np.ndarray, hi: np.ndarray) -> list[ERPatch]:
        out = []
        for r in self._regions(lo, hi, _ER_REGION, 700.0):
            for e in self.er_region(*r):
                c = np.asarray(e.center)
                if np.all(c - e.radius <= hi) and np.all(c + e.radius >= lo):
                    out.append(e)
        return out


def _mean_mito_volume(t: Tissue) -> float:
    r0, r1 = (w / 2 for w in t.mito_width)
    er2 = (r1**3 - r0**3) / (3 * (r1 - r0)) if r1 > r0 else r0 * r0
    er3 = (r1**4 - r0**4) / (4 * (r1 - r0)) if r1 > r0 else r0**3
    return math.pi * er2 * sum(t.mito_length) / 2 + 4.0 / 3.0 * math.pi * er3


def mitos_touch(a: Mitochondrion, b: Mitochondrion, gap: float = 0.0) -> bool:
    """Whether two capsules come closer than ``gap`` nm (conservative: segments are sampled
    every <= 25 nm and the sampling error is added)."""
    limit = a.radius + b.radius + gap + 25.0
    la, lb = a.frame[3], b.frame[3]
    if np.linalg.norm(np.add(a.p0, a.p1) / 2 - np.add(b.p0, b.p1) / 2) > limit + (la + lb) / 2:
        return False
    pa, pb = (
        np.asarray(m.p0) + np.linspace(0, 1, int(m.frame[3] // 25) + 2)[:, None] * m.frame[3]
        * np.asarray(m.axis)
        for m in (a, b)
    )  # fmt: skip
    return bool(np.linalg.norm(pa[:, None] - pb[None], axis=-1).min() < limit)


@lru_cache(maxsize=4096)
def _mito_region(world: World, i: int, j: int, k: int) -> tuple[Mitochondrion, ...]:
    t = world.tissue
    if t.mito_fraction <= 0:
        return ()
    rng = region_rng(mix_int(world.seed, TAG_MITO), i, j, k)
    # About 3/4 of the volume asked for is lost to rejected placements, shortening and clipping
    # at membranes and neighbours (measured at default sizes): ask for more.
    lam = 4.5 * t.mito_fraction * _MITO_REGION**3 / _mean_mito_volume(t)
    n = min(int(rng.poisson(lam)), _MITO_PER_REGION)
    if n == 0:
        return ()
    centers = (np.array([i, j, k]) + rng.random((n, 3))) * _MITO_REGION
    radii = rng.uniform(*t.mito_width, size=n) / 2
    lengths = rng.uniform(*t.mito_length, size=n)
    dirs = np.stack([_random_unit(rng) for _ in range(n)])
    periods = rng.uniform(45.0, 80.0, size=n)
    phases = rng.uniform(0.0, 1.0, size=n) * periods
    bends = rng.uniform(-0.6, 0.6, size=n)
    keys = rng.integers(0, 2**62, size=n)

    at = world.cells.points(centers)
    r = np.minimum(radii, at["dist"] - MITO_MARGIN)
    ok = (r >= 0.6 * radii) & (r >= t.mito_width[0] / 4)  # else a sliver squeezed by a membrane
    # Shorten each tube (full, 1/2, 1/4, 1/8 length, else a sphere) until both ends sit inside
    # the host with room for the radius.
    frac = np.array([1.0, 0.5, 0.25, 0.125])
    half = (lengths[:, None] * frac[None, :])[..., None] * np.array([-0.5, 0.5])  # (n, 4, 2)
    ends = centers[:, None, None, :] + half[..., None] * dirs[:, None, None, :]
    e = world.cells.points(ends.reshape(-1, 3))
    inside = (e["id"].reshape(n, 4, 2) == at["id"][:, None, None]) & (
        e["dist"].reshape(n, 4, 2) > 0.7 * r[:, None, None]
    )
    fits = inside.all(axis=2) & (lengths[:, None] * frac >= 1.0)
    length = np.where(fits.any(1), lengths * frac[np.argmax(fits, axis=1)], 0.0)

    o, m = _MITO_ID_OFFSET, 2 * _MITO_ID_OFFSET
    base = (((i + o) * m + (j + o)) * m + (k + o)) * _MITO_PER_REGION
    out = []
    for q in np.flatnonzero(ok):
        p0 = centers[q] - dirs[q] * length[q] / 2
        p1 = centers[q] + dirs[q] * length[q] / 2
        out.append(
            Mitochondrion(
                id=int(1 + base + q),
                host=int(at["id"][q]),
                p0=tuple(p0.tolist()),
                p1=tuple(p1.tolist()),
                axis=tuple(dirs[q].tolist()),
                radius=float(r[q]),
                period=float(periods[q]),
                phase=float(phases[q]),
                bend=float(bends[q] / r[q]),
                key=int(keys[q]),
            )
        )
    return tuple(out)


@lru_cache(maxsize=4096)
def _vesicle_region(world: World, i: int, j: int, k: int) -> tuple[VesicleCluster, ...]:
    t = world.tissue
    if t.vesicle_clusters <= 0:
        return ()
    rng = region_rng(mix_int(world.seed, TAG_VESICLE), i, j, k)
    n = int(rng.poisson(t.vesicle_clusters * (_VESICLE_REGION / 1000.0) ** 3))
    if n == 0:
        return ()
    starts = (np.array([i, j, k]) + rng.random((n, 3))) * _VESICLE_REGION
    counts = rng.integers(30, 150, size=n)
    # Clipped so that every vesicle stays within the reach used to find clusters.
    spread = 4 * _CLUSTER_SPREAD
    offsets = [
        np.clip(rng.normal(0.0, _CLUSTER_SPREAD, size=(3 * c, 3)), -spread, spread) for c in counts
    ]
    d = t.vesicle_diameter
    radii = [np.clip(rng.normal(d / 2, d / 16, 3 * c), d / 4, None) for c in counts]
    depths = rng.uniform(50.0, 120.0, size=n)
    psd_radii = rng.uniform(90.0, 180.0, size=n)

    at = world.cells.points(starts)
    normals = at["other_pos"] - at["own_pos"]
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    feet = starts + at["dist"][:, None] * normals
    centres = feet - (depths + _CLUSTER_SPREAD)[:, None] * normals
    cand = np.concatenate([c + off for c, off in zip(centres, offsets, strict=True)])
    rad = np.concatenate(radii)
    owner = np.repeat(np.arange(n), 3 * counts)
    # Vesicles stay inside the cluster's cell, off its membrane and off mitochondria.
    cell = world.cells.points(cand)
    ok = (cell["id"] == at["id"][owner]) & (cell["dist"] > rad + 6.0)
    lo, hi = cand.min(0) - d, cand.max(0) + d
    for mito in world.mitochondria_near(lo, hi):
        ok &= mito.sdf_points(cand) > rad + 15.0
    out = []
    for q in range(n):
        if at["dist"][q] > _CLUSTER_REACH:
            continue  # clusters hug membranes
        idx = np.flatnonzero(owner == q)
        pts, rq = cand[idx], rad[idx]
        clash = np.linalg.norm(pts[:, None] - pts[None], axis=-1) < rq[:, None] + rq[None] + 3.0
        keep: list[int] = []
        for v in np.flatnonzero(ok[idx]):
            if not clash[v, keep].any():
                keep.append(int(v))
                if len(keep) == counts[q]:
                    break
        out.append(
            VesicleCluster(
                host=int(at["id"][q]),
                post=int(at["other"][q]),
                foot=tuple(feet[q].tolist()),
                psd_radius=float(psd_radii[q]) if keep else 0.0,
                centers=pts[keep],
                radii=rq[keep],
            )
        )
    return tuple(out)


@lru_cache(maxsize=4096)
def _er_region(world: World, i: int, j: int, k: int) -> tuple[ERPatch, ...]:
    t = world.tissue
    rng = region_rng(mix_int(world.seed, TAG_ER), i, j, k)
    n = int(rng.poisson(t.er_density * (_ER_REGION / 1000.0) ** 3))
    if n == 0:
        return ()
    centers = (np.array([i, j, k]) + rng.random((n, 3))) * _ER_REGION
    radii = rng.uniform(300.0, 700.0, size=n)
    hosts = world.cells.points(centers)["id"]
    return tuple(
        ERPatch(center=tuple(c.tolist()), radius=float(r), host=int(h))
        for c, r, h in zip(centers, radii, hosts, strict=True)
    )
