"""Benchmark of the MDWA attention backends against dense SDPA, in the same run, at VAR shapes.

The timed call is the LAST scale's queries against all keys (where the cost is), head dim 64,
H = depth heads, a CFG-doubled batch, band windows with ~10% of the keys kept (paper parts
0..4 full, one half-width for the other parts, found by bisection). Schedules (patch_nums):

    256 px   1,2,3,4,5,6,8,10,13,16                                     (n = 256,   L = 680)
    512 px   1,2,3,4,6,9,13,18,24,32                                    (n = 1024,  L = 2240)
    1024 px  1,2,3,4,5,7,9,12,16,21,27,36,48,64                         (n = 4096,  L = 9451)
    2048 px  1,2,3,4,5,7,9,12,16,21,27,36,48,64,84,108,128              (n = 16384, L = 44555)

(the VAR family's schedules; 2048 px is ours, no official one exists.)

CPU runs float32 (faster than bfloat16 for both SDPA and flex on these CPUs), CUDA bfloat16.
Times are medians after a warm-up call (compilation excluded). TFLOP/s count the kept work
(4 * kept pairs * head dim per batch row). The error is the max abs difference from the
masked reference (float32) on a slice of query rows when the whole reference would not fit.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

from litevar.kernels.bench_gemm import interleaved_ms
from litevar.kernels.mdwa import CFGShared, FlexMDWA, LayerOptions, MaskedReference, TritonMDWA
from litevar.kernels.select import triton_available
from litevar.kernels.windows import WindowConfig, dense_mask, kept_pairs
from litevar.models.core.attention import AttnCall, DenseAttention, ScaleLayout
from litevar.models.core.device import device_of
from litevar.models.core.family import get_family
from litevar.models.core.inference import DTYPES

log = logging.getLogger(__name__)

HEAD_DIM = 64
TARGET_KEPT = 0.10
REF_ROWS = 256  # query rows of the error check when the full reference is too large
REF_MAX_SCORES = 2 ** 28  # B * H * n * L above which only REF_ROWS rows are checked


def windows_for_kept(patch_nums, heads: int, target: float = TARGET_KEPT) -> WindowConfig:
    """Layer-0 band windows (paper parts full, one half-width) keeping ~target of the last
    scale's (query, key) pairs: the smallest half-width reaching it."""
    layout, k = ScaleLayout(tuple(patch_nums)), len(patch_nums) - 1

    def kept(r):
        w = WindowConfig.uniform(patch_nums, [0], heads, r)
        kept_ = kept_pairs(layout, k, w.widths[0][:, k, :k + 1]).sum().item()
        return kept_ / (heads * layout.L * patch_nums[-1] ** 2)

    lo, hi = 0, patch_nums[-1] ** 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if kept(mid) < target else (lo, mid)
    return WindowConfig.uniform(patch_nums, [0], heads, lo)


def _reference_rows(q, k, v, windows: WindowConfig, ctx: AttnCall, rows):
    """float32 masked reference of the query rows [a, b)."""
    w_Hp = windows.scale_widths(ctx.layer, ctx.scale).to(q.device)
    mask = dense_mask(ctx.layout, ctx.scale, w_Hp, windows.family, rows)
    a, b = rows
    return F.scaled_dot_product_attention(q[:, :, a:b].float(), k.float(), v.float(),
                                          attn_mask=mask, scale=ctx.softmax_scale)


def _max_err(o_BHlc, ref_BHrc, rows, batch: int) -> float:
    """Max abs error on the checked rows of the first `batch` rows (ASC: the conditional half)."""
    o = o_BHlc[:batch, :, rows[0]:rows[1]].float()
    return (o - ref_BHrc[:batch]).abs().max().item()


def _backends(device: torch.device, windows: WindowConfig, small: bool) -> dict[str, Callable]:
    """name -> backend of this device (dense SDPA first; the masked reference when small)."""
    out: dict[str, Callable] = {"dense SDPA": DenseAttention()}
    if small:
        out["masked SDPA (reference)"] = MaskedReference(windows)
    out["flex MDWA"] = FlexMDWA(windows, dense_below=0)
    if device_of(device).triton_native and triton_available():
        out["triton MDWA"] = TritonMDWA(windows)
        out["triton MDWA qk-int8"] = TritonMDWA(windows, {0: LayerOptions(qk_int8=True)})
        out["triton MDWA + ASC"] = CFGShared(TritonMDWA(windows))
    return out


def _cases(device: torch.device, which: str) -> list[tuple[int, int, int, str]]:
    """(resolution, heads, batch, note) of the runs (which: quick | full | evidence)."""
    if device_of(device).accelerator:
        heads = (16,) if which == "quick" else (16, 30)
        res = (1024, 2048) if which == "evidence" else tuple(get_family("var").schedules)
        return [(r, h, 2, "") for r in res for h in heads]
    if which != "full":
        return [(256, 16, 2, ""), (1024, 4, 2, "H=4 of d16-d30"),
                (2048, 2, 2, "H=2 of d16-d30, batch 1 x CFG 2")]
    return [(256, 16, 2, ""), (512, 16, 2, ""), (1024, 16, 2, ""),
            (2048, 4, 2, "H=4 of d16-d30, batch 1 x CFG 2")]


def bench_attention(device: str = "cpu", which: str = "quick") -> list[dict]:
    """Rows comparing every backend with dense SDPA, per resolution (see module docstring)."""
    dev = torch.device(device)
    dtype = DTYPES[device_of(dev).default_dtype]
    reps = 3 if which == "quick" else 7
    rows = []
    for res, H, B, note in _cases(dev, which):
        rows += _bench_case(dev, dtype, res, H, B, note, reps)
    return rows


def _bench_case(dev, dtype, res: int, H: int, B: int, note: str, reps: int) -> list[dict]:
    patch_nums = get_family("var").schedules[res]
    layout, k = ScaleLayout(patch_nums), len(patch_nums) - 1
    n, L = patch_nums[-1] ** 2, layout.L
    windows = windows_for_kept(patch_nums, H)
    kept = kept_pairs(layout, k, windows.scale_widths(0, k)).sum().item() / (H * n * L)
    g = torch.Generator(device=dev).manual_seed(res)
    q, kk, v = (torch.randn(B, H, m, HEAD_DIM, generator=g, device=dev, dtype=dtype)
                for m in (n, L, L))
    ctx = AttnCall(layer=0, scale=k, layout=layout, softmax_scale=HEAD_DIM ** -0.5, cfg_batch=B // 2)
    small = B * H * n * L <= REF_MAX_SCORES
    rows_checked = (0, n) if small else (n // 2, n // 2 + REF_ROWS)
    ref = _reference_rows(q, kk, v, windows, ctx, rows_checked)
    backends = _backends(dev, windows, small)
    ctxs = {name: ctx if "ASC" in name else replace(ctx, cfg_batch=0) for name in backends}
    log.info("bench %d px (H=%d, B=%d): %s", res, H, B, ", ".join(backends))
    ms = interleaved_ms({name: functools.partial(b, q, kk, v, ctxs[name])
                          for name, b in backends.items()}, reps, dev)
    out = []
    for name, backend in backends.items():
        frac = 1.0 if name == "dense SDPA" else kept / (2 if "ASC" in name else 1)
        err = None if name == "dense SDPA" else _max_err(backend(q, kk, v, ctxs[name]), ref,
                                                          rows_checked, B // 2 if "ASC" in name else B)
        out.append({
            "backend": name, "resolution": res, "heads": H, "batch": B, "q_tokens": n,
            "kv_tokens": L, "kept": round(frac, 4), "ms": round(ms[name], 3),
            "tflops": round(4 * frac * B * H * n * L * HEAD_DIM / (ms[name] * 1e-3) / 1e12, 4),
            "speedup": round(ms["dense SDPA"] / ms[name], 2), "max_err": err,
            "err_rows": f"{rows_checked[0]}:{rows_checked[1]}", "dtype": str(dtype).split(".")[-1],
            "note": note})
    return out


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of bench rows."""
    cols = ["backend", "resolution", "heads", "batch", "q_tokens", "kv_tokens", "kept", "ms",
            "tflops", "speedup", "max_err", "err_rows", "dtype", "note"]
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(x) -> str:
    if x is None:
        return "-"
    return f"{x:.2e}" if isinstance(x, float) and x and abs(x) < 1e-2 else str(x)


def print_table(rows: list[dict]) -> None:
    """Print format_table(rows) (for the CLI)."""
    print(format_table(rows))
