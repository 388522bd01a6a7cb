"""Rendering geometry to EM-like intensities: SEM and TEM contrast, textures, partial volumes.

Every structure is drawn with its physical thickness and box-filtered over the voxel footprint,
so a thin membrane becomes a fainter line at coarse voxel sizes (partial volume) instead of
vanishing or thickening: the same tissue looks the same at 4 nm and at 8 nm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from em5m.synth.fields import VALUE_NOISE_STD, LatticeNoise, hash3, mix_int, two_unit_floats
from em5m.synth.geometry import (
    H_USE,
    MITO_MARGIN,
    CellTile,
    ERPatch,
    Mitochondrion,
    VesicleCluster,
    World,
    mitos_touch,
)

TAG_TEXTURE, TAG_TEXTURE_COARSE, TAG_SHADE = 21, 22, 23

# Ultrastructure sizes (nm).
MITO_MEMBRANE = 7.0
MITO_GAP = 8.0  # intermembrane space
CRISTA = 12.0  # two membranes around a thin lumen
MITO_SPACING = 15.0  # the closest two mitochondria come
VESICLE_MEMBRANE = 7.0
ER_MEMBRANE = 6.0
ER_LUMEN = 24.0
PSD_THICKNESS = 25.0
ER_CLEARANCE = 60.0  # ER fades out within this distance of the plasma membrane


@dataclass(frozen=True)
class Contrast:
    """Display intensity (0 black .. 1 white) of each compartment and texture strengths.

    Args:
        cytoplasm: mean cytoplasm intensity; ``cell_jitter``: +- per-cell variation of it.
        texture: std of fine (~20 nm) granular texture; ``texture_coarse``: of ~150 nm shading.
        puncta: extra darkness of the darkest texture grains (ribosome-like dots).
        membrane, extracellular, mito_matrix, mito_membrane, cristae, vesicle_lumen,
            vesicle_membrane, er_lumen, er_membrane, psd: intensities of those structures.
        inverted: ``True`` for SEM: the detector counts backscattered electrons (stain bright) and
            the image is shown inverted, so shot noise is strongest on dark (stained) pixels.

    Examples:
        >>> SEM.membrane < SEM.cytoplasm and TEM.membrane < TEM.cytoplasm
        True
    """

    cytoplasm: float
    cell_jitter: float
    texture: float
    texture_coarse: float
    puncta: float
    membrane: float
    extracellular: float
    mito_matrix: float
    mito_membrane: float
    cristae: float
    vesicle_lumen: float
    vesicle_membrane: float
    er_lumen: float
    er_membrane: float
    psd: float
    inverted: bool


#: FIB-SEM-like (Lucchi++): smooth mid-grey cytoplasm, dark membranes, darker mitochondria with
#: dark cristae.
SEM = Contrast(
    cytoplasm=0.63, cell_jitter=0.05, texture=0.04, texture_coarse=0.03, puncta=0.15,
    membrane=0.18, extracellular=0.35,
    mito_matrix=0.45, mito_membrane=0.2, cristae=0.22,
    vesicle_lumen=0.6, vesicle_membrane=0.15,
    er_lumen=0.55, er_membrane=0.22, psd=0.15,
    inverted=True,
)  # fmt: skip

#: ssTEM-like (ISBI 2012): higher contrast, grainier, cell-to-cell variation, dark mitochondria.
TEM = Contrast(
    cytoplasm=0.62, cell_jitter=0.08, texture=0.06, texture_coarse=0.05, puncta=0.2,
    membrane=0.08, extracellular=0.3,
    mito_matrix=0.32, mito_membrane=0.1, cristae=0.15,
    vesicle_lumen=0.55, vesicle_membrane=0.1,
    er_lumen=0.5, er_membrane=0.15, psd=0.08,
    inverted=False,
)  # fmt: skip

MODALITIES: dict[str, Contrast] = {"sem": SEM, "tem": TEM}


def band(d: np.ndarray, thickness: float, footprint: float) -> np.ndarray:
    """Fraction of a voxel (footprint ``footprint`` nm, centred at signed distance ``d``) covered
    by a slab ``|x| < thickness / 2``: anti-aliased thin structures.

    Examples:
        >>> band(np.array([0.0, 3.0, 10.0]), 4.0, 4.0).round(2).tolist()
        [1.0, 0.25, 0.0]
    """
    hi = np.minimum(d + np.float32(footprint / 2), np.float32(thickness / 2))
    lo = np.maximum(d - np.float32(footprint / 2), np.float32(-thickness / 2))
    hi -= lo
    hi *= np.float32(1.0 / footprint)
    return np.clip(hi, 0.0, 1.0, out=hi)


def fill(d: np.ndarray, footprint: float) -> np.ndarray:
    """Fraction of a voxel inside the region ``d < 0`` (box-filtered step)."""
    out = d * np.float32(-1.0 / footprint)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _mix(img: np.ndarray, alpha: np.ndarray, value: float) -> None:
    # img = img + alpha * (value - img), in place
    img += alpha * (np.float32(value) - img)


@dataclass
class TileImage:
    """One rendered tile: intensity and ground truth on the same grid."""

    intensity: np.ndarray
    cells: np.ndarray
    membranes: np.ndarray
    mito: np.ndarray


def _capsule(
    m: Mitochondrion, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Signed distance to a mitochondrion's capsule on a grid, with the axial coordinate, the
    two coordinates across the axis and the squared distance from the axis (float32)."""
    axis, e1, e2, length = m.frame
    dz, dy, dx = ((a - p).astype(np.float32) for a, p in zip((zs, ys, xs), m.p0, strict=True))

    def project(e: np.ndarray) -> np.ndarray:
        small = (dz * np.float32(e[0]))[:, None, None] + (dy * np.float32(e[1]))[None, :, None]
        return small + (dx * np.float32(e[2]))[None, None, :]

    along, a1, a2 = project(axis), project(e1), project(e2)
    rho2 = a1 * a1 + a2 * a2
    beyond = along - np.clip(along, 0.0, np.float32(length))
    sdf = np.sqrt(rho2 + beyond * beyond) - np.float32(m.radius)
    return sdf, along, a1, a2, rho2


def _range(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Index range of the sorted ``coords`` that fall in ``[lo, hi]``."""
    return slice(int(np.searchsorted(coords, lo)), int(np.searchsorted(coords, hi, "right")))


@dataclass
class Scene:
    """The objects of :class:`World` that can touch a box (a block plus its halo)."""

    world: World
    contrast: Contrast
    footprint: float
    membrane_gt: float
    lo: np.ndarray
    hi: np.ndarray

    @cached_property
    def h_use(self) -> float:
        """Distance from a membrane (nm) up to which anything here depends on it: membrane bands
        and their ground truth, synaptic densities, ER and mitochondria keeping clear (with a
        voxel of anti-aliasing), and never less than :data:`H_USE`."""
        t = self.world.tissue
        envelope = 2 * MITO_MEMBRANE + MITO_GAP
        reach = max(
            self.membrane_gt,
            t.extracellular_gap / 2 + t.membrane_thickness + PSD_THICKNESS,
            MITO_MARGIN + envelope,
            ER_CLEARANCE,
        )
        return max(H_USE, reach + 2 * self.footprint)

    @cached_property
    def texture(self) -> LatticeNoise:
        return LatticeNoise(mix_int(self.world.seed, TAG_TEXTURE), spacing=22.0)

    @cached_property
    def texture_coarse(self) -> LatticeNoise:
        return LatticeNoise(mix_int(self.world.seed, TAG_TEXTURE_COARSE), spacing=150.0)

    @property
    def _query_box(self) -> tuple[np.ndarray, np.ndarray]:
        # Objects draw anti-aliased edges up to a voxel beyond their geometry, and mitochondria
        # keep MITO_SPACING from each other: look that far out.
        pad = 2.0 * self.footprint + MITO_SPACING
        return self.lo - pad, self.hi + pad

    @cached_property
    def neighbours(self) -> dict[int, list[Mitochondrion]]:
        """For each mitochondrion, those of higher id in its cell that it yields room to, so
        mitochondria may touch but never overlap."""
        ms = self.mitochondria
        reach = MITO_SPACING + self.footprint
        return {
            m.id: [o for o in ms if o.id > m.id and o.host == m.host and mitos_touch(m, o, reach)]
            for m in ms
        }

    @cached_property
    def mitochondria(self) -> list[Mitochondrion]:
        return self.world.mitochondria_near(*self._query_box)

    @cached_property
    def clusters(self) -> list[VesicleCluster]:
        return self.world.vesicle_clusters_near(*self._query_box)

    @cached_property
    def er(self) -> list[ERPatch]:
        return self.world.er_patches_near(*self._query_box)

    @cached_property
    def vesicles(self) -> tuple[np.ndarray, np.ndarray]:
        cs = [c.centers for c in self.clusters]
        rs = [c.radii for c in self.clusters]
        if not cs:
            return np.zeros((0, 3)), np.zeros(0)
        return np.concatenate(cs), np.concatenate(rs)

    def render(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> TileImage:
        """Render the grid ``zs x ys x xs`` (1-D world coordinates of voxel centres, nm)."""
        c, v = self.contrast, self.footprint
        cells = self.world.cells.tile(zs, ys, xs, h_use=self.h_use)
        h = cells.dist
        lo = np.array([zs[0], ys[0], xs[0]])
        hi = np.array([zs[-1], ys[-1], xs[-1]])

        # Cytoplasm: per-cell brightness, fine granular texture with dark puncta, coarse shading.
        u, _ = two_unit_floats(hash3(mix_int(self.world.seed, TAG_SHADE), cells.ids, 0, 0))
        shade = (c.cytoplasm + c.cell_jitter * (2 * u - 1)).astype(np.float32)
        img = np.take(shade, cells.local)
        tex = self.texture.grid(zs, ys, xs)
        tex *= np.float32(1.0 / VALUE_NOISE_STD)
        img += tex * np.float32(c.texture)
        tex += np.float32(1.5)  # the darkest grains become distinct dots
        np.clip(tex, -1.0, 0.0, out=tex)
        img += tex * np.float32(c.puncta)
        del tex
        img += self.texture_coarse.grid(zs, ys, xs) * np.float32(c.texture_coarse / VALUE_NOISE_STD)

        gids = cells.global_ids
        # Union of mitochondria as the minimum of their distances; starts one footprint outside
        # (no coverage) so overlapping ones never darken a voxel twice.
        mito_sdf = np.full(img.shape, np.float32(v), np.float32)
        mito_id = np.zeros(img.shape, np.int32)
        for m in self.mitochondria:
            blo, bhi = m.bbox()
            if np.any(blo - v > hi) or np.any(bhi + v < lo):
                continue
            self._mito(img, h, gids, mito_sdf, mito_id, m, zs, ys, xs)
        mito_id[mito_sdf >= 0] = 0

        for patch in self.er:
            if patch.host in cells.ids:
                self._er(img, h, gids, mito_id, patch, zs, ys, xs, lo, hi)

        self._vesicles(img, zs, ys, xs, lo, hi)
        self._synapses(img, h, cells, zs, ys, xs, lo, hi)

        # Two cells meet with two membranes around a thin extracellular gap.
        t = self.world.tissue
        h -= np.float32(t.extracellular_gap / 2)
        _mix(img, fill(h, v), c.extracellular)
        h -= np.float32(t.membrane_thickness / 2)
        _mix(img, band(h, t.membrane_thickness, v), c.membrane)
        h += np.float32(t.extracellular_gap / 2 + t.membrane_thickness / 2)
        np.clip(img, 0.0, 1.0, out=img)
        return TileImage(
            intensity=img,
            cells=gids,
            membranes=h < np.float32(self.membrane_gt),
            mito=mito_id,
        )

    def _er(
        self,
        img: np.ndarray,
        h: np.ndarray,
        gids: np.ndarray,
        mito_id: np.ndarray,
        patch: ERPatch,
        zs: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        """ER sheets of one patch: the zero set of a smooth field, drawn as two membranes
        around a thin lumen, inside the patch's cell and off membranes and mitochondria."""
        centre, rad = np.asarray(patch.center), patch.radius
        axes = (zs, ys, xs)
        if np.any(centre - rad > hi) or np.any(centre + rad < lo):
            return
        sz, sy, sx = (_range(a, centre[i] - rad, centre[i] + rad) for i, a in enumerate(axes))
        if sz.stop <= sz.start or sy.stop <= sy.start or sx.stop <= sx.start:
            return
        z, y, x = zs[sz], ys[sy], xs[sx]
        f, gz, gy, gx = self.world.er_field.grid(z, y, x, gradient=True)
        grad = np.sqrt(gz * gz + gy * gy + gx * gx)
        grad += np.float32(1e-9)
        dist = np.abs(f) / grad  # distance to the sheet (zero set of the field)
        r2 = (((z - centre[0]) ** 2)[:, None, None] + ((y - centre[1]) ** 2)[None, :, None]
              ).astype(np.float32) + ((x - centre[2]) ** 2).astype(np.float32)  # fmt: skip
        gate = np.clip(np.float32(2.5) * (1 - np.sqrt(r2) / np.float32(rad)), 0.0, 1.0)
        gate *= np.clip(
            (h[sz, sy, sx] - np.float32(ER_CLEARANCE / 2)) / np.float32(ER_CLEARANCE / 2), 0.0, 1.0
        )
        gate *= (gids[sz, sy, sx] == patch.host) & (mito_id[sz, sy, sx] == 0)
        dist -= np.float32(ER_LUMEN / 2)
        sub = img[sz, sy, sx]  # a view: drawing into it draws into img
        _mix(sub, fill(dist, self.footprint) * gate, self.contrast.er_lumen)
        dist -= np.float32(ER_MEMBRANE / 2)
        _mix(sub, band(dist, ER_MEMBRANE, self.footprint) * gate, self.contrast.er_membrane)

    def _mito(
        self,
        img: np.ndarray,
        h: np.ndarray,
        gids: np.ndarray,
        mito_sdf: np.ndarray,
        mito_id: np.ndarray,
        m: Mitochondrion,
        zs: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
    ) -> None:
        """One mitochondrion: matrix, double envelope and cristae, clipped to its host cell."""
        v, c = self.footprint, self.contrast
        blo, bhi = m.bbox()
        sz, sy, sx = (_range(a, blo[i] - v, bhi[i] + v) for i, a in enumerate((zs, ys, xs)))
        if sz.stop <= sz.start or sy.stop <= sy.start or sx.stop <= sx.start:
            return
        grid = (zs[sz], ys[sy], xs[sx])
        sdf, along, a1, a2, rho2 = _capsule(m, *grid)
        # Clip to the host cell, MITO_MARGIN inside its membrane, and make room for neighbours.
        hs = h[sz, sy, sx]
        room = np.where(gids[sz, sy, sx] == m.host, hs, -hs)
        sdf = np.maximum(sdf, np.float32(MITO_MARGIN) - room)
        for other in self.neighbours[m.id]:
            np.maximum(sdf, np.float32(MITO_SPACING) - _capsule(other, *grid)[0], out=sdf)

        best = mito_sdf[sz, sy, sx]  # views: updated in place
        before = fill(best, v)
        mine = sdf < best
        np.copyto(best, sdf, where=mine)
        ids = mito_id[sz, sy, sx]
        ids[mine] = m.id

        sub = img[sz, sy, sx]
        sub += (fill(best, v) - before) * np.float32(c.mito_matrix - c.cytoplasm)
        # Lamellar cristae: curved plates across the axis; each reaches in from one side.
        q = (along + np.float32(m.phase) + np.float32(m.bend) * rho2) * np.float32(1 / m.period)
        k = np.floor(q)
        q -= k
        q -= np.float32(0.5)
        q *= np.float32(m.period)
        k0 = int(k.min()) if k.size else 0
        kk = np.arange(k0, int(k.max()) + 1 if k.size else k0 + 1)
        ua, ub = two_unit_floats(hash3(m.key, kk, 0, 0))
        cos_t = np.cos(2 * np.pi * ua).astype(np.float32)
        sin_t = np.sin(2 * np.pi * ua).astype(np.float32)
        reach = (np.float32(m.radius) * (0.4 + 1.4 * ub)).astype(np.float32) - np.float32(m.radius)
        ki = (k - np.float32(k0)).astype(np.intp)
        side = np.take(cos_t, ki) * a1 + np.take(sin_t, ki) * a2
        gate = fill(side - np.take(reach, ki), v)
        envelope = 2 * MITO_MEMBRANE + MITO_GAP
        gate *= fill(sdf + np.float32(envelope), v)
        _mix(sub, band(q, CRISTA, v) * gate, c.cristae)
        outer = band(sdf + np.float32(MITO_MEMBRANE / 2), MITO_MEMBRANE, v)
        outer += band(sdf + np.float32(1.5 * MITO_MEMBRANE + MITO_GAP), MITO_MEMBRANE, v)
        _mix(sub, np.minimum(outer, 1.0), c.mito_membrane)

    def _vesicles(
        self,
        img: np.ndarray,
        zs: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        """Vesicles: a light lumen in a dark membrane shell, drawn on their small boxes."""
        centres, radii = self.vesicles
        if not len(radii):
            return
        v, c = self.footprint, self.contrast
        pad = (radii + v)[:, None]
        hit = np.all((centres - pad <= hi) & (centres + pad >= lo), axis=1)
        for p, r in zip(centres[hit], radii[hit], strict=True):
            sz, sy, sx = (_range(a, p[i] - r - v, p[i] + r + v) for i, a in enumerate((zs, ys, xs)))
            if sz.stop <= sz.start or sy.stop <= sy.start or sx.stop <= sx.start:
                continue
            d2 = (((zs[sz] - p[0]) ** 2)[:, None, None] + ((ys[sy] - p[1]) ** 2)[None, :, None]
                  ).astype(np.float32) + ((xs[sx] - p[2]) ** 2).astype(np.float32)  # fmt: skip
            d = np.sqrt(d2) - np.float32(r)
            sub = img[sz, sy, sx]
            _mix(sub, fill(d, v), c.vesicle_lumen)
            _mix(sub, band(d + np.float32(VESICLE_MEMBRANE / 2), VESICLE_MEMBRANE, v),
                 c.vesicle_membrane)  # fmt: skip

    def _synapses(
        self,
        img: np.ndarray,
        h: np.ndarray,
        cells: CellTile,
        zs: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> None:
        """Postsynaptic densities: a thick dark band on the partner cell's side of the membrane,
        facing each vesicle cluster."""
        v = self.footprint
        for cl in self.clusters:
            if cl.psd_radius <= 0 or cl.post not in cells.ids:
                continue
            f, rad = np.asarray(cl.foot), cl.psd_radius + 2 * v
            if np.any(f - rad > hi) or np.any(f + rad < lo):
                continue
            sz, sy, sx = (_range(a, f[i] - rad, f[i] + rad) for i, a in enumerate((zs, ys, xs)))
            if sz.stop <= sz.start or sy.stop <= sy.start or sx.stop <= sx.start:
                continue
            d2 = (((zs[sz] - f[0]) ** 2)[:, None, None] + ((ys[sy] - f[1]) ** 2)[None, :, None]
                  ).astype(np.float32) + ((xs[sx] - f[2]) ** 2).astype(np.float32)  # fmt: skip
            fall = np.clip((np.float32(cl.psd_radius) - np.sqrt(d2)) / np.float32(25.0), 0.0, 1.0)
            post = int(np.flatnonzero(cells.ids == cl.post)[0])
            fall *= cells.local[sz, sy, sx] == post
            t = self.world.tissue
            width = t.membrane_thickness + PSD_THICKNESS  # the membrane and the density on it
            hs = h[sz, sy, sx] - np.float32(t.extracellular_gap / 2 + width / 2)
            sub = img[sz, sy, sx]
            _mix(sub, band(hs, width, v) * fall, self.contrast.psd)
