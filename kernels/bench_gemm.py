"""Benchmark of the quantized GEMMs against a dense matmul measured in the same run, at VAR's
linear shapes: activations in bf16, or in fp32 on a CPU that emulates bf16
(Device.bf16_faster), where a bf16 reference would time the emulation. `bench_gemm(device,
quick)` returns one dict per (shape, kernel); the CLI (`litevar bench-kernels`) prints them with
`print_table`.

Two timings per row: `ms` is the GEMM alone (activations already quantized), `ms_layer` is
what a QuantLinear runs (dynamic per-token activation quantization + GEMM). Triton is not
timed on CPU: interpreter timings mean nothing, those rows are marked skipped.
"""
from __future__ import annotations

import logging
import statistics
import sys
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from litevar.kernels import gemm
from litevar.kernels.formats import capability
from litevar.kernels.qlinear import QuantLinear
from litevar.kernels.quant import sqnr
from litevar.kernels.select import KernelChoice, triton_available
from litevar.models.core.device import device_of

log = logging.getLogger(__name__)

# dense peaks, TOPS (int8) and TFLOP/s (bf16); anchors.md, NVIDIA datasheets. Key: name substring
PEAKS = {"H100 PCIe": {"int8": 1513.0, "bf16": 756.0},
         "H100": {"int8": 1979.0, "bf16": 989.0},  # SXM
         "H200": {"int8": 1979.0, "bf16": 989.0}}
DEPTHS = (16, 20, 24, 30)  # VAR d16..d30, width C = 64 * depth
LAYERS = {"mat_qkv": (3, 1, False), "proj": (1, 1, True), "fc1": (4, 1, True),
          "fc2": (1, 4, True)}  # name: (N / C, K / C, has bias)
TOKENS = {256: 256, 1024: 4096, 2048: 16384}  # tokens of the last scale per image, by px
CFG_BATCH = 2  # conditional + unconditional rows
EMULATED_FORMAT = "W6A6"  # one fake-quant row per shape stands for every emulated format


SETS = ("quick", "full", "evidence")


def var_shapes(which: str, device: str) -> list[tuple[str, int, int, int, int]]:
    """(layer, depth, M, N, K) at VAR's real linear shapes: "full" every one, "quick" a small
    subset, "evidence" d16..d30 at 1024 and 2048 px (M >= 8192 with CFG; the GPU evidence run)."""
    depths, pxs, layers = DEPTHS, tuple(TOKENS), tuple(LAYERS)
    if which == "quick":
        depths, layers = (16,), ("proj", "fc1")
        pxs = (256, 1024) if device_of(device).accelerator else (256,)
    elif which == "evidence":
        pxs = (1024, 2048)
    return [(layer, d, CFG_BATCH * TOKENS[px], LAYERS[layer][0] * 64 * d, LAYERS[layer][1] * 64 * d)
            for d in depths for px in pxs for layer in layers]


def time_ms(fn: Callable, device, warmup: int, repeats: int, min_batch_ms: float = 1.0,
            max_batch: int = 1000) -> float:
    """Median milliseconds per call of fn() on `device` (litevar.models.core.device.Device.time_ms)."""
    return device_of(device).time_ms(fn, warmup, repeats, min_batch_ms, max_batch)


def interleaved_ms(fns: dict[str, Callable[[], object]], reps: int, device: torch.device,
                   rounds: Callable[[range], Iterable] = iter, samples: dict | None = None,
                   prepare: Callable[[str], object] | None = None) -> dict[str, float]:
    """Median wall time (ms) of each fn; one warm-up call each (compiles, caches), then the
    reps interleaved so that a shared machine's load hits every fn alike: one call each per
    round, round r starting at the (r mod n)-th fn, so that no fn always runs first or always
    follows the same one. `rounds` wraps the range of rounds (e.g. a progress bar); `samples`,
    when given, receives every fn's times in round order (sample i of every fn is from round i);
    `prepare(name)`, when given, runs untimed before every call of fn `name` (e.g. building the
    one model variant kept in memory)."""
    for name, fn in fns.items():
        if prepare is not None:
            prepare(name)
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    order, dev = list(fns.items()), device_of(device)
    for r in rounds(range(reps)):
        k = r % len(order)
        for name, fn in order[k:] + order[:k]:
            if prepare is not None:
                prepare(name)
            times[name].append(dev.elapsed_ms(fn, 1))
    if samples is not None:
        samples.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


def device_peaks(device: str) -> dict | None:
    """{'int8': TOPS, 'bf16': TFLOP/s} of a known GPU, else None (CPU, unknown GPUs)."""
    if not device_of(device).accelerator:
        return None
    name = torch.cuda.get_device_name()
    return next((p for key, p in PEAKS.items() if key in name), None)


def _cases(x_MK: torch.Tensor, linear: nn.Linear, triton_ok: bool):
    """(kernel, format, impl, gemm_fn, layer_fn) for every path of one shape; None = skipped."""
    dense = "bf16" if x_MK.dtype == torch.bfloat16 else "fp32"
    cases = [("dense", dense, "torch", lambda: linear(x_MK), None)]
    for fmt, kernel in (("W8A8", "w8a8"), ("W4A8", "w4a8"), ("W4A16", "w4a16")):
        for impl in ("torch", "triton"):
            if impl == "triton" and not triton_ok:
                cases.append((kernel, fmt, impl, None, None))
                continue
            choice = KernelChoice.TRITON if impl == "triton" else KernelChoice.TORCH
            q = QuantLinear.from_float(linear, fmt, kernel=choice)
            layer_fn = lambda q=q: q(x_MK)  # noqa: E731
            cases.append((kernel, fmt, impl, _gemm_only(q, x_MK, impl) or layer_fn, layer_fn))
    fake = QuantLinear.from_float(linear, EMULATED_FORMAT, kernel=KernelChoice.EMULATED)
    cases.append(("emulated", EMULATED_FORMAT, "torch", lambda: fake(x_MK), None))
    return cases


def _gemm_only(q: QuantLinear, x_MK: torch.Tensor, impl: str) -> Callable | None:
    """The GEMM of a QuantLinear with activations quantized beforehand (None: no act quant)."""
    if q.path == "w4a16":
        return None
    q_a, s_a, z_a = gemm.quantize_activation(x_MK, q.fmt.a_bits, q.fmt.a_symmetric)
    fn = gemm.INT8_ACT_GEMMS[q.path, KernelChoice(impl)]
    return lambda: fn(q_a, q.weight_q, s_a, q.weight_scale[:, 0], z_a, q.weight_sum, q.bias,
                      x_MK.dtype)


@torch.no_grad()
def _bench_shape(layer, depth, M, N, K, device, triton_ok, peaks) -> list[dict]:
    """Rows of every path at one shape; Triton rows carry max_err vs their torch reference."""
    warmup, repeats = (3, 10) if device_of(device).accelerator else (1, 5)
    linear = nn.Linear(K, N, bias=LAYERS[layer][2], device=device)
    x_MK = torch.randn(M, K, device=device)
    y_float = linear(x_MK)  # fp32 reference for quality (sqnr_db)
    dev = device_of(device)
    if dev.accelerator or dev.bf16_faster():
        x_MK, linear = x_MK.bfloat16(), linear.bfloat16()
    rows, outs, dense_ms = [], {}, None
    flops = 2 * M * N * K
    for kernel, fmt, impl, gemm_fn, layer_fn in _cases(x_MK, linear, triton_ok):
        row = dict(kernel=kernel, format=fmt, impl=impl, layer=layer, depth=depth, M=M, N=N, K=K,
                   native=capability(fmt if fmt not in ("bf16", "fp32") else "fp", device).native,
                   ms=None, ms_layer=None, tops=None, peak_frac=None, speedup=None,
                   speedup_layer=None, max_err=None, sqnr_db=None, status="ok")
        rows.append(row)
        if gemm_fn is None:
            row["status"] = ("skipped: triton not installed" if device_of(device).triton_native
                             else "skipped: Triton is not timed here (no native Triton: the interpreter)")
            continue
        out = (layer_fn or gemm_fn)()
        row["ms"] = time_ms(gemm_fn, device, warmup, repeats)
        row["ms_layer"] = row["ms"] if layer_fn in (None, gemm_fn) else time_ms(
            layer_fn, device, warmup, repeats)
        dense_ms = dense_ms or row["ms"]
        peak = None if peaks is None else peaks["int8" if kernel in ("w8a8", "w4a8") else "bf16"]
        row.update(tops=flops / row["ms"] / 1e9, sqnr_db=sqnr(y_float, out),
                   speedup=dense_ms / row["ms"], speedup_layer=dense_ms / row["ms_layer"])
        row["peak_frac"] = None if peak is None else row["tops"] / peak
        if impl == "triton":
            row["max_err"] = (out.float() - outs[kernel].float()).abs().max().item()
        outs.setdefault(kernel, out)
    return rows


def bench_gemm(device: str = "cuda", which: str = "full") -> list[dict]:
    """Time every GEMM path against a dense matmul (bf16, or fp32 where bf16 is emulated) at VAR
    linear shapes on `device`."""
    device = torch.device(device).type
    triton_ok = device_of(device).triton_native and triton_available()
    peaks = device_peaks(device)
    rows = []
    for layer, depth, M, N, K in var_shapes(which, device):
        log.info("bench_gemm: d%d %s M=%d N=%d K=%d", depth, layer, M, N, K)
        rows += _bench_shape(layer, depth, M, N, K, device, triton_ok, peaks)
    return rows


COLUMNS = [("layer", "{}"), ("depth", "d{}"), ("M", "{}"), ("N", "{}"), ("K", "{}"),
           ("kernel", "{}"), ("impl", "{}"), ("format", "{}"), ("native", "{}"),
           ("ms", "{:.3f}"), ("ms_layer", "{:.3f}"), ("tops", "{:.2f}"), ("peak_frac", "{:.0%}"),
           ("speedup", "{:.2f}x"), ("speedup_layer", "{:.2f}x"), ("max_err", "{:.2g}"),
           ("sqnr_db", "{:.1f}"), ("status", "{}")]


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of bench_gemm rows (None shown as '-')."""
    cells = [[name for name, _ in COLUMNS]]
    cells += [["-" if r[name] is None else fmt.format(r[name]) for name, fmt in COLUMNS]
              for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def print_table(rows: list[dict], file=None) -> None:
    """Print format_table(rows) to `file` (stdout by default)."""
    print(format_table(rows), file=file or sys.stdout)
