"""kernels/windows.py: every derived form of the window rule against brute force."""
from __future__ import annotations

import os
import random

import pytest
import torch

from litevar.kernels.windows import (
    FULL,
    WindowConfig,
    WindowFamily,
    band_key_range,
    band_tile_ranges,
    block_structure,
    centre,
    coverage_curves,
    dense_mask,
    distance_fn,
    kept_fraction,
    kept_pairs,
    mask_mod_fn,
    max_width,
    paper_parts_full,
    window_mass,
)
from litevar.models.core.attention import ScaleLayout
from litevar.models.core.errors import UserError

SEED = int.from_bytes(os.urandom(4), "little")
SCHEDULES = [(1, 2, 3, 4, 5, 6), (1, 2, 3, 5, 7)]


def _rng(salt: int) -> random.Random:
    return random.Random(SEED * 1000 + salt)


def _random_widths(rng: random.Random, layout: ScaleLayout, scale: int, H: int,
                   family: WindowFamily) -> torch.Tensor:
    """int32 [H, scale + 1]: random half-widths, some FULL, some at the maximum."""
    w = [[rng.choice([FULL, 0, rng.randint(0, max_width(s, family)), max_width(s, family)])
          for s in layout.patch_nums[:scale + 1]] for _ in range(H)]
    return torch.tensor(w, dtype=torch.int32)


def _cases(salt: int, n: int = 6):
    """(layout, scale, H) draws: the VAR-like schedules plus a random increasing one."""
    rng = _rng(salt)
    pns = SCHEDULES + [tuple(sorted(rng.sample(range(1, 10), rng.randint(2, 5))))]
    for i in range(n):
        pn = pns[i % len(pns)]
        yield rng, ScaleLayout(pn), rng.randrange(len(pn)), rng.randint(1, 3)


def test_centre_is_nearest_index():
    for n_q in range(1, 40):
        for n_j in range(1, 40):
            for i in range(n_q):
                x = (i + 0.5) * n_j / n_q - 0.5
                c = centre(i, n_q, n_j)
                assert 0 <= c < n_j and abs(c - x) <= 0.5 + 1e-12, (i, n_q, n_j)


@pytest.mark.parametrize("family", list(WindowFamily))
def test_mask_mod_and_kept_pairs_match_dense_mask(family):
    for rng, layout, k, H in _cases(1):
        w = _random_widths(rng, layout, k, H, family)
        m = dense_mask(layout, k, w, family)
        L, n = layout.end[k], layout.patch_nums[k] ** 2
        assert m.shape == (H, n, L)
        pad = rng.choice([1, 8, 16])
        Lp = -(-L // pad) * pad
        mm = mask_mod_fn(layout, k, w, family, pad_to=pad)(
            None, torch.arange(H)[:, None, None], torch.arange(n)[None, :, None],
            torch.arange(Lp)[None, None, :])
        assert torch.equal(mm[..., :L], m) and not mm[..., L:].any(), (SEED, layout, k)
        assert kept_pairs(layout, k, w, family).tolist() == m.sum((1, 2)).tolist(), SEED
        assert kept_fraction(layout, k, w, family) == pytest.approx(m.float().mean().item())


@pytest.mark.parametrize("family", list(WindowFamily))
def test_dense_mask_is_the_definition(family):
    """Brute force over scalar indices: the documented rule, written out a second time."""
    layout = ScaleLayout((1, 2, 3, 5))
    k, s_q = 3, 5
    w = torch.tensor([[FULL, 1, 2, 3], [0, 0, 1, FULL]], dtype=torch.int32)
    m = dense_mask(layout, k, w, family)
    for h in range(2):
        for i in range(s_q * s_q):
            for key in range(layout.end[k]):
                j = next(p for p in range(k + 1) if key < layout.end[p])
                t, s_j, r = key - layout.begin[j], layout.patch_nums[j], int(w[h, j])
                if family is WindowFamily.BAND:
                    d = abs(t - ((2 * i + 1) * s_j * s_j) // (2 * s_q * s_q))
                else:
                    d = max(abs(t // s_j - ((2 * (i // s_q) + 1) * s_j) // (2 * s_q)),
                            abs(t % s_j - ((2 * (i % s_q) + 1) * s_j) // (2 * s_q)))
                assert bool(m[h, i, key]) == (r < 0 or d <= r), (h, i, key)


def test_band_key_range_matches_dense_mask_for_every_query():
    for rng, layout, k, H in _cases(2, n=9):
        w = _random_widths(rng, layout, k, H, WindowFamily.BAND)
        m = dense_mask(layout, k, w, WindowFamily.BAND)
        n = layout.patch_nums[k] ** 2
        for h in range(H):
            for j in range(k + 1):
                part = m[h, :, layout.begin[j]:layout.end[j]]
                for i in range(n):  # single queries: the range is exact and contiguous
                    lo, hi = band_key_range(layout, k, j, i, i + 1, int(w[h, j]))
                    keys = part[i].nonzero().flatten() + layout.begin[j]
                    assert (lo, hi) == (keys.min().item(), keys.max().item() + 1), (SEED, i, j)
                    assert len(keys) == hi - lo
                tile = rng.randint(1, 9)
                for a in range(0, n, tile):  # tiles: the union of the rows (increasing schedule)
                    b = min(a + tile, n)
                    ranges = band_tile_ranges(layout, k, j, a, b, int(w[h, j]))
                    lo, hi, flo, fhi = (int(x) for x in ranges)
                    any_ = part[a:b].any(0).nonzero().flatten() + layout.begin[j]
                    all_ = part[a:b].all(0).nonzero().flatten() + layout.begin[j]
                    assert (lo, hi) == (any_.min().item(), any_.max().item() + 1)
                    assert (flo, fhi) == ((all_.min().item(), all_.max().item() + 1)
                                          if len(all_) else (flo, flo)), (SEED, a, b, j)


@pytest.mark.parametrize("family", list(WindowFamily))
def test_block_structure_matches_dense_mask(family):
    for rng, layout, k, H in _cases(3):
        w = _random_widths(rng, layout, k, H, family)
        bq, bk = rng.choice([1, 3, 4, 8, 16]), rng.choice([1, 5, 8, 16])
        partial, full = block_structure(layout, k, w, family, bq, bk)
        m = dense_mask(layout, k, w, family)
        n, L = m.shape[1:]
        for qb in range(partial.shape[1]):
            for kb in range(partial.shape[2]):
                blk = m[:, qb * bq:(qb + 1) * bq, kb * bk:(kb + 1) * bk]
                assert torch.equal(full[:, qb, kb], blk.flatten(1).all(1)), (SEED, qb, kb)
                assert torch.equal(partial[:, qb, kb], blk.flatten(1).any(1) & ~blk.flatten(1).all(1))


def _brute_mass(P_BHlL, layout, k, widths, family):
    """inside[h, j, w], total[h, j] by explicit masks, one width at a time."""
    H, parts = P_BHlL.shape[1], k + 1
    inside = torch.zeros(H, parts, len(widths), dtype=torch.float64)
    total = torch.zeros(H, parts, dtype=torch.float64)
    mass = P_BHlL.double().sum(0)
    for j in range(parts):
        sl = slice(layout.begin[j], layout.end[j])
        total[:, j] = mass[:, :, sl].sum((1, 2))
        for wi, r in enumerate(widths):
            w = torch.full((H, parts), FULL, dtype=torch.int32)
            w[:, j] = min(r, max_width(layout.patch_nums[j], family)) if r >= 0 else FULL
            inside[:, j, wi] = (mass * dense_mask(layout, k, w, family))[:, :, sl].sum((1, 2))
    return inside, total


def test_coverage_curves_equal_brute_force_sums():
    for _rng, layout, k, H in _cases(4, n=4):
        B, n, L = 2, layout.patch_nums[k] ** 2, layout.end[k]
        g = torch.Generator().manual_seed(SEED)
        P = (torch.randn(B, H, n, L, generator=g) * 3).softmax(-1)
        widths = [0, 1, 2, 5, 100, FULL]
        curves = coverage_curves(P, layout, k, widths)
        for fam in WindowFamily:
            inside, total = _brute_mass(P, layout, k, widths, fam)
            got_in, got_tot = window_mass(P, layout, k, widths, fam)
            torch.testing.assert_close(got_in, inside, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got_tot, total, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(curves[fam], inside / total[..., None], rtol=1e-10, atol=1e-12)
            assert (curves[fam][..., -1] == 1).all()
            assert (curves[fam].diff(dim=-1)[..., :-1] >= -1e-12).all()  # grows with the width


def test_paper_parts_full():
    assert paper_parts_full(1) == (True, True)
    assert paper_parts_full(9) == (True,) * 5 + (False,) * 5
    assert paper_parts_full(9, full_parts=1) == (True,) * 3 + (False,) * 7


def test_distance_fn_band_own_scale_is_diagonal():
    layout = ScaleLayout((1, 2, 4))
    j, d = distance_fn(layout, 2, WindowFamily.BAND)(torch.arange(16), torch.arange(16) + 5)
    assert (j == 2).all() and (d == 0).all()


@pytest.mark.parametrize("family", list(WindowFamily))
def test_config_json_round_trip(family):
    rng, layout = _rng(5), ScaleLayout((1, 2, 3, 5, 7))
    S = 5
    widths = {}
    for layer in (0, 3, 7):
        w = torch.full((2, S, S), FULL, dtype=torch.int32)
        for k in range(S):
            w[:, k, :k + 1] = _random_widths(rng, layout, k, 2, family)
        widths[layer] = w
    cfg = WindowConfig(layout.patch_nums, family, widths)
    back = WindowConfig.from_json(cfg.to_json())
    assert back.patch_nums == cfg.patch_nums and back.family is family
    assert set(back.widths) == {0, 3, 7}
    assert all(torch.equal(back.widths[l], widths[l]) for l in widths)
    assert back.to_json() == cfg.to_json()
    assert 0 < cfg.kept_fraction() <= 1


def test_config_validation_names_entry_and_fix():
    pn = (1, 2, 3)
    w = torch.full((2, 3, 3), FULL, dtype=torch.int32)
    w[1, 2, 1] = 4  # part 1 has 2x2 tokens: band max 3
    with pytest.raises(UserError, match=r"layer 5\]\[head 1, scale 2, part 1\].*at most 3"):
        WindowConfig(pn, WindowFamily.BAND, {5: w})
    with pytest.raises(UserError, match=r"at most 1"):
        WindowConfig(pn, WindowFamily.SPATIAL, {5: w})
    w[1, 2, 1] = -3  # -2 is EMPTY (an evicted scale)
    with pytest.raises(UserError, match=r"-1 \(FULL\) or -2 \(EMPTY\)"):
        WindowConfig(pn, "band", {5: w})
    with pytest.raises(UserError, match=r"expected \[H, 3, 3\]"):
        WindowConfig(pn, "band", {0: torch.zeros(2, 3, 2)})
    w = torch.full((2, 3, 3), FULL, dtype=torch.int32)
    w[0, 0, 2] = 99  # part > scale: unused, accepted
    assert WindowConfig(pn, "band", {0: w}).scale_widths(0, 2) is None  # all full: dense


def test_uniform_config_keeps_paper_parts_full():
    cfg = WindowConfig.uniform((1, 2, 3, 4, 5, 6, 8), [0, 1], heads=2, width=3)
    w = cfg.scale_widths(1, 6)
    assert w.tolist() == [[FULL] * 5 + [3, 3]] * 2
    assert cfg.scale_widths(0, 4) is None
