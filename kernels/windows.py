"""Window description of multi-diagonal windowed attention (MDWA, LiteVAR section 2).

One pure description serves the Triton kernel, the FlexAttention mask, the dense reference
mask and the profiler's coverage measurement.

Parts. The queries of scale k see the keys of scales 0..k; part j is the keys of scale j
(tokens [begin_j, end_j) of the layout, n_j = s_j^2 of them, local index t = key - begin_j).

Mapping. A query (or a row/column) of an axis with n_q cells maps onto an axis of n_j cells at
    centre(i, n_q, n_j) = floor((2i + 1) * n_j / (2 * n_q)),
the cell nearest to (i + 0.5) * n_j / n_q - 0.5 (ties go up), in integer arithmetic.

Families. BAND (the paper's multi-diagonal window): query i of scale k (row-major index in
its s_k x s_k grid) sees key t of part j when |t - centre(i, n_k, n_j)| <= r.
SPATIAL: query (row, col) sees key (tr, tc) of part j when |tr - centre(row, s_k, s_j)| <= r and
|tc - centre(col, s_k, s_j)| <= r (a square neighbourhood). Half-width r = FULL (-1) keeps the
whole part, r = EMPTY (-2) keeps none of it (what evicting the scale from the KV cache does).
For both families the rule is "distance(query, key) <= r" with distance |t - m| (band) or the
Chebyshev distance (spatial), which is what the coverage curves histogram.
"""
from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from litevar.models.core.attention import ScaleLayout
from litevar.models.core.errors import UserError

FULL = -1  # half-width meaning "the whole part"
EMPTY = -2  # half-width meaning "no key of the part" (an evicted KV-cache scale)


class WindowFamily(enum.Enum):
    BAND = "band"  # 1-D diagonal band on the flattened (row-major) token index
    SPATIAL = "spatial"  # 2-D square neighbourhood on the token grid


def centre(i, n_q: int, n_j):
    """Cell of an n_j-cell axis nearest to the centre of cell i of an n_q-cell axis (int math)."""
    return ((2 * i + 1) * n_j) // (2 * n_q)


def paper_parts_full(k: int, full_parts: int = 3) -> tuple[bool, ...]:
    """Which of the k + 1 parts of scale k the paper keeps full (attention sinks).

    The paper merges scales 0..2 into its first part, then one part per scale, and keeps its
    first `full_parts` (3) parts full: scales 0..full_parts + 1. full_parts=1 keeps scales 0..2.
    """
    last_full = full_parts + 1 if full_parts > 0 else -1
    return tuple(j <= last_full for j in range(k + 1))


def max_width(side: int, family: WindowFamily) -> int:
    """Largest meaningful half-width of a part of side x side tokens (it covers the part)."""
    return side * side - 1 if family is WindowFamily.BAND else side - 1


# ---------------------------------------------------------------------------------------------
# The one mask rule


def _key_tables(layout: ScaleLayout, scale: int, device) -> tuple[torch.Tensor, ...]:
    """(part_L, begin_p, side_p) int64 tables of the keys of `scale`."""
    pn = layout.patch_nums[:scale + 1]
    side_p = torch.tensor(pn, dtype=torch.int64, device=device)
    begin_p = torch.tensor(layout.begin[:scale + 1], dtype=torch.int64, device=device)
    part_L = torch.repeat_interleave(torch.arange(scale + 1, device=device), side_p * side_p)
    return part_L, begin_p, side_p


def distance_fn(layout: ScaleLayout, scale: int, family: WindowFamily, device="cpu"
                ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """dist(q_idx, kv_idx) -> (part, distance) of valid indices, broadcasting: the definition."""
    part_L, begin_p, side_p = _key_tables(layout, scale, device)
    s_q = layout.patch_nums[scale]
    n_q = s_q * s_q

    def dist(q_idx, kv_idx):
        j = part_L[kv_idx]
        t, s_j = kv_idx - begin_p[j], side_p[j]
        if family is WindowFamily.BAND:
            return j, (t - centre(q_idx, n_q, s_j * s_j)).abs()
        d_row = (t // s_j - centre(q_idx // s_q, s_q, s_j)).abs()
        d_col = (t % s_j - centre(q_idx % s_q, s_q, s_j)).abs()
        return j, torch.maximum(d_row, d_col)

    return dist


def mask_mod_fn(layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor, family: WindowFamily,
                pad_to: int = 128):
    """FlexAttention mask_mod(b, h, q_idx, kv_idx) -> bool of one (layer, scale).

    The same rule as distance_fn in division-free form (tested equal pair by pair): with
    c = floor(a / (2 n)), |t - c| <= r  <=>  (t - r) 2n <= a < (t + r + 1) 2n. Per-key tables
    are padded to a multiple of pad_to; keys past the end are never kept.
    """
    dev, s_q = widths_Hp.device, layout.patch_nums[scale]
    part_L, begin_p, side_p = _key_tables(layout, scale, dev)
    L = part_L.numel()
    pad = -L % pad_to
    t_L = torch.arange(L, device=dev) - begin_p[part_L]
    r_HL = widths_Hp.long()[:, part_L]
    if family is WindowFamily.BAND:
        n_L = side_p[part_L] ** 2
        lo_HL, hi_HL = _bounds(t_L, r_HL, s_q * s_q, pad)
        n_L = F.pad(n_L, (0, pad), value=1).to(lo_HL.dtype)

        def mask_mod(b, h, q_idx, kv_idx):
            a = (2 * q_idx + 1) * n_L[kv_idx]
            return (lo_HL[h, kv_idx] <= a) & (a < hi_HL[h, kv_idx])
        return mask_mod
    s_L = side_p[part_L]
    rlo_HL, rhi_HL = _bounds(t_L // s_L, r_HL, s_q, pad)
    clo_HL, chi_HL = _bounds(t_L % s_L, r_HL, s_q, pad)
    s_L = F.pad(s_L, (0, pad), value=1).to(rlo_HL.dtype)

    def mask_mod(b, h, q_idx, kv_idx):
        a_row = (2 * (q_idx // s_q) + 1) * s_L[kv_idx]
        a_col = (2 * (q_idx % s_q) + 1) * s_L[kv_idx]
        return ((rlo_HL[h, kv_idx] <= a_row) & (a_row < rhi_HL[h, kv_idx])
                & (clo_HL[h, kv_idx] <= a_col) & (a_col < chi_HL[h, kv_idx]))
    return mask_mod


def _bounds(t_L, r_HL, n_q: int, pad: int):
    """[lo, hi) bounds on a = (2i + 1) n_j of the queries i that see key t: int32 when safe."""
    t_max = int(t_L.max())
    r_HL = r_HL.clamp(max=t_max + 1)  # any r > t_max already covers the part
    big = 4 * n_q * (t_max + 2)
    dtype = torch.int32 if 2 * big < 2 ** 31 else torch.int64
    lo = torch.where(r_HL == FULL, -big, torch.where(r_HL == EMPTY, big, (t_L - r_HL) * 2 * n_q))
    hi = torch.where(r_HL == FULL, big, torch.where(r_HL == EMPTY, -big, (t_L + r_HL + 1) * 2 * n_q))
    return F.pad(lo, (0, pad), value=0).to(dtype), F.pad(hi, (0, pad), value=0).to(dtype)


def dense_mask(layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor,
               family: WindowFamily = WindowFamily.BAND, rows: tuple[int, int] | None = None
               ) -> torch.Tensor:
    """bool [H, n_k, L_k] (or the query rows [a, b)): True where the key is kept. Tests/reference."""
    n_q = layout.patch_nums[scale] ** 2
    a, b = rows or (0, n_q)
    dev = widths_Hp.device
    q = torch.arange(a, b, device=dev)[:, None]
    kv = torch.arange(layout.end[scale], device=dev)[None, :]
    j_lL, d_lL = distance_fn(layout, scale, family, dev)(q, kv)
    r_HlL = widths_Hp.long()[:, j_lL]
    return (r_HlL == FULL) | ((r_HlL >= 0) & (d_lL <= r_HlL))


# ---------------------------------------------------------------------------------------------
# Key ranges of query tiles (band) and block structure


def band_tile_ranges(layout: ScaleLayout, scale: int, part: int, q_lo, q_hi, r):
    """Band keys of `part` for query tiles [q_lo, q_hi) of `scale`; tensors broadcast.

    Returns absolute, half-open (lo, hi, full_lo, full_hi): [lo, hi) holds every key some query
    of the tile sees (exactly the union for non-decreasing patch_nums, a hull otherwise);
    [full_lo, full_hi) the keys every query of the tile sees (may be empty). r = FULL: the whole
    part; r = EMPTY: none of it.
    """
    q_lo, q_hi, r = (torch.as_tensor(x, dtype=torch.int64) for x in (q_lo, q_hi, r))
    n_q, n_j = layout.patch_nums[scale] ** 2, layout.patch_nums[part] ** 2
    m_first, m_last = centre(q_lo, n_q, n_j), centre(q_hi - 1, n_q, n_j)
    full, empty = r == FULL, r == EMPTY
    lo = torch.where(full | empty, 0, (m_first - r).clamp(min=0))
    hi = torch.where(full, n_j, torch.where(empty, 0, (m_last + r + 1).clamp(max=n_j)))
    full_lo = torch.where(full | empty, 0, (m_last - r).clamp(min=0))
    full_hi = torch.where(full, n_j, torch.where(empty, 0, (m_first + r + 1).clamp(max=n_j)))
    b = layout.begin[part]
    return lo + b, hi + b, full_lo + b, torch.maximum(full_hi, full_lo) + b


def band_key_range(layout: ScaleLayout, scale: int, part: int, q_lo: int, q_hi: int, r: int
                   ) -> tuple[int, int]:
    """Absolute half-open key range [lo, hi) of `part` that queries [q_lo, q_hi) may see (band)."""
    lo, hi, _, _ = band_tile_ranges(layout, scale, part, q_lo, q_hi, r)
    return int(lo), int(hi)


def block_structure(layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor,
                    family: WindowFamily, block_q: int, block_kv: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) bool [H, nQ, nKV] over (query tile, key block) pairs of one (layer, scale).

    full: every pair of the tile kept (no mask needed); partial: some kept, not all.
    Band: arithmetic from band_tile_ranges. Spatial: evaluated from the mask, chunk by chunk.
    """
    if family is WindowFamily.SPATIAL:
        return _block_structure_dense(layout, scale, widths_Hp, family, block_q, block_kv)
    n_q, L = layout.patch_nums[scale] ** 2, layout.end[scale]
    q_lo = torch.arange(0, n_q, block_q)
    q_hi = (q_lo + block_q).clamp(max=n_q)
    b_lo = torch.arange(0, L, block_kv)
    b_hi = (b_lo + block_kv).clamp(max=L)
    H = widths_Hp.shape[0]
    touched = torch.zeros(H, len(q_lo), len(b_lo), dtype=torch.bool)
    full = torch.ones_like(touched)
    for j in range(scale + 1):
        r = widths_Hp[:, j].long().cpu()[:, None, None]
        lo, hi, flo, fhi = band_tile_ranges(layout, scale, j, q_lo[None, :, None],
                                            q_hi[None, :, None], r)
        in_lo, in_hi = b_lo.clamp(min=layout.begin[j]), b_hi.clamp(max=layout.end[j])
        overlaps = in_lo < in_hi  # [nKV]: the block holds keys of part j
        touched |= overlaps & (torch.maximum(lo, b_lo) < torch.minimum(hi, b_hi))
        full &= ~overlaps | ((in_lo >= flo) & (in_hi <= fhi))
    full &= touched
    return touched & ~full, full


def _block_structure_dense(layout, scale, widths_Hp, family, block_q, block_kv):
    """block_structure by evaluating the mask one query tile at a time (O(n_k * L_k))."""
    n_q, L = layout.patch_nums[scale] ** 2, layout.end[scale]
    n_kv = -(-L // block_kv)
    pad = n_kv * block_kv - L
    partial, full = [], []
    for a in range(0, n_q, block_q):
        m_HlL = dense_mask(layout, scale, widths_Hp.cpu(), family, (a, min(a + block_q, n_q)))
        any_ = F.pad(m_HlL, (0, pad), value=False).unflatten(-1, (n_kv, block_kv)).any(-1).any(1)
        all_ = F.pad(m_HlL, (0, pad), value=True).unflatten(-1, (n_kv, block_kv)).all(-1).all(1)
        partial.append(any_ & ~all_)
        full.append(all_)
    return torch.stack(partial, 1), torch.stack(full, 1)


# ---------------------------------------------------------------------------------------------
# Kept work and coverage


def kept_pairs(layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor,
               family: WindowFamily = WindowFamily.BAND) -> torch.Tensor:
    """int64 [H]: number of kept (query, key) pairs per head, counted arithmetically."""
    s_q = layout.patch_nums[scale]
    total = torch.zeros(widths_Hp.shape[0], dtype=torch.int64)
    for j in range(scale + 1):
        r, s_j = widths_Hp[:, j].long().cpu()[:, None], layout.patch_nums[j]
        if family is WindowFamily.BAND:
            per_q = _extent(centre(torch.arange(s_q * s_q), s_q * s_q, s_j * s_j), r, s_j * s_j)
        else:
            per_axis = _extent(centre(torch.arange(s_q), s_q, s_j), r, s_j)  # [H, s_q]
            per_q = per_axis[:, :, None] * per_axis[:, None, :]
        total += per_q.flatten(1).sum(1)
    return total


def _extent(m, r, n):
    """Number of cells of [0, n) within r of m (FULL: all n; EMPTY: none)."""
    cnt = (m + r).clamp(max=n - 1) - (m - r).clamp(min=0) + 1
    return torch.where(r == FULL, n, torch.where(r == EMPTY, 0, cnt))


def kept_fraction(layout: ScaleLayout, scale: int, widths_Hp: torch.Tensor,
                  family: WindowFamily = WindowFamily.BAND) -> float:
    """Share of the (head, query, key) pairs of one (layer, scale) that the window keeps."""
    n_q, L = layout.patch_nums[scale] ** 2, layout.end[scale]
    return kept_pairs(layout, scale, widths_Hp, family).sum().item() / (widths_Hp.shape[0] * n_q * L)


def window_mass(P_BHlL: torch.Tensor, layout: ScaleLayout, scale: int, widths: Iterable[int],
                family: WindowFamily) -> tuple[torch.Tensor, torch.Tensor]:
    """(inside [H, parts, W], total [H, parts]) float64 attention mass, summed over batch and
    queries: inside[h, j, w] = mass of part j within half-width widths[w]. Sums over batches."""
    widths = torch.tensor(list(widths), dtype=torch.int64)
    if (widths < FULL).any():
        raise UserError(f"coverage widths {widths.tolist()}: use half-widths >= 0 or -1 (FULL)")
    mass_HlL = P_BHlL.detach().double().sum(0).cpu()
    H, n_q = mass_HlL.shape[:2]
    dist = distance_fn(layout, scale, family)
    inside, total = [], []
    for j in range(scale + 1):
        kv = torch.arange(layout.begin[j], layout.end[j])
        _, d_lL = dist(torch.arange(n_q)[:, None], kv[None, :])
        d_max = max_width(layout.patch_nums[j], family)
        hist_Hd = torch.zeros(H, d_max + 1, dtype=torch.float64)
        hist_Hd.index_add_(1, d_lL.flatten(), mass_HlL[:, :, kv[0]:kv[-1] + 1].reshape(H, -1))
        cum_Hd = hist_Hd.cumsum(1)
        idx = torch.where(widths < 0, d_max, widths.clamp(max=d_max))
        inside.append(cum_Hd[:, idx])
        total.append(cum_Hd[:, -1])
    return torch.stack(inside, 1), torch.stack(total, 1)


def coverage_curves(P_BHlL: torch.Tensor, layout: ScaleLayout, scale: int, widths: Iterable[int],
                    families: Iterable[WindowFamily] = tuple(WindowFamily)
                    ) -> dict[WindowFamily, torch.Tensor]:
    """R_w per family: float64 [H, parts, W], share of each part's attention mass in the window."""
    widths = list(widths)
    curves = {}
    for fam in families:
        inside, total = window_mass(P_BHlL, layout, scale, widths, fam)
        total = total[..., None]
        curves[fam] = torch.where(total > 0, inside / total.clamp_min(1e-300), 1.0)
    return curves


# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class WindowConfig:
    """Per (layer, head, scale, part) half-widths of one model and schedule.

    widths[layer] is int32 [H, S, S] (S scales): entry [h, k, j] is the half-width of part j for
    the queries of scale k (FULL = -1 keeps the part whole; entries with j > k are unused).
    Layers without an entry run dense attention.
    """

    patch_nums: tuple[int, ...]
    family: WindowFamily = WindowFamily.BAND
    widths: dict[int, torch.Tensor] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self):
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        self.family = WindowFamily(self.family)
        self.widths = {int(l): torch.as_tensor(w, dtype=torch.int32).cpu()
                       for l, w in self.widths.items()}
        self.validate()

    @property
    def layout(self) -> ScaleLayout:
        return ScaleLayout(self.patch_nums)

    def validate(self) -> None:
        """Raise UserError naming the first bad entry and how to fix it."""
        S, heads = len(self.patch_nums), {w.shape[0] for w in self.widths.values()}
        if self.version != 1:
            raise UserError(f"window config version {self.version}: this litevar reads version 1")
        if len(heads) > 1:
            raise UserError(f"window config: layers have different head counts {sorted(heads)}; "
                            "give every layer an [H, S, S] table with the model's H")
        for layer, w in self.widths.items():
            if w.dim() != 3 or w.shape[1:] != (S, S):
                raise UserError(f"windows[layer {layer}] has shape {tuple(w.shape)}: expected "
                                f"[H, {S}, {S}] for {S} scales (patch_nums {self.patch_nums})")
            for h, k, j in (w < EMPTY).nonzero().tolist():
                raise UserError(f"windows[layer {layer}][head {h}, scale {k}, part {j}] = "
                                f"{w[h, k, j].item()}: use a half-width >= 0, -1 (FULL) or -2 (EMPTY)")
            self._check_max(layer, w)

    def _check_max(self, layer: int, w: torch.Tensor) -> None:
        for j, side in enumerate(self.patch_nums):
            top = max_width(side, self.family)
            bad = (w[:, j:, j] > top).nonzero().tolist()  # only used entries: scale k >= part j
            if bad:
                h, dk = bad[0]
                raise UserError(
                    f"windows[layer {layer}][head {h}, scale {j + dk}, part {j}] = "
                    f"{w[h, j + dk, j].item()}: part {j} has {side}x{side} tokens, so the "
                    f"{self.family.value} half-width is at most {top}; use <= {top} or -1 (FULL)")

    def scale_widths(self, layer: int, scale: int) -> torch.Tensor | None:
        """int32 [H, scale + 1] half-widths of one call, or None when it is fully dense."""
        w = self.widths.get(layer)
        if w is None:
            return None
        w_Hp = w[:, scale, :scale + 1]
        tops = torch.tensor([max_width(s, self.family) for s in self.patch_nums[:scale + 1]])
        if ((w_Hp == FULL) | (w_Hp >= tops)).all():
            return None
        return w_Hp

    def kept_fraction(self, layers: Iterable[int] | None = None) -> float:
        """Share of attention (query, key) pairs kept over `layers` (default: all listed)."""
        layers = list(self.widths) if layers is None else list(layers)
        kept = total = 0
        H = self.num_heads or 1
        for layer in layers:
            for k, s in enumerate(self.patch_nums):
                n = s * s * self.layout.end[k]
                w_Hp = self.scale_widths(layer, k)
                if w_Hp is None:
                    kept += H * n
                else:
                    kept += kept_pairs(self.layout, k, w_Hp, self.family).sum().item()
                total += H * n
        return kept / total if total else 1.0

    @property
    def num_heads(self) -> int | None:
        return next((w.shape[0] for w in self.widths.values()), None)

    def to_dict(self) -> dict:
        return {"version": self.version, "patch_nums": list(self.patch_nums),
                "family": self.family.value,
                "widths": {str(l): w.tolist() for l, w in sorted(self.widths.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> WindowConfig:
        return cls(patch_nums=tuple(d["patch_nums"]), family=WindowFamily(d["family"]),
                   widths={int(l): torch.tensor(w, dtype=torch.int32) for l, w in d["widths"].items()},
                   version=d.get("version", 1))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> WindowConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def uniform(cls, patch_nums, layers: Iterable[int], heads: int, width: int,
                family: WindowFamily = WindowFamily.BAND, full_parts: int = 3) -> WindowConfig:
        """Every windowed part gets `width` (capped at its max); paper_parts_full parts stay FULL."""
        S = len(patch_nums)
        w = torch.full((heads, S, S), FULL, dtype=torch.int32)
        for k in range(S):
            for j, keep_full in enumerate(paper_parts_full(k, full_parts)):
                if not keep_full:
                    w[:, k, j] = min(width, max_width(patch_nums[j], family))
        return cls(tuple(patch_nums), family, {l: w.clone() for l in layers})
