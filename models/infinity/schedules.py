"""Infinity's token schedules: the official ones (FoundationVision's dynamic-resolution table) and ours.

Each scale is (rows, columns) of latent tokens; an image is 16 pixels per token at 2B (8 pixels per
VAE code, patchified 2x2 into one token, at 8B: the same 16 pixels). The official table gives, for
each aspect ratio h/w, 13 scales; the first 7, 10, 12 and 13 of them are its 0.06M, 0.25M, 0.60M and
1M schedules (256, 512, 768 and 1024 px at 1:1). The ratio w/h uses the same scales transposed.

Ours: no schedule above 1024 px is published. The 2048-px one extends the 1:1 1M schedule by three
scales growing by about 1.3x, as the official one does above 32, ending at 128 (2048 px):
(..., 48, 64, 80, 96, 128), 16 scales, L = 42,521 tokens. It is marked `ours` wherever it is used.
"""
from __future__ import annotations

from litevar.models.core.errors import UserError

# h/w -> 13 scales (rows, columns): the official table
RATIO_HW: dict[float, tuple[tuple[int, int], ...]] = {
    1.000: ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
            (48, 48), (64, 64)),
    1.250: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
            (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)),
    1.500: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
            (63, 42), (78, 52)),
    1.750: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
            (70, 40), (84, 48)),
    2.000: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
            (74, 37), (90, 45)),
    2.500: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
            (80, 32), (100, 40)),
    3.000: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
            (90, 30), (111, 37)),
}
PIXELS = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}  # name -> scales of the table
PIXELS_PER_TOKEN = 16
OURS_2048 = (80, 96, 128)  # the scales our 2048-px schedule adds to the 1:1 1M one

# square schedules (sides) by resolution: what profiles and plans price
SCHEDULES: dict[int, tuple[int, ...]] = {
    PIXELS_PER_TOKEN * RATIO_HW[1.0][n - 1][0]: tuple(h for h, _ in RATIO_HW[1.0][:n]) for n in PIXELS.values()}
SCHEDULES[2048] = SCHEDULES[1024] + OURS_2048
OURS = {2048}  # resolutions whose schedule is ours, not the official table's


def ratios() -> list[float]:
    """Every aspect ratio h/w with a schedule (the table's and their transposes, 3 decimals as official)."""
    out = []
    for r in RATIO_HW:
        out.append(r)
        if r != 1.0:
            out.append(int(1 / r * 1000) / 1000)
    return sorted(out)


def schedule_hw(h_div_w: float = 1.0, pixels: str = "1M") -> tuple[tuple[int, int], ...]:
    """The official (rows, columns) schedule nearest to the aspect ratio h/w."""
    if pixels not in PIXELS:
        raise UserError(f"unknown Infinity schedule size {pixels!r}; choose one of {sorted(PIXELS)}")
    r = min(ratios(), key=lambda t: abs(t - h_div_w))
    if r in RATIO_HW:
        return RATIO_HW[r][:PIXELS[pixels]]
    base = min(RATIO_HW, key=lambda t: abs(int(1 / t * 1000) / 1000 - r))
    return tuple((w, h) for h, w in RATIO_HW[base][:PIXELS[pixels]])


def square_hw(patch_nums) -> tuple[tuple[int, int], ...]:
    return tuple((int(p), int(p)) for p in patch_nums)


def num_tokens(hw) -> int:
    return sum(h * w for h, w in hw)
