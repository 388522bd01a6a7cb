"""Near-duplicate removal: 64-bit difference hashes and a multi-index Hamming search.

**Hash.** `dhash`: each tile is area-averaged to 9 x 8 pixels (columns x rows) and bit ``(r, c)``
says whether pixel ``(r, c + 1)`` is brighter than ``(r, c)``: 64 bits, one uint64 per tile,
computed for a whole batch at once.

**Search.** Two hashes within Hamming distance ``k`` agree exactly on at least one of ``k + 1``
disjoint blocks of their bits (pigeonhole). `HammingIndex` splits the 64 bits into ``k + 1``
blocks; for each block it keeps the hashes sorted by that block's value, so the candidates of a
query are found with a binary search (no all-pairs comparison), then verified with an exact
popcount. Identical hashes are collapsed first so that a flood of one value (flat tiles) cannot
blow up a bucket. With ``k = 3`` the blocks have 16 bits: at a million random hashes a bucket
holds ~15 entries per block.

**Order.** `greedy_keep` keeps, in the given order, every tile with no *kept* earlier tile within
``k``: the first exemplar wins, as in CEM500K. The pipeline passes tiles in the global order
(catalog dataset order, pixel size, axis, unit, tile), so the result never depends on which
worker finished first.

**Embeddings.** `embedding_duplicates` does the same with cosine similarity of optional feature
vectors (``embed(tiles) -> [N, D]``, e.g. emdino features) so em5m needs no model code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

#: An embedding model: ``embed(tiles uint8 [N, H, W]) -> float [N, D]``.
EmbedFn = Callable[[np.ndarray], np.ndarray]

#: Window width (in cells) of the hash's Gaussian cell means.
DHASH_SIGMA = 0.6

_BITS = (np.uint64(1) << np.arange(64, dtype=np.uint64)).reshape(8, 8)


def _gauss_weights(n_in: int, n_out: int, sigma: float, scale: int = 1024) -> np.ndarray:
    """Integer weights ``(n_out, n_in)``: Gaussian windows centred on ``n_out`` equal cells."""
    f = n_in / n_out
    centre = (np.arange(n_out) + 0.5) * f
    x = np.arange(n_in) + 0.5
    w = np.exp(-0.5 * ((x[None] - centre[:, None]) / (f * sigma)) ** 2)
    return np.rint(w / w.sum(axis=1, keepdims=True) * scale).astype(np.int64)


def dhash(tiles: np.ndarray, *, sigma: float = DHASH_SIGMA) -> np.ndarray:
    """64-bit difference hashes of a batch of uint8 tiles.

    The tile is reduced to 9 x 8 cells by Gaussian-weighted means (width ``sigma`` cells; the
    soft window makes a 1-2 px shift move few bits, unlike a hard box), computed in integers
    from 4 x 4 block sums so that a hash never depends on batch size, BLAS or machine.

    Args:
        tiles: ``(N, H, W)`` uint8 (H, W at least 36).
        sigma: window width in cells.

    Returns:
        uint64 array ``[N]``.

    Examples:
        >>> import numpy as np
        >>> ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))[None]
        >>> hex(int(dhash(ramp)[0]))
        '0xffffffffffffffff'
        >>> int(dhash(ramp[:, :, ::-1])[0])
        0
    """
    t = np.asarray(tiles)
    n, h, w = t.shape
    h4, w4 = h // 4, w // 4
    x = t[:, : h4 * 4, : w4 * 4].astype(np.uint16)
    cols = x[:, :, 0::4] + x[:, :, 1::4] + x[:, :, 2::4] + x[:, :, 3::4]
    s4 = (cols[:, 0::4] + cols[:, 1::4] + cols[:, 2::4] + cols[:, 3::4]).astype(np.float64)
    wr = _gauss_weights(h4, 8, sigma).astype(np.float64)
    wc = _gauss_weights(w4, 9, sigma).astype(np.float64)
    # Integer-valued float64: every partial sum is an exact integer below 2**53, so the result
    # is exact whatever order BLAS sums in (hashes never depend on batch size or machine).
    small = np.matmul(np.matmul(wr, s4), wc.T)
    bits = small[:, :, 1:] > small[:, :, :-1]
    return (bits * _BITS).sum(axis=(1, 2), dtype=np.uint64)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64.

    Examples:
        >>> import numpy as np
        >>> popcount64(np.array([0, 1, 2**64 - 1], np.uint64)).tolist()
        [0, 1, 64]
    """
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    b = x.view(np.uint8).reshape(*x.shape, 8)
    return np.unpackbits(b, axis=-1).sum(axis=(-1, -2) if b.ndim > 2 else -1).astype(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of two uint64 arrays."""
    return popcount64(np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64)))


def _split_blocks(n_blocks: int) -> list[tuple[int, int]]:
    """(shift, width) of ``n_blocks`` near-equal blocks covering 64 bits."""
    widths = [64 // n_blocks + (1 if i < 64 % n_blocks else 0) for i in range(n_blocks)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
    return list(zip(shifts, widths, strict=True))


def _radii(n_blocks: int, threshold: int) -> list[int]:
    """Per-block search radii with sum(r + 1) >= threshold + 1 (generalised pigeonhole)."""
    need = threshold + 1
    if n_blocks >= need:
        return [0] * n_blocks
    base, extra = divmod(need, n_blocks)
    return [base - 1 + (1 if i < extra else 0) for i in range(n_blocks)]


def _probe_masks(width: int, radius: int) -> np.ndarray:
    """All ``width``-bit masks with at most ``radius`` bits set."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << i for i in c) for c in itertools.combinations(range(width), r)]
    return np.asarray(masks, dtype=np.uint64)


def plan_blocks(n: int, threshold: int) -> int:
    """Number of blocks with the lowest expected cost: probes x (1 + bucket occupancy).

    Examples:
        >>> plan_blocks(1_000_000, 8), plan_blocks(1_000_000, 3), plan_blocks(1000, 2)
        (3, 3, 3)
    """
    best, best_cost = threshold + 1, float("inf")
    for m in range(1, min(threshold + 1, 16) + 1):
        cost = 0.0
        for (_, w), r in zip(_split_blocks(m), _radii(m, threshold), strict=True):
            probes = sum(math.comb(w, i) for i in range(r + 1))
            cost += probes * (1.0 + n / 2.0**w)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


class HammingIndex:
    """Multi-index hash table of 64-bit hashes for Hamming-radius queries (exact, no all-pairs).

    The bits are split into ``m`` blocks; a block of width ``w`` searched with radius ``r``
    probes every key within ``r`` bits of the query's block. Radii are chosen so that
    ``sum(r + 1) >= threshold + 1``: any hash within the threshold then matches at least one
    probe (with ``m = threshold + 1`` every radius is 0: plain exact lookups). ``m`` is chosen
    by a cost model from the number of hashes (`plan_blocks`). Buckets are CSR arrays (direct
    addressing for blocks up to 24 bits, binary search above).

    Args:
        hashes: uint64 ``[N]``; ids are their positions.
        threshold: largest Hamming distance that counts as a match (``k``).
        n_blocks: override the number of blocks.

    Examples:
        >>> import numpy as np
        >>> idx = HammingIndex(np.array([0b0000, 0b0111, 2**63], np.uint64), threshold=1)
        >>> idx.query(np.array([0b0001], np.uint64))
        (array([0]), array([0]), array([1]))
    """

    def __init__(self, hashes: np.ndarray, threshold: int, n_blocks: int | None = None) -> None:
        if not 0 <= threshold < 32:
            raise ValueError(f"threshold must be in 0..31, got {threshold}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.threshold = int(threshold)
        self.n_blocks = int(n_blocks or plan_blocks(len(self.hashes), self.threshold))
        self._blocks = []
        for (shift, width), radius in zip(
            _split_blocks(self.n_blocks), _radii(self.n_blocks, self.threshold), strict=True
        ):
            keys = (self.hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            order = np.argsort(keys, kind="stable")
            if width <= 24:  # direct addressing: bucket b is order[offsets[b]:offsets[b + 1]]
                counts = np.bincount(keys.astype(np.int64), minlength=1 << width)
                offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                # A small count table stays in cache: most probes hit empty buckets and stop here.
                small = np.uint8 if counts.max() < 256 else np.uint32
                table = ("direct", (counts.astype(small), offsets), order)
            else:
                table = ("sorted", keys[order], order)
            self._blocks.append((shift, width, _probe_masks(width, radius), table))

    def __len__(self) -> int:
        return len(self.hashes)

    def _buckets(self, table: tuple, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probe positions with a non-empty bucket, bucket start, bucket size)."""
        kind, a, _ = table
        if kind == "direct":
            counts, offsets = a
            c = np.take(counts, probes)
            hit = np.flatnonzero(c)
            return hit, offsets[probes[hit]], c[hit].astype(np.int64)
        lo = np.searchsorted(a, probes, side="left")
        hi = np.searchsorted(a, probes, side="right")
        hit = np.flatnonzero(hi > lo)
        return hit, lo[hit], (hi - lo)[hit]

    def query(
        self, queries: np.ndarray, *, max_pairs: int = 4_000_000
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query, id) pairs within the threshold.

        Args:
            queries: uint64 ``[M]``.
            max_pairs: probes and candidates are processed in batches of about this many.

        Returns:
            ``(query_index, id, distance)`` int64 arrays sorted by query then id, no repeats.
        """
        q = np.ascontiguousarray(queries, dtype=np.uint64)
        found: list[np.ndarray] = []
        n = max(1, len(self.hashes))
        for shift, width, masks, table in self._blocks:
            order = table[2]
            qk = (q >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            if width <= 24:  # 32-bit probe keys: half the memory traffic
                qk, masks = qk.astype(np.uint32), masks.astype(np.uint32)
            step = max(1, max_pairs // len(masks))
            for a in range(0, len(q), step):
                probes = (qk[a : a + step, None] ^ masks[None, :]).ravel()
                hit, lo, counts = self._buckets(table, probes)
                qrow = a + hit // len(masks)
                for ca, cb in _batches(counts, max_pairs):
                    c = counts[ca:cb]
                    total = int(c.sum())
                    qi = np.repeat(qrow[ca:cb], c)
                    pos = np.repeat(lo[ca:cb] - np.cumsum(c) + c, c) + np.arange(total)
                    ids = order[pos]
                    ok = hamming(q[qi], self.hashes[ids]) <= self.threshold
                    found.append(qi[ok] * n + ids[ok])
        if not found:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        codes = np.unique(np.concatenate(found))
        qi, ids = codes // n, codes % n
        return qi, ids, hamming(q[qi], self.hashes[ids])


def _batches(counts: np.ndarray, max_pairs: int) -> list[tuple[int, int]]:
    """Split consecutive entries into ranges of at most ~max_pairs total count each."""
    if len(counts) == 0:
        return []
    csum = np.cumsum(counts)
    out, start = [], 0
    while start < len(counts):
        base = int(csum[start - 1]) if start else 0
        stop = int(np.searchsorted(csum, base + max_pairs, side="right"))
        stop = min(len(counts), max(stop, start + 1))
        out.append((start, stop))
        start = stop
    return out


def candidate_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(i, j)``, ``i < j``, of hashes within ``threshold`` bits (equal ones too).

    Returns:
        ``(i, j)`` int64 arrays sorted by ``j`` then ``i``.

    Examples:
        >>> import numpy as np
        >>> candidate_pairs(np.array([0b00, 0b01, 0b11, 0b00], np.uint64), 1)
        (array([0, 1, 0, 1]), array([1, 2, 3, 3]))
    """
    index = HammingIndex(hashes, threshold)
    qi, ids, _ = index.query(hashes)
    keep = ids < qi
    i, j = ids[keep], qi[keep]
    order = np.lexsort((i, j))
    return i[order], j[order]


def greedy_resolve(n: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy exemplar selection over duplicate pairs, in index order.

    Tile ``j`` is removed when some kept ``i < j`` is paired with it; it then points at the
    first such ``i``.

    Args:
        n: number of tiles.
        i, j: duplicate pairs (any order, ``i != j``).

    Returns:
        ``(keep bool [n], duplicate_of int64 [n])``; ``duplicate_of`` is -1 for kept tiles.

    Examples:
        >>> import numpy as np
        >>> keep, dup = greedy_resolve(4, np.array([0, 1, 2]), np.array([1, 2, 3]))
        >>> keep.tolist(), dup.tolist()
        ([True, False, True, False], [-1, 0, -1, 2])
    """
    lo = np.minimum(i, j).astype(np.int64)
    hi = np.maximum(i, j).astype(np.int64)
    order = np.lexsort((lo, hi))  # by the later tile, then the earlier: i's fate is final first
    dup = [-1] * n
    for a, b in zip(lo[order].tolist(), hi[order].tolist(), strict=True):
        if dup[b] < 0 and dup[a] < 0:
            dup[b] = a
    dup_arr = np.asarray(dup, dtype=np.int64)
    return dup_arr < 0, dup_arr


def greedy_verified(
    n: int, i: np.ndarray, j: np.ndarray, verify: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy exemplar selection over candidate pairs that a ``verify`` function confirms.

    Verification is lazy: for each later tile ``b`` (in order) only its candidates ``a < b``
    that are still kept are checked, in one call; the first confirmed one removes ``b``. In a
    chain of near-identical neighbours (adjacent FIB-SEM slices) this skips most pairs.

    Args:
        n: number of tiles.
        i, j: candidate pairs with ``i < j``.
        verify: ``verify(a_rows, b_rows) -> bool [len]``.

    Returns:
        ``(keep bool [n], duplicate_of int64 [n], pairs verified)``.

    Examples:
        >>> import numpy as np
        >>> same = lambda a, b: (a % 2) == (b % 2)
        >>> keep, dup, checked = greedy_verified(4, np.array([0, 0, 1, 2]),
        ...                                      np.array([1, 2, 2, 3]), same)
        >>> keep.tolist(), dup.tolist(), checked
        ([True, True, False, True], [-1, -1, 0, -1], 3)
    """
    i = np.asarray(i, np.int64)
    j = np.asarray(j, np.int64)
    order = np.lexsort((i, j))
    i, j = i[order], j[order]
    dup = np.full(n, -1, np.int64)
    checked = 0
    if len(j) == 0:
        return np.ones(n, bool), dup, 0
    bounds = np.flatnonzero(np.diff(j)) + 1
    for a_rows in np.split(np.stack([i, j], axis=1), bounds):
        b = int(a_rows[0, 1])
        cand = a_rows[:, 0][dup[a_rows[:, 0]] < 0]
        if len(cand) == 0:
            continue
        ok = np.asarray(verify(cand, np.full(len(cand), b, np.int64)), bool)
        checked += len(cand)
        if ok.any():
            dup[b] = int(cand[np.argmax(ok)])
    return dup < 0, dup, checked


def greedy_keep(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash-only greedy dedup: a tile goes when an earlier kept tile is within ``threshold``.

    Identical hashes are collapsed to their first occurrence before the search (equivalent
    under greedy: a copy is within 0 bits of its first occurrence), so a flood of one value
    (flat tiles) costs nothing.

    Args:
        hashes: uint64 ``[N]`` in the deterministic global order.
        threshold: Hamming threshold ``k``.

    Returns:
        ``(keep bool [N], duplicate_of int64 [N])``; ``duplicate_of`` is -1 for kept tiles.

    Examples:
        >>> import numpy as np
        >>> keep, dup = greedy_keep(np.array([0b0, 0b1, 0b11, 0b111, 0b0], np.uint64), 1)
        >>> keep.tolist(), dup.tolist()
        ([True, False, True, False, False], [-1, 0, -1, 2, 0])
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    if n == 0:
        return np.zeros(0, bool), np.zeros(0, np.int64)
    uniq, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # unique values in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rep_pos = first[order]
    ui, uj = candidate_pairs(uniq[order], threshold)
    rep_keep, rep_dup = greedy_resolve(len(order), ui, uj)
    r = rank[inverse]
    keep = rep_keep[r] & (rep_pos[r] == np.arange(n))
    exemplar = np.where(rep_keep, np.arange(len(order)), rep_dup)
    dup = np.where(keep, -1, rep_pos[exemplar[r]])
    return keep, dup


def _box_smooth(tiles: np.ndarray, size: int) -> np.ndarray:
    """``size`` x ``size`` box mean of (P, H, W) tiles, float32 (separable, reflecting edges)."""
    x = np.asarray(tiles, np.float32)
    if size <= 1:
        return x
    return ndimage.uniform_filter(x, size=(1, size, size), mode="reflect")


def max_shift_correlation(
    a: np.ndarray, b: np.ndarray, *, max_shift: int = 2, n_samples: int = 4096, smooth: int = 3
) -> np.ndarray:
    """Best Pearson correlation of tile pairs over integer shifts up to ``max_shift`` px.

    The verification step of near-duplicate search: a hash match says "similar layout", this
    says "the same pixels, give or take a small shift, noise and compression". Tiles are first
    box-smoothed (``smooth`` px) so that pixel noise and JPEG artefacts barely lower the score
    of a copy, then compared on a fixed pseudo-random set of ``n_samples`` pixels (the same for
    every pair; ~12x cheaper than every pixel, changes the score by about 0.01).

    Args:
        a, b: ``(P, H, W)`` tile pairs.
        max_shift: largest shift tried in y and x.
        n_samples: pixels compared per shift.
        smooth: box size of the smoothing (1: none).

    Returns:
        float32 ``[P]`` in -1..1.

    Examples:
        >>> import numpy as np
        >>> t = np.random.default_rng(0).integers(0, 255, (1, 64, 64), dtype=np.uint8)
        >>> float(max_shift_correlation(t[:, 1:61, 2:62], t[:, 0:60, 0:60])[0]) > 0.99
        True
    """
    a = _box_smooth(a, smooth)
    b = _box_smooth(b, smooth)
    p, h, w = a.shape
    m = max_shift
    rng = np.random.default_rng(12345)  # fixed pattern: results never vary between calls
    n = min(n_samples, (h - 2 * m) * (w - 2 * m))
    flat = rng.choice((h - 2 * m) * (w - 2 * m), n, replace=False)
    lin = (flat // (w - 2 * m) + m) * w + (flat % (w - 2 * m) + m)
    af = a.reshape(p, h * w)
    bf = b.reshape(p, h * w)
    av = np.take(af, lin, axis=1)
    av -= av.mean(axis=1, keepdims=True)
    anorm = np.sqrt(np.einsum("ij,ij->i", av, av))
    best = np.full(p, -1.0, np.float32)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            bv = np.take(bf, lin + (dy * w + dx), axis=1)
            bv -= bv.mean(axis=1, keepdims=True)
            denom = anorm * np.sqrt(np.einsum("ij,ij->i", bv, bv))
            corr = np.einsum("ij,ij->i", av, bv) / np.maximum(denom, 1e-6)
            best = np.maximum(best, corr)
    return best


def embedding_duplicates(
    embeddings: np.ndarray,
    threshold: float,
    *,
    candidates: np.ndarray | None = None,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy removal by cosine similarity of embeddings (``>= threshold`` is a duplicate).

    Exact blocked search (``N^2 D / block`` matrix products): right for up to a few hundred
    thousand tiles; for more, pass ``candidates`` from an approximate index.

    Args:
        embeddings: float ``[N, D]`` in the deterministic global order.
        threshold: cosine similarity at or above which two tiles are duplicates.
        candidates: optional boolean ``[N]``: only these tiles take part.
        block: rows per matrix product.

    Returns:
        ``(keep bool [N], duplicate_of int64 [N])`` as for `greedy_keep`.

    Examples:
        >>> import numpy as np
        >>> e = np.array([[1, 0], [0.99, 0.1], [0, 1]], np.float32)
        >>> embedding_duplicates(e, 0.95)[0].tolist()
        [True, False, True]
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    active = np.ones(n, bool) if candidates is None else np.asarray(candidates, bool)
    keep = active.copy()
    dup = np.full(n, -1, np.int64)
    kept_idx: list[int] = []
    for a in range(0, n, block):
        rows = [i for i in range(a, min(n, a + block)) if active[i]]
        if not rows:
            continue
        xb = x[rows]
        best = np.full(len(rows), -1, np.int64)
        if kept_idx:  # against tiles kept in earlier blocks
            sims = xb @ x[kept_idx].T
            hit = sims >= threshold
            anyhit = hit.any(axis=1)
            best[anyhit] = np.asarray(kept_idx)[hit[anyhit].argmax(axis=1)]
        inner = xb @ xb.T  # within the block, in order
        for r, i in enumerate(rows):
            if best[r] >= 0:
                keep[i] = False
                dup[i] = best[r]
                continue
            for r2 in range(r):
                if keep[rows[r2]] and inner[r, r2] >= threshold:
                    keep[i] = False
                    dup[i] = rows[r2]
                    break
            if keep[i]:
                kept_idx.append(i)
    return keep, dup
