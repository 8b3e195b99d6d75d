"""Token schedules (patch_nums) per output resolution.

256, 512 and 1024 px are the official VAR schedules. No 2048 px schedule is published; ours
extends the 1024 px schedule by three scales growing by about 1.3x, as the 1024 px one does
above 16, so that it ends at 128 (2048 px with the 16x-downsampling VQVAE):
(..., 48, 64, 84, 108, 128), 17 scales, L = 44,555 tokens.
"""
from __future__ import annotations

from litevar.models.core.errors import UserError

SCHEDULES: dict[int, tuple[int, ...]] = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
    2048: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64, 84, 108, 128),
}


def num_tokens(patch_nums) -> int:
    return sum(pn * pn for pn in patch_nums)


def schedule_for(resolution: int) -> tuple[int, ...]:
    if resolution not in SCHEDULES:
        raise UserError(f"no token schedule for {resolution} px; choose one of {sorted(SCHEDULES)} "
                        f"or pass patch_nums explicitly")
    return SCHEDULES[resolution]
